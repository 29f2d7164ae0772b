// The rotary tables every backend uses (transformers' fp32 recipe), so CPU and GPU rotate by the
// same angles: inv_freq[i] = 1 / theta^(2i / D) in fp32, angle = fp32(pos * inv_freq[i]), cos/sin
// of that angle computed in double and rounded once.
#pragma once

#include <cstdint>
#include <vector>

namespace onebit {

struct RopeTables {
  int64_t head_dim = 0, n_pos = 0;
  std::vector<float> cos, sin;  // [n_pos][head_dim / 2]
};

// Throws Error unless head_dim is even and positive and n_pos >= 0.
RopeTables make_rope_tables(int64_t head_dim, double theta, int64_t n_pos);

}  // namespace onebit
