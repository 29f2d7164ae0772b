// `1bit synth --preset tiny|bitnet-2b4t [--seed N] [--form ternary|bf16-master] -o FILE`
#include <fmt/format.h>

#include "cli/command.h"
#include "cli/progress.h"
#include "core/base/error.h"
#include "core/formats/model_writer.h"
#include "core/formats/synth.h"

namespace onebit::cli {
namespace {

struct SynthOptions {
  std::string preset = "tiny";
  uint64_t seed = 1;
  std::string form = "ternary";
  std::string out;
  std::string gguf_type = "tq2_0";
};

int run_synth(const SynthOptions& o) {
  SynthForm form;
  if (o.form == "ternary") {
    form = SynthForm::kTernary;
  } else if (o.form == "bf16-master") {
    form = SynthForm::kBf16Master;
  } else {
    fail("--form must be ternary or bf16-master, got '{}'", o.form);
  }
  ModelConfig c = synth_preset(o.preset);
  std::fprintf(stderr, "synthesizing %s (seed %llu)...\n", o.preset.c_str(), static_cast<unsigned long long>(o.seed));
  auto model = synthesize_model(c, o.seed, form);
  ProgressBar bar("writing " + o.out);
  write_model(*model, o.out, o.gguf_type, [&](size_t d, size_t t) { bar.update(d, t); });
  bar.finish();
  std::fprintf(stderr, "wrote %s (%s)\n", o.out.c_str(), human_bytes(static_cast<double>(model->total_bytes())).c_str());
  return 0;
}

const CommandRegistrar reg{Command{
    "synth", "Write a model of a preset's exact shape with random ternary weights",
    [](CLI::App& app) {
      auto o = std::make_shared<SynthOptions>();
      app.add_option("--preset", o->preset, "tiny | bitnet-2b4t")->capture_default_str();
      app.add_option("--seed", o->seed, "random seed")->capture_default_str();
      app.add_option("--form", o->form, "ternary (packed codes) | bf16-master (absmean of bf16 weights)")
          ->capture_default_str();
      app.add_option("-o,--output", o->out, "output file (.h1b, or .gguf)")->required();
      app.add_option("--gguf-type", o->gguf_type, "ternary packing for .gguf output: tq2_0 | i2_s")
          ->capture_default_str();
      return [o] { return run_synth(*o); };
    },
    40}};

}  // namespace
}  // namespace onebit::cli
