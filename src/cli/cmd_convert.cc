// `1bit convert IN OUT [--gguf-type tq2_0|i2_s]`: any readable model -> .h1b or GGUF.
#include "cli/command.h"
#include "cli/progress.h"
#include "core/formats/model_loader.h"
#include "core/formats/model_writer.h"

namespace onebit::cli {
namespace {

struct ConvertOptions {
  std::string in, out, gguf_type = "tq2_0";
};

int run_convert(const ConvertOptions& o) {
  auto model = load_model(o.in);
  std::fprintf(stderr, "read %s (%s, %zu tensors)\n", o.in.c_str(), model->format.c_str(), model->tensors.size());
  ProgressBar bar("writing " + o.out);
  write_model(*model, o.out, o.gguf_type, [&](size_t d, size_t t) { bar.update(d, t); });
  bar.finish();
  std::fprintf(stderr, "wrote %s\n", o.out.c_str());
  return 0;
}

const CommandRegistrar reg{Command{
    "convert", "Convert a model (HF folder, GGUF, .h1b) to .h1b or GGUF (TQ2_0 / I2_S)",
    [](CLI::App& app) {
      auto o = std::make_shared<ConvertOptions>();
      app.add_option("input", o->in, "model file or Hugging Face folder")->required();
      app.add_option("output", o->out, "output file: .h1b or .gguf")->required();
      app.add_option("--gguf-type", o->gguf_type, "ternary packing for .gguf output: tq2_0 | i2_s")
          ->capture_default_str();
      return [o] { return run_convert(*o); };
    },
    30}};

}  // namespace
}  // namespace onebit::cli
