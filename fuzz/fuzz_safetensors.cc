// Fuzzes the safetensors parser and the Hugging Face tensor mapping on top of it (shape checks,
// packed-scale handling, absmean quantization of float projections) with a fixed tiny config.
#include <cstddef>
#include <cstdint>
#include <span>

#include "core/base/error.h"
#include "core/base/ternary_packing.h"
#include "core/formats/hf_model.h"
#include "core/formats/safetensors.h"

namespace {

onebit::ModelConfig tiny_config() {
  onebit::ModelConfig c;
  c.hidden_size = 32;
  c.intermediate_size = 40;
  c.num_layers = 1;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.head_dim = 16;
  c.vocab_size = 16;
  c.max_position_embeddings = 64;
  return c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> bytes(data, size);
  onebit::SafetensorsFile f;
  try {
    f = onebit::parse_safetensors(bytes, "fuzz.safetensors");
  } catch (const onebit::Error&) {
    return 0;
  }
  unsigned sum = 0;
  for (const auto& t : f.tensors)
    for (uint8_t b : t.data) sum += b;  // every view must lie inside the input
  for (const char* cls : {"bitlinear", "autobitlinear"}) {
    onebit::Model m;
    m.path = "fuzz";
    m.config = tiny_config();
    try {
      onebit::add_hf_tensors(m, {f}, cls, /*tie_given=*/(size & 1) != 0);
      m.validate();
      for (const auto& t : m.tensors)
        if (onebit::is_ternary(t.packing)) sum += static_cast<unsigned>(onebit::unpack_ternary(t).codes.size());
    } catch (const onebit::Error&) {
    }
  }
  volatile unsigned sink = sum;
  (void)sink;
  return 0;
}
