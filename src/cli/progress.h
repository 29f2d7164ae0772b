// A one-line progress bar on stderr, drawn only when stderr is a terminal.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>

namespace onebit::cli {

class ProgressBar {
 public:
  explicit ProgressBar(std::string label);
  ~ProgressBar();
  void update(size_t done, size_t total);  // redraws at most ~20 times a second
  void finish();

 private:
  std::string label_;
  bool enabled_;
  bool finished_ = false;
  size_t last_done_ = 0, last_total_ = 0;
  std::chrono::steady_clock::time_point start_, last_draw_{};
  void draw(size_t done, size_t total);
};

std::string human_bytes(double bytes);

}  // namespace onebit::cli
