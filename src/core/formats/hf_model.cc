#include "core/formats/hf_model.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <array>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "core/base/error.h"
#include "core/base/half.h"
#include "core/base/mapped_file.h"
#include "core/base/ternary_packing.h"

namespace onebit {

namespace fs = std::filesystem;

namespace {

// ---- config.json -------------------------------------------------------------------------------

const nlohmann::json* opt_key(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}

int64_t int_value(const nlohmann::json& v, const std::string& name, const char* key) {
  if (v.is_number_integer()) return v.get<int64_t>();
  // Some exporters write integral values as 4096.0.
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15) return static_cast<int64_t>(d);
  }
  fail("{}: key '{}' must be an integer, found {}", name, key, v.dump());
}

int64_t req_int(const nlohmann::json& j, const std::string& name, const char* key) {
  const nlohmann::json* v = opt_key(j, key);
  if (v == nullptr) fail("{}: missing key '{}'", name, key);
  return int_value(*v, name, key);
}

double num_value(const nlohmann::json& v, const std::string& name, const char* key) {
  if (!v.is_number()) fail("{}: key '{}' must be a number, found {}", name, key, v.dump());
  return v.get<double>();
}

// An int, a list of ints, or null.
std::vector<int64_t> int_list(const nlohmann::json& v, const std::string& name, const char* key) {
  std::vector<int64_t> out;
  if (v.is_null()) return out;
  if (v.is_array()) {
    for (const auto& e : v) out.push_back(int_value(e, name, key));
  } else {
    out.push_back(int_value(v, name, key));
  }
  return out;
}

nlohmann::json read_json_file(const fs::path& p) {
  std::string text = read_text_file(p.string());
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", p.string(), e.what());
  }
}

// ---- tensors -----------------------------------------------------------------------------------

struct NameRule {
  std::string_view hf;
  std::string_view canonical;
};
constexpr std::array<NameRule, 11> kLayerRules{{
    {"input_layernorm.weight", "attn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.attn_sub_norm.weight", "attn_sub_norm.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
    {"mlp.ffn_sub_norm.weight", "ffn_sub_norm.weight"},
}};

Packing dense_packing(StDtype d) {
  switch (d) {
    case StDtype::kF32: return Packing::kF32;
    case StDtype::kF16: return Packing::kF16;
    case StDtype::kBF16: return Packing::kBF16;
    default: return Packing::kTernaryI8;  // sentinel: not a dense float dtype
  }
}

float read_scalar(const StTensor& t, const std::string& file) {
  if (t.numel() != 1) {
    fail("{}: tensor {}: weight_scale must hold 1 value, has shape [{}]", file, t.name,
         fmt::join(t.shape, ", "));
  }
  switch (t.dtype) {
    case StDtype::kF32: {
      float f;
      std::memcpy(&f, t.data.data(), 4);
      return f;
    }
    case StDtype::kBF16: return bf16_to_f32(static_cast<uint16_t>(t.data[0] | (t.data[1] << 8)));
    case StDtype::kF16: return f16_to_f32(static_cast<uint16_t>(t.data[0] | (t.data[1] << 8)));
    default:
      fail("{}: tensor {}: weight_scale must be F32, BF16 or F16, found {}", file, t.name,
           st_dtype_name(t.dtype));
  }
}

struct Located {
  const SafetensorsFile* file;
  const StTensor* tensor;
};

}  // namespace

