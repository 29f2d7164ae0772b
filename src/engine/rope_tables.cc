#include "engine/rope_tables.h"

#include <cmath>

#include "core/base/error.h"

namespace onebit {

RopeTables make_rope_tables(int64_t head_dim, double theta, int64_t n_pos) {
  if (head_dim <= 0 || head_dim % 2 != 0) fail("rope: head_dim must be even and positive, got {}", head_dim);
  if (n_pos < 0) fail("rope: negative position count {}", n_pos);
  const int64_t half = head_dim / 2;
  RopeTables t;
  t.head_dim = head_dim;
  t.n_pos = n_pos;
  t.cos.assign(static_cast<size_t>(n_pos * half), 0.0f);
  t.sin.assign(static_cast<size_t>(n_pos * half), 0.0f);
  std::vector<float> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    const float p = static_cast<float>(std::pow(static_cast<double>(static_cast<float>(theta)), static_cast<double>(e)));
    inv[static_cast<size_t>(i)] = 1.0f / p;
  }
  for (int64_t pos = 0; pos < n_pos; ++pos)
    for (int64_t i = 0; i < half; ++i) {
      const float a = static_cast<float>(pos) * inv[static_cast<size_t>(i)];
      t.cos[static_cast<size_t>(pos * half + i)] = static_cast<float>(std::cos(static_cast<double>(a)));
      t.sin[static_cast<size_t>(pos * half + i)] = static_cast<float>(std::sin(static_cast<double>(a)));
    }
  return t;
}

}  // namespace onebit
