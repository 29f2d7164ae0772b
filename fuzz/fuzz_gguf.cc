// libFuzzer target for the GGUF reader: parse, render the metadata, decode every tensor, and
// write a model that parsed back out. Any Error is fine; a crash, leak or UB is a bug.
#include <cstddef>
#include <cstdint>
#include <span>

#include "core/base/error.h"
#include "core/base/ternary_packing.h"
#include "core/formats/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace onebit;
  try {
    std::unique_ptr<Model> m = parse_gguf(std::span<const uint8_t>(data, size), "fuzz.gguf");
    (void)m->extra.dump();
    (void)m->config.to_json().dump();
    for (const Tensor& t : m->tensors) {
      try {
        if (is_ternary(t.packing)) {
          (void)unpack_ternary(t);
        } else {
          (void)dequantize(t);
        }
      } catch (const Error&) {
      }
    }
    try {
      m->validate();
    } catch (const Error&) {
    }
    for (Packing p : {Packing::kTQ2_0, Packing::kI2_S}) {
      try {
        const std::vector<uint8_t> out = write_gguf_to_memory(*m, p);
        std::unique_ptr<Model> back = parse_gguf(out, "fuzz-rewritten.gguf");
        if (back->tensors.size() != m->tensors.size()) __builtin_trap();
      } catch (const Error&) {
      }
    }
  } catch (const Error&) {
  }
  return 0;
}