HfConfig parse_hf_config(const nlohmann::json& j, const std::string& name) {
  if (!j.is_object()) fail("{}: expected a JSON object", name);
  HfConfig h;
  ModelConfig& c = h.config;
  c.hidden_size = req_int(j, name, "hidden_size");
  c.intermediate_size = req_int(j, name, "intermediate_size");
  c.num_layers = req_int(j, name, "num_hidden_layers");
  c.num_heads = req_int(j, name, "num_attention_heads");
  c.vocab_size = req_int(j, name, "vocab_size");
  c.max_position_embeddings = req_int(j, name, "max_position_embeddings");
  const nlohmann::json* v = opt_key(j, "num_key_value_heads");
  c.num_kv_heads = v ? int_value(*v, name, "num_key_value_heads") : c.num_heads;
  if ((v = opt_key(j, "head_dim"))) {
    c.head_dim = int_value(*v, name, "head_dim");
  } else {
    if (c.num_heads <= 0 || c.hidden_size % c.num_heads != 0)
      fail("{}: hidden_size {} is not a multiple of num_attention_heads {}", name, c.hidden_size, c.num_heads);
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if ((v = opt_key(j, "rope_theta"))) c.rope_theta = num_value(*v, name, "rope_theta");
  if ((v = opt_key(j, "rms_norm_eps"))) c.rms_norm_eps = num_value(*v, name, "rms_norm_eps");
  if ((v = opt_key(j, "tie_word_embeddings"))) {
    if (!v->is_boolean()) fail("{}: key 'tie_word_embeddings' must be true or false, found {}", name, v->dump());
    c.tie_word_embeddings = v->get<bool>();
    h.tie_given = true;
  }
  if ((v = opt_key(j, "hidden_act"))) {
    if (!v->is_string()) fail("{}: key 'hidden_act' must be a string, found {}", name, v->dump());
    c.hidden_act = v->get<std::string>();
  }
  if ((v = opt_key(j, "bos_token_id"))) c.bos_token_id = int_value(*v, name, "bos_token_id");
  if ((v = opt_key(j, "eos_token_id"))) c.eos_token_ids = int_list(*v, name, "eos_token_id");
  if ((v = opt_key(j, "quantization_config"))) {
    if (!v->is_object()) fail("{}: key 'quantization_config' must be an object", name);
    if (const nlohmann::json* lc = opt_key(*v, "linear_class")) {
      if (!lc->is_string()) fail("{}: quantization_config.linear_class must be a string", name);
      h.linear_class = lc->get<std::string>();
    }
  }
  if (h.linear_class != "bitlinear" && h.linear_class != "autobitlinear") {
    fail("{}: quantization_config.linear_class '{}' is not supported (bitlinear, autobitlinear)",
         name, h.linear_class);
  }
  return h;
}

std::string hf_canonical_name(std::string_view n) {
  if (n == "model.embed_tokens.weight") return "token_embd.weight";
  if (n == "model.norm.weight") return "output_norm.weight";
  if (n == "lm_head.weight") return "output.weight";
  constexpr std::string_view kLayers = "model.layers.";
  if (!n.starts_with(kLayers)) return {};
  n.remove_prefix(kLayers.size());
  size_t dot = n.find('.');
  // Plain decimal layer numbers only: no sign, no leading zeros (two spellings of one layer).
  if (dot == std::string_view::npos || dot == 0 || dot > 9 || n[0] < '0' || n[0] > '9' ||
      (n[0] == '0' && dot > 1))
    return {};
  int64_t layer = 0;
  auto [p, ec] = std::from_chars(n.data(), n.data() + dot, layer);
  if (ec != std::errc() || p != n.data() + dot) return {};
  std::string_view rest = n.substr(dot + 1);
  for (const auto& r : kLayerRules)
    if (rest == r.hf) return fmt::format("blk.{}.{}", layer, r.canonical);
  return {};
}

void add_hf_tensors(Model& m, const std::vector<SafetensorsFile>& files,
                    const std::string& linear_class, bool tie_given) {
  const bool multiply = linear_class == "autobitlinear";
  std::map<std::string, Located, std::less<>> all;
  for (const auto& f : files) {
    for (const auto& t : f.tensors) {
      auto [it, inserted] = all.emplace(t.name, Located{&f, &t});
      if (!inserted) {
        fail("{}: tensor {} is also in {}", f.name, t.name, it->second.file->name);
      }
    }
  }
  if (!tie_given) m.config.tie_word_embeddings = all.find("lm_head.weight") == all.end();

  std::map<std::string, ExpectedTensor, std::less<>> expected;
  for (auto& e : expected_tensors(m.config)) expected.emplace(e.name, e);

  std::vector<std::string> ignored;
  for (const auto& [hf_name, loc] : all) {
    const StTensor& st = *loc.tensor;
    const std::string& file = loc.file->name;
    if (hf_name.ends_with(".weight_scale")) {
      std::string w = hf_name.substr(0, hf_name.size() - 6);  // "...weight"
      if (all.find(w) == all.end()) fail("{}: tensor {} has no matching {}", file, hf_name, w);
      continue;
    }
    std::string name = hf_canonical_name(hf_name);
    if (name.empty()) {
      ignored.push_back(hf_name);
      continue;
    }
    if (name == "output.weight" && m.config.tie_word_embeddings) {
      ignored.push_back(hf_name);  // tied: the head is token_embd, a stray lm_head is unused
      continue;
    }
    auto ex = expected.find(name);
    if (ex == expected.end()) {
      fail("{}: tensor {} ({}) is not part of a {}-layer model", file, hf_name, name,
           m.config.num_layers);
    }
    const ExpectedTensor& e = ex->second;
    if (m.find(name) != nullptr) fail("{}: tensor {} maps to {}, which is already loaded", file, hf_name, name);
    Tensor t;
    t.name = name;
    t.origin = fmt::format("{}: {}", file, hf_name);
    if (!e.ternary) {
      t.packing = dense_packing(st.dtype);
      if (t.packing == Packing::kTernaryI8) {
        fail("{}: tensor {}: expected F32, F16 or BF16, found {}", file, hf_name, st_dtype_name(st.dtype));
      }
      t.shape = st.shape;
      t.data = st.data;
      m.tensors.push_back(std::move(t));
      continue;
    }
    const int64_t out = e.shape[0], in = e.shape[1];
    if (st.dtype == StDtype::kU8) {
      const int64_t packed_rows = (out + 3) / 4;
      if (st.shape != std::vector<int64_t>{packed_rows, in}) {
        fail("{}: tensor {}: expected packed uint8 {}x{} (ternary {}x{}), file has [{}]", file,
             hf_name, packed_rows, in, out, in, fmt::join(st.shape, ", "));
      }
      auto sc = all.find(hf_name + "_scale");
      if (sc == all.end()) fail("{}: tensor {} is packed but {}_scale is missing", file, hf_name, hf_name);
      float ws = read_scalar(*sc->second.tensor, sc->second.file->name);
      if (!std::isfinite(ws) || !(ws > 0)) {
        fail("{}: tensor {}_scale = {} must be a positive finite number", sc->second.file->name,
             hf_name, ws);
      }
      t.packing = Packing::kTernaryHF;
      t.shape = {out, in};
      t.data = st.data;
      t.scales = {multiply ? ws : 1.0f / ws};
      m.tensors.push_back(std::move(t));
      continue;
    }
    Packing dp = dense_packing(st.dtype);
    if (dp == Packing::kTernaryI8) {
      fail("{}: tensor {}: expected packed U8 or F32/F16/BF16 weights, found {}", file, hf_name,
           st_dtype_name(st.dtype));
    }
    if (st.shape != e.shape) {
      fail("{}: tensor {}: expected {}x{}, file has [{}]", file, hf_name, out, in,
           fmt::join(st.shape, ", "));
    }
    // Quantize now, one tensor at a time, so that no float copy of the whole model exists.
    Tensor dense;
    dense.name = name;
    dense.packing = dp;
    dense.shape = st.shape;
    dense.data = st.data;
    TernaryMatrix q;
    {
      std::vector<float> w = dequantize(dense);
      q = quantize_absmean(w, out, in);
    }
    t.packing = Packing::kTernary2;
    t.shape = {out, in};
    t.scales = q.scales;
    t.data = m.own(pack_ternary(q, Packing::kTernary2));
    t.origin += " (absmean-quantized at load)";
    m.tensors.push_back(std::move(t));
  }
  if (!ignored.empty()) m.extra["ignored_tensors"] = ignored;
}

namespace {

// Token text -> id using tokenizer.json's added_tokens and model.vocab.
int64_t token_id(const nlohmann::json& tok, const std::string& text) {
  if (!tok.is_object()) return -1;
  if (auto at = tok.find("added_tokens"); at != tok.end() && at->is_array()) {
    for (const auto& e : *at) {
      if (e.is_object() && e.value("content", std::string()) == text) {
        auto id = e.find("id");
        if (id != e.end() && id->is_number_integer()) return id->get<int64_t>();
      }
    }
  }
  if (auto mo = tok.find("model"); mo != tok.end() && mo->is_object()) {
    if (auto vo = mo->find("vocab"); vo != mo->end() && vo->is_object()) {
      auto it = vo->find(text);
      if (it != vo->end() && it->is_number_integer()) return it->get<int64_t>();
    }
  }
  return -1;
}

// tokenizer_config.json names special tokens as a string or {"content": ...}.
std::string token_text(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return {};
}

}  // namespace

std::unique_ptr<Model> load_hf(const std::string& dir) {
  const fs::path root(dir);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) fail("{}: not a directory", dir);
  auto m = std::make_unique<Model>();
  m->path = dir;
  m->format = "hf";

  const fs::path config_path = root / "config.json";
  if (!fs::exists(config_path, ec)) fail("{}: no config.json: not a Hugging Face model folder", dir);
  const nlohmann::json cj = read_json_file(config_path);
  HfConfig hc = parse_hf_config(cj, config_path.string());
  m->config = hc.config;
  nlohmann::json hf_info = {{"linear_class", hc.linear_class}};
  for (const char* k : {"model_type", "architectures", "quantization_config", "torch_dtype"})
    if (cj.contains(k)) hf_info[k] = cj[k];

  // Weight files: a shard index, else one model.safetensors.
  std::vector<std::string> weight_files;
  std::map<std::string, std::string> weight_map;
  const fs::path index_path = root / "model.safetensors.index.json";
  if (fs::exists(index_path, ec)) {
    nlohmann::json idx = read_json_file(index_path);
    if (!idx.is_object() || !idx.contains("weight_map") || !idx["weight_map"].is_object())
      fail("{}: missing object 'weight_map'", index_path.string());
    std::set<std::string> seen;
    for (auto it = idx["weight_map"].begin(); it != idx["weight_map"].end(); ++it) {
      if (!it.value().is_string())
        fail("{}: weight_map['{}'] must be a file name", index_path.string(), it.key());
      std::string f = it.value().get<std::string>();
      if (f.empty() || f.find('/') != std::string::npos || f.find('\\') != std::string::npos ||
          f == "." || f == "..") {
        fail("{}: weight_map['{}'] = '{}' is not a plain file name in the folder",
             index_path.string(), it.key(), f);
      }
      weight_map[it.key()] = f;
      if (seen.insert(f).second) weight_files.push_back(f);
    }
    if (weight_files.empty()) fail("{}: weight_map is empty", index_path.string());
  } else if (fs::exists(root / "model.safetensors", ec)) {
    weight_files.push_back("model.safetensors");
  } else {
    fail("{}: neither model.safetensors nor model.safetensors.index.json is present", dir);
  }

  std::vector<SafetensorsFile> files;
  for (const auto& wf : weight_files) {
    const std::string p = (root / wf).string();
    auto mf = MappedFile::open(p);
    files.push_back(parse_safetensors(mf->bytes(), p));
    m->keep(std::move(mf));
  }
  for (const auto& [tensor, file] : weight_map) {
    bool found = false;
    for (const auto& f : files)
      if (fs::path(f.name).filename() == file && f.find(tensor) != nullptr) found = true;
    if (!found) fail("{}: tensor {} is listed in {} but not found there", index_path.string(), tensor, file);
  }
  add_hf_tensors(*m, files, hc.linear_class, hc.tie_given);
  hf_info["weight_files"] = weight_files;
  m->extra["hf"] = std::move(hf_info);

  // Tokenizer and chat template.
  nlohmann::json tok_json;
  const fs::path tok_path = root / "tokenizer.json";
  if (fs::exists(tok_path, ec)) {
    m->tokenizer.hf_json = read_text_file(tok_path.string());
    tok_json = nlohmann::json::parse(m->tokenizer.hf_json, nullptr, /*allow_exceptions=*/false);
    if (tok_json.is_discarded()) fail("{}: not valid JSON", tok_path.string());
  }
  nlohmann::json tc;
  const fs::path tc_path = root / "tokenizer_config.json";
  if (fs::exists(tc_path, ec)) {
    tc = read_json_file(tc_path);
    if (!tc.is_object()) fail("{}: expected a JSON object", tc_path.string());
    if (auto ct = tc.find("chat_template"); ct != tc.end() && !ct->is_null()) {
      if (ct->is_string()) {
        m->chat_template = ct->get<std::string>();
      } else if (ct->is_array()) {
        // A list of named templates: take "default", else the first one.
        for (const auto& e : *ct) {
          if (!e.is_object() || !e.contains("template") || !e["template"].is_string())
            fail("{}: chat_template entries must be {{name, template}} objects", tc_path.string());
          if (m->chat_template.empty() || e.value("name", std::string()) == "default")
            m->chat_template = e["template"].get<std::string>();
          if (e.value("name", std::string()) == "default") break;
        }
      } else {
        fail("{}: chat_template must be a string or a list, found {}", tc_path.string(), ct->type_name());
      }
    }
    if (auto ab = tc.find("add_bos_token"); ab != tc.end() && ab->is_boolean())
      m->tokenizer.add_bos = ab->get<bool>();
  }
  if (m->chat_template.empty() && fs::exists(root / "chat_template.jinja", ec))
    m->chat_template = read_text_file((root / "chat_template.jinja").string());

  // bos/eos: config.json, else generation_config.json, else tokenizer_config.json's token texts.
  const fs::path gen_path = root / "generation_config.json";
  if ((m->config.bos_token_id < 0 || m->config.eos_token_ids.empty()) && fs::exists(gen_path, ec)) {
    nlohmann::json g = read_json_file(gen_path);
    if (g.is_object()) {
      const std::string gn = gen_path.string();
      if (m->config.bos_token_id < 0)
        if (const nlohmann::json* v = opt_key(g, "bos_token_id")) m->config.bos_token_id = int_value(*v, gn, "bos_token_id");
      if (m->config.eos_token_ids.empty())
        if (const nlohmann::json* v = opt_key(g, "eos_token_id")) m->config.eos_token_ids = int_list(*v, gn, "eos_token_id");
    }
  }
  if (tc.is_object()) {
    if (m->config.bos_token_id < 0 && tc.contains("bos_token"))
      m->config.bos_token_id = token_id(tok_json, token_text(tc["bos_token"]));
    if (m->config.eos_token_ids.empty() && tc.contains("eos_token")) {
      int64_t id = token_id(tok_json, token_text(tc["eos_token"]));
      if (id >= 0) m->config.eos_token_ids.push_back(id);
    }
  }
  m->tokenizer.bos_id = m->config.bos_token_id;
  if (!m->config.eos_token_ids.empty()) m->tokenizer.eos_id = m->config.eos_token_ids.front();

  m->validate();
  return m;
}

}  // namespace onebit
