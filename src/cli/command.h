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

// -t/--threads, --lm-head and --device, shared by the commands that run the model.
void add_engine_flags(CLI::App& app, int& threads, std::string& lm_head, std::string& device);
// EngineOptions with those three set (Error on an unknown name); the rest at their defaults.
EngineOptions engine_options(int threads, const std::string& lm_head, const std::string& device);

}  // namespace onebit::cli
