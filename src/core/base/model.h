// The one in-memory description of a BitNet b1.58 model, whatever file it came from.
//
// A Model is a config, a tokenizer description, a chat template and a list of named tensors. Each
// tensor's bytes stay in the packing the file uses (they point into a memory map, or into a buffer
// the loader made when it had to quantize or repack); the kernels repack from here at load.
// Tensor names are the canonical ones below (those of GGUF / bitnet.cpp), shapes are row-major
// with the output dimension first ([rows = out, cols = in] for a projection).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/mapped_file.h"

namespace onebit {

// How a tensor's bytes are laid out. Ternary packings hold codes in {-1,0,+1}; the weight value is
// code * scale, with the scale(s) in Tensor::scales (already a multiplier: a `bitlinear`
// checkpoint's divisor has been inverted by its reader).
enum class Packing : uint8_t {
  kF32,
  kF16,
  kBF16,
  kQ8_0,       // GGUF Q8_0: 32-value blocks {fp16 d; int8 q[32]}
  kTernaryI8,  // one int8 code per weight, row-major [rows][cols]
  kTernary2,   // native 1bit layout: each row ceil(cols/4) bytes, 4 codes per byte LSB first, byte = w+1
  kTernaryHF,  // Hugging Face packed uint8 [ceil(rows/4)][cols], rows interleaved by blocks of ceil(rows/4)
  kI2_S,       // bitnet.cpp I2_S (x86): 128-weight blocks of 32 bytes, then one f32 scale, padded
  kTQ2_0,      // llama.cpp TQ2_0: 256-weight blocks {uint8 qs[64]; fp16 d}
  kTQ1_0,      // llama.cpp TQ1_0: 256-weight blocks {uint8 qs[48]; uint8 qh[4]; fp16 d}
  kTernaryLegacyH1b,  // halo .h1b v1/v2: per row ceil(cols/4) bytes LSB first (00=-1,01=0,10=+1)
};

bool is_ternary(Packing p);
std::string_view packing_name(Packing p);
// Parses a name printed by packing_name; throws Error on an unknown name.
Packing packing_from_name(std::string_view name);

struct Tensor {
  std::string name;              // canonical name, e.g. "blk.3.attn_q.weight"
  Packing packing = Packing::kF32;
  std::vector<int64_t> shape;    // row-major, outermost first; {n} for vectors, {rows, cols} for matrices
  std::span<const uint8_t> data; // the packed bytes, exactly as the packing defines them
  std::vector<float> scales;     // ternary only: 1 value (per tensor) or one per row
  std::string origin;            // where it came from ("model.safetensors: model.layers.3...") for messages

  int64_t numel() const;
  int64_t rows() const { return shape.size() >= 2 ? shape[0] : 1; }
  int64_t cols() const { return shape.empty() ? 1 : shape.back(); }
  std::string shape_str() const;  // "2560x6912"
};

struct ModelConfig {
  std::string architecture = "bitnet-b1.58";
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rope_theta = 500000.0;
  double rms_norm_eps = 1e-5;
  bool tie_word_embeddings = true;
  std::string hidden_act = "relu2";
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;

  nlohmann::json to_json() const;
  // Reads the keys to_json writes; throws Error naming a missing or mistyped key.
  static ModelConfig from_json(const nlohmann::json& j);
  // Rejects absurd or inconsistent values (zero sizes, heads not dividing, > 2^31 elements, ...).
  void validate() const;
};

// The tokenizer as the file carries it: either a Hugging Face tokenizer.json verbatim, or a
// GGUF-style vocabulary (tokenizer.ggml.*). Tokenizer::from_model() builds from either.
struct TokenizerData {
  std::string hf_json;  // non-empty: a tokenizer.json document

  std::string model;                    // GGUF tokenizer.ggml.model ("gpt2", "llama")
  std::string pre;                      // GGUF tokenizer.ggml.pre ("llama-bpe", ...)
  std::vector<std::string> tokens;
  std::vector<int32_t> token_types;     // GGUF token types: 1 normal, 3 control, 4 user-defined, 6 byte
  std::vector<float> scores;
  std::vector<std::string> merges;      // "a b"
  int64_t bos_id = -1, eos_id = -1, eot_id = -1, pad_id = -1, unk_id = -1;
  bool add_bos = false;

  bool empty() const { return hf_json.empty() && tokens.empty(); }
};

class Model {
 public:
  std::string path;    // what was opened
  std::string format;  // "h1b", "h1b-legacy", "gguf", "hf"
  ModelConfig config;
  TokenizerData tokenizer;
  std::string chat_template;  // Jinja source; empty when the file has none
  nlohmann::json extra = nlohmann::json::object();  // format-specific metadata kept for `info`
  std::vector<Tensor> tensors;

  const Tensor* find(std::string_view name) const;
  const Tensor& get(std::string_view name) const;  // throws Error naming the model and tensor

  // Keeps a buffer made at load time alive for the model's lifetime and returns a view of it.
  std::span<const uint8_t> own(std::vector<uint8_t> bytes);
  void keep(std::shared_ptr<const MappedFile> f) { files_.push_back(std::move(f)); }

  // Checks that every tensor the BitNet forward pass needs is present, with the shape the config
  // implies and a suitable packing; throws Error like
  // "model.gguf: tensor blk.3.attn_q.weight: expected 2560x2560 ternary, file has 2560x2048".
  void validate() const;

  size_t total_bytes() const;

 private:
  std::vector<std::shared_ptr<const MappedFile>> files_;
  std::vector<std::shared_ptr<std::vector<uint8_t>>> owned_;
};

// What validate() expects: every tensor name of the BitNet graph with its shape and whether it
// must be ternary. `output.weight` is listed only for untied models.
struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
  bool ternary;
};
std::vector<ExpectedTensor> expected_tensors(const ModelConfig& c);

}  // namespace onebit
