#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "cli/command.h"
#include "core/base/error.h"

namespace onebit::cli {

std::vector<Command>& commands() {
  static std::vector<Command> all;
  return all;
}

bool stderr_is_tty() { return ::isatty(STDERR_FILENO) == 1; }

void add_kv_flag(CLI::App& app, std::string& kv) {
  std::vector<std::string> names;
  for (KvDtype t : kAllKvDtypes) names.emplace_back(kv_dtype_name(t));
  app.add_option("--kv", kv,
                 "KV cache type: f32, f16, q8 (int8, one scale per position and head) or q4r (Hadamard-rotated "
                 "4-bit, a scale per 32 values); every type on both devices")
      ->check(CLI::IsMember(names))
      ->capture_default_str();
}

void add_engine_flags(CLI::App& app, EngineFlags& f) {
  app.add_option("-t,--threads", f.threads, "CPU threads (0 = all)")->capture_default_str();
  app.add_option("--lm-head", f.lm_head, "LM head: bf16 (as stored in the file) or int8 (per-row int8 copy, half the bytes)")
      ->check(CLI::IsMember({"bf16", "int8"}))
      ->capture_default_str();
  app.add_option("--device", f.device, "cpu, or cuda (GPU 0)")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  add_kv_flag(app, f.kv);
}

EngineOptions engine_options(const EngineFlags& f) {
  EngineOptions eo;
  eo.n_threads = f.threads;
  eo.lm_head = lm_head_from_name(f.lm_head);
  eo.device = device_from_name(f.device);
  eo.kv_dtype = kv_dtype_from_name(f.kv);
  return eo;
}

std::string read_input(const std::string& path) {
  const bool from_stdin = path.empty() || path == "-";
  FILE* f = from_stdin ? stdin : std::fopen(path.c_str(), "rb");
  if (f == nullptr) fail("{}: cannot open", path);
  std::string out;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  const bool err = std::ferror(f) != 0;
  if (!from_stdin) std::fclose(f);
  if (err) fail("{}: read error", from_stdin ? "stdin" : path);
  return out;
}

std::string default_model_path() {
  if (const char* env = std::getenv("ONEBIT_MODEL"); env != nullptr && *env != '\0') return env;
  namespace fs = std::filesystem;
  // The repository's models/ folder (the binary knows its source tree), then ./models.
  for (const fs::path& dir : {fs::path(ONEBIT_SOURCE_DIR) / "models", fs::path("models")}) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) continue;
    std::vector<fs::path> found;
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (e.path().extension() == ".h1b") found.push_back(e.path());
    std::sort(found.begin(), found.end());
    if (!found.empty()) return found.front().string();
  }
  fail("no model given (-m PATH) and no default model found in models/ (set ONEBIT_MODEL or pass -m)");
}

}  // namespace onebit::cli

int main(int argc, char** argv) {
  using namespace onebit::cli;
  CLI::App app{"1bit: inference for ternary (BitNet b1.58) language models", "1bit"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "1bit 0.1.0");
  auto& cmds = commands();
  std::stable_sort(cmds.begin(), cmds.end(), [](const Command& a, const Command& b) { return a.order < b.order; });
  std::function<int()> run;
  std::string running;
  for (auto& c : cmds) {
    CLI::App* sub = app.add_subcommand(c.name, c.help);
    auto fn = c.setup(*sub);
    sub->callback([&run, &running, fn, name = c.name] {
      run = fn;
      running = name;
    });
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    return run ? run() : 0;
  } catch (const onebit::Error& e) {
    std::fprintf(stderr, "1bit %s: error: %s\n", running.c_str(), e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "1bit %s: internal error: %s\n", running.c_str(), e.what());
    return 2;
  }
}
