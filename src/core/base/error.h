// Errors: every failure a user can cause (bad file, bad request, bad option) is reported by
// throwing onebit::Error with a message that names the thing at fault and what was expected.
// Code never aborts on bad input; the CLI and the C ABI catch Error at their boundary.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace onebit {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Shorthand: throw Error(fmt::format(...)).
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace onebit
