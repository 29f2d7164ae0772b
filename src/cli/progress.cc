#include "cli/progress.h"

#include <fmt/format.h>

#include <cstdio>

#include "cli/command.h"

namespace onebit::cli {

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024.0 && u < 4) {
    b /= 1024.0;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} {}", b, units[u]) : fmt::format("{:.1f} {}", b, units[u]);
}

ProgressBar::ProgressBar(std::string label)
    : label_(std::move(label)), enabled_(stderr_is_tty()), start_(std::chrono::steady_clock::now()) {}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::update(size_t done, size_t total) {
  last_done_ = done;
  last_total_ = total;
  if (!enabled_) return;
  auto now = std::chrono::steady_clock::now();
  if (done < total && now - last_draw_ < std::chrono::milliseconds(50)) return;
  last_draw_ = now;
  draw(done, total);
}

void ProgressBar::draw(size_t done, size_t total) {
  constexpr int kWidth = 30;
  double frac = total == 0 ? 1.0 : static_cast<double>(done) / static_cast<double>(total);
  int filled = static_cast<int>(frac * kWidth);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  std::fprintf(stderr, "\r%s [%s%s] %3.0f%% %s/%s %.1fs", label_.c_str(), std::string(filled, '#').c_str(),
               std::string(kWidth - filled, '.').c_str(), frac * 100.0, human_bytes(done).c_str(),
               human_bytes(total).c_str(), secs);
  std::fflush(stderr);
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  if (enabled_ && last_total_ > 0) {
    draw(last_total_, last_total_);
    std::fputc('\n', stderr);
  }
}

}  // namespace onebit::cli
