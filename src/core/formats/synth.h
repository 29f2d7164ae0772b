// Synthesized models: the exact BitNet b1.58 shape of a preset with deterministic random weights,
// for tests and benchmarks (`1bit synth`). The weights come from the splitmix64 generator that
// tests/data/bitnet/README.md specifies, which is also what the golden-file script uses, so a
// synthesized model and a golden checkpoint with the same config and seed are the same model.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/model.h"

namespace onebit {

// Counter-based splitmix64: value i of tensor `index` of a model made with `seed`.
class SynthStream {
 public:
  SynthStream(uint64_t seed, uint64_t index);
  uint64_t next();                   // value i_, then i_ + 1, ...
  uint64_t at(uint64_t i) const;     // value i, in any order
  static float unit(uint64_t v) { return static_cast<float>(v >> 40) * (1.0f / 16777216.0f); }
  static int8_t code(uint64_t v) { return static_cast<int8_t>(static_cast<int>((v >> 32) % 3) - 1); }

 private:
  uint64_t base_;
  uint64_t i_ = 0;
};

// Named shapes: "tiny" (hidden 256, intermediate 768, 4 layers, vocab 512) and "bitnet-2b4t" (the 2B-4T shape:
// hidden 2560, intermediate 6912, 30 layers, 20/5 heads, vocab 128256). Throws Error otherwise.
ModelConfig synth_preset(std::string_view name);
std::vector<std::string> synth_preset_names();

enum class SynthForm {
  kTernary,     // ternary codes + one bf16-representable scale per tensor (a packed checkpoint)
  kBf16Master,  // bf16 "master" weights, ternarized with absmean as a bf16 checkpoint would be
};

// Builds the model in memory: ternary tensors in Packing::kTernary2, norms and embeddings in BF16,
// a byte-level BPE tokenizer.json covering the vocabulary (256 byte tokens, BOS/EOS/EOT special
// tokens, filler entries up to vocab_size), no chat template (the default applies).
std::unique_ptr<Model> synthesize_model(const ModelConfig& config, uint64_t seed,
                                        SynthForm form = SynthForm::kTernary);

// The tokenizer.json synthesize_model embeds, on its own.
std::string synth_tokenizer_json(const ModelConfig& config);

}  // namespace onebit
