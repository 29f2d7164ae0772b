#include "core/formats/synth.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <cmath>

#include "core/base/error.h"
#include "core/base/half.h"
#include "core/base/ternary_packing.h"
#include "core/tokenizer/byte_level.h"

namespace onebit {

namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

float bf16_round(float f) { return bf16_to_f32(f32_to_bf16(f)); }

// Special tokens: the LLaMA-3 ids when the vocabulary is large enough, else right after the bytes.
struct SpecialIds {
  int64_t bos, eos, eot;
};
SpecialIds special_ids(const ModelConfig& c) {
  if (c.vocab_size > 128009) return {128000, 128001, 128009};
  return {256, 257, 258};
}

}  // namespace

SynthStream::SynthStream(uint64_t seed, uint64_t index) : base_(mix(seed * kGolden + index + 1)) {}

uint64_t SynthStream::at(uint64_t i) const { return mix(base_ + (i + 1) * kGolden); }

uint64_t SynthStream::next() { return at(i_++); }

std::vector<std::string> synth_preset_names() { return {"tiny", "bitnet-2b4t"}; }

ModelConfig synth_preset(std::string_view name) {
  ModelConfig c;
  c.architecture = "bitnet-b1.58";
  c.rope_theta = 500000.0;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = true;
  c.hidden_act = "relu2";
  if (name == "tiny") {
    c.hidden_size = 256;
    c.intermediate_size = 768;  // multiple of 256 so that TQ2_0/TQ1_0 can hold it
    c.num_layers = 4;
    c.num_heads = 8;
    c.num_kv_heads = 4;
    c.head_dim = 32;
    c.vocab_size = 512;
    c.max_position_embeddings = 2048;
  } else if (name == "bitnet-2b4t") {
    c.hidden_size = 2560;
    c.intermediate_size = 6912;
    c.num_layers = 30;
    c.num_heads = 20;
    c.num_kv_heads = 5;
    c.head_dim = 128;
    c.vocab_size = 128256;
    c.max_position_embeddings = 4096;
  } else {
    fail("unknown synth preset '{}' (known: tiny, bitnet-2b4t)", name);
  }
  SpecialIds s = special_ids(c);
  c.bos_token_id = s.bos;
  c.eos_token_ids = {s.eos, s.eot};
  return c;
}

std::string synth_tokenizer_json(const ModelConfig& c) {
  if (c.vocab_size < 259) fail("synth: vocab_size {} is too small for a byte-level tokenizer (>= 259)", c.vocab_size);
  SpecialIds s = special_ids(c);
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  nlohmann::json added = nlohmann::json::array();
  for (int64_t id = 0; id < c.vocab_size; ++id) {
    std::string piece;
    if (id < 256) {
      tok::append_utf8(tok::byte_to_codepoint(static_cast<uint8_t>(id)), piece);
    } else if (id == s.bos || id == s.eos || id == s.eot) {
      piece = id == s.bos ? "<|begin_of_text|>" : id == s.eos ? "<|end_of_text|>" : "<|eot_id|>";
      added.push_back({{"id", id}, {"content", piece}, {"single_word", false}, {"lstrip", false},
                       {"rstrip", false}, {"normalized", false}, {"special", true}});
    } else {
      piece = fmt::format("<|filler_{}|>", id);  // never produced: no merge leads to it
    }
    vocab[piece] = id;
  }
  const char* split =
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
      "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  nlohmann::ordered_json j = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", split}}}, {"behavior", "Isolated"}, {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", true},
        {"vocab", vocab},
        {"merges", nlohmann::json::array()}}},
  };
  return j.dump();
}

std::unique_ptr<Model> synthesize_model(const ModelConfig& config, uint64_t seed, SynthForm form) {
  config.validate();
  auto m = std::make_unique<Model>();
  m->path = fmt::format("synth(seed={})", seed);
  m->format = "synth";
  m->config = config;
  m->tokenizer.hf_json = synth_tokenizer_json(config);
  m->extra["synth"] = {{"seed", seed}, {"form", form == SynthForm::kTernary ? "ternary" : "bf16-master"}};
  auto specs = expected_tensors(config);
  for (size_t k = 0; k < specs.size(); ++k) {
    const auto& e = specs[k];
    Tensor t;
    t.name = e.name;
    t.shape = e.shape;
    t.origin = "synthesized";
    int64_t n = 1;
    for (int64_t d : e.shape) n *= d;
    SynthStream s(seed, k);
    if (!e.ternary) {
      const bool norm = e.name.ends_with("norm.weight");
      std::vector<uint8_t> bytes(static_cast<size_t>(n) * 2);
      for (int64_t i = 0; i < n; ++i) {
        float u = SynthStream::unit(s.next());
        uint16_t h = f32_to_bf16(norm ? 0.5f + u : u * 2.0f - 1.0f);
        bytes[2 * i] = static_cast<uint8_t>(h & 0xff);
        bytes[2 * i + 1] = static_cast<uint8_t>(h >> 8);
      }
      t.packing = Packing::kBF16;
      t.data = m->own(std::move(bytes));
    } else {
      TernaryMatrix tm;
      if (form == SynthForm::kTernary) {
        tm.rows = e.shape[0];
        tm.cols = e.shape[1];
        tm.codes.resize(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) tm.codes[i] = SynthStream::code(s.next());
        tm.scales = {bf16_round((0.75f + 0.125f * static_cast<float>(k % 7)) /
                                std::sqrt(static_cast<float>(tm.cols)))};
      } else {
        std::vector<float> w(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) w[i] = bf16_round((SynthStream::unit(s.next()) * 2.0f - 1.0f) * 0.05f);
        tm = quantize_absmean(w, e.shape[0], e.shape[1]);
      }
      t.packing = Packing::kTernary2;
      t.scales = tm.scales;
      t.data = m->own(pack_ternary(tm, Packing::kTernary2));
    }
    m->tensors.push_back(std::move(t));
  }
  m->validate();
  return m;
}

}  // namespace onebit
