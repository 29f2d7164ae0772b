// Sub-commands of the `1bit` binary. Each command lives in its own cmd_<name>.cc and registers
// itself with a static CommandRegistrar, so adding a command touches no other file.
//
// Conventions: stdout carries only the program's output (ids, text, JSON); logs and progress go
// to stderr. A command reports bad input by throwing onebit::Error; main() prints it as
// "1bit <cmd>: error: ..." and exits with status 1.
#pragma once

#include <CLI/CLI.hpp>

#include <chrono>

#include <functional>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace onebit::cli {

struct Command {
  std::string name;
  std::string help;
  // Adds the command's options to `app` (a sub-command) and returns the function to run.
  std::function<std::function<int()>(CLI::App& app)> setup;
  int order = 100;  // position in --help
};

std::vector<Command>& commands();

struct CommandRegistrar {
  explicit CommandRegistrar(Command c) { commands().push_back(std::move(c)); }
};

// The model used when a command gets no -m: models/ next to the binary's source tree or the
// ONEBIT_MODEL environment variable. Throws Error with a clear message when there is none.
std::string default_model_path();

// True when stderr is a terminal (progress bars are drawn only then).
bool stderr_is_tty();

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The whole of a file as bytes; "" or "-" reads stdin. Throws Error naming the file.
std::string read_input(const std::string& path);

// The engine options every command that runs the model takes (run, chat, ppl, bench).
struct EngineFlags {
  int threads = 0;               // -t/--threads
  std::string lm_head = "bf16";  // --lm-head
  std::string device = "cpu";    // --device
  std::string kv = "f32";        // --kv
};
// Adds -t/--threads, --lm-head, --device and --kv to `app`.
void add_engine_flags(CLI::App& app, EngineFlags& f);
// --kv f32|f16|q8|q4r alone (`1bit serve` has its own options struct).
void add_kv_flag(CLI::App& app, std::string& kv);
// EngineOptions with those four set (Error on an unknown name); the rest at their defaults.
EngineOptions engine_options(const EngineFlags& f);

}  // namespace onebit::cli
