// Fuzzes the native .h1b reader and verifier (checksums not enforced, so that mutations reach the
// structure checks) and the legacy halo .h1b reader.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "core/base/error.h"
#include "core/formats/h1b.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> bytes(data, size);
  unsigned sum = 0;
  auto touch = [&](const onebit::Model& m) {
    for (const auto& t : m.tensors) {
      for (uint8_t b : t.data) sum += b;  // every view must lie inside the input
      sum += static_cast<unsigned>(t.scales.size());
    }
  };
  if (size >= 4 && std::memcmp(data, onebit::kH1bLegacyMagic, 4) == 0) {
    try {
      touch(*onebit::parse_h1b_legacy(bytes, "fuzz.h1b"));
    } catch (const onebit::Error&) {
    }
  } else {
    try {
      touch(*onebit::parse_h1b(bytes, "fuzz.h1b", /*check_checksums=*/false));
    } catch (const onebit::Error&) {
    }
    onebit::H1bVerifyResult r = onebit::verify_h1b_bytes(bytes, "fuzz.h1b");
    sum += static_cast<unsigned>(r.problems.size());
  }
  volatile unsigned sink = sum;
  (void)sink;
  return 0;
}
