// `1bit verify FILE`: checks a native .h1b file's structure and every checksum.
#include "cli/command.h"
#include "core/base/error.h"
#include "core/formats/h1b.h"

namespace onebit::cli {
namespace {

int run_verify(const std::string& path) {
  H1bVerifyResult r = verify_h1b(path);
  if (r.ok) {
    std::printf("%s: OK\n", path.c_str());
    return 0;
  }
  for (const auto& p : r.problems) std::printf("%s\n", p.c_str());
  std::fprintf(stderr, "%s: FAILED (%zu problem%s)\n", path.c_str(), r.problems.size(), r.problems.size() == 1 ? "" : "s");
  return 1;
}

const CommandRegistrar reg{Command{
    "verify", "Check a .h1b file's structure and checksums",
    [](CLI::App& app) {
      auto path = std::make_shared<std::string>();
      app.add_option("file", *path, ".h1b file")->required();
      return [path] { return run_verify(*path); };
    },
    35}};

}  // namespace
}  // namespace onebit::cli
