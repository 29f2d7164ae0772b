// Hugging Face BitNet folders: config.json + model.safetensors (or shards listed by
// model.safetensors.index.json), tokenizer.json, tokenizer_config.json, generation_config.json.
//
// Projection weights come in two forms:
//  - packed: uint8 [ceil(out/4), in] plus `<proj>.weight_scale` (one value). Kept as
//    Packing::kTernaryHF pointing into the memory map (no copy). The scale becomes a multiplier:
//    weight_scale for quantization_config.linear_class "autobitlinear", 1/weight_scale for
//    "bitlinear". When config.json has no quantization_config (or no linear_class in it) the
//    class is "bitlinear", the default of transformers' BitNetQuantConfig.
//  - plain bf16/f16/f32 [out, in]: quantized with absmean at load, one tensor at a time, and kept
//    as Packing::kTernary2 in a buffer the Model owns (no full float copy of the model is made).
// Norms and embeddings stay in their file dtype and point into the map.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/model.h"
#include "core/formats/safetensors.h"

namespace onebit {

// Loads the folder `dir`; the Model has format "hf" and passes Model::validate().
// Throws Error naming the file and the key or tensor at fault.
std::unique_ptr<Model> load_hf(const std::string& dir);

// config.json as read by load_hf.
struct HfConfig {
  ModelConfig config;
  std::string linear_class = "bitlinear";  // "bitlinear" or "autobitlinear"
  bool tie_given = false;                   // config.json had tie_word_embeddings
};
// `name` prefixes messages (usually the path of config.json). Throws Error naming a missing or
// mistyped key. Does not call ModelConfig::validate().
HfConfig parse_hf_config(const nlohmann::json& j, const std::string& name);

// The canonical name (model.h) of a Hugging Face tensor name, e.g.
// "model.layers.3.self_attn.q_proj.weight" -> "blk.3.attn_q.weight"; empty when the name is not
// part of the BitNet graph. `.weight_scale` tensors map to nothing (they belong to their weight).
std::string hf_canonical_name(std::string_view hf_name);

// The tensor part of load_hf: adds to `m` (whose config is set) the tensors of the parsed files.
// `linear_class` says how packed scales are read. The views point into the files' bytes, which the
// caller keeps alive. If !tie_given, m.config.tie_word_embeddings becomes "no lm_head.weight".
// Exposed for tests and fuzzing; throws Error like load_hf.
void add_hf_tensors(Model& m, const std::vector<SafetensorsFile>& files,
                    const std::string& linear_class, bool tie_given);

}  // namespace onebit
