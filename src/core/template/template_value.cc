#include "core/template/template_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "core/base/error.h"
#include "core/template/template_text.h"

namespace onebit::jinja {

double Value::number() const {
  if (is_int()) return static_cast<double>(integer());
  if (is_bool()) return boolean() ? 1.0 : 0.0;
  return std::get<double>(v);
}

bool Value::truthy() const {
  return std::visit(
      [](const auto& x) -> bool {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, Undefined> || std::is_same_v<T, None>) return false;
        else if constexpr (std::is_same_v<T, bool>) return x;
        else if constexpr (std::is_same_v<T, int64_t>) return x != 0;
        else if constexpr (std::is_same_v<T, double>) return x != 0.0;
        else if constexpr (std::is_same_v<T, std::string>) return !x.empty();
        else if constexpr (std::is_same_v<T, ListPtr>) return !x->items.empty();
        else if constexpr (std::is_same_v<T, DictPtr>) return x->kind != Dict::Kind::Plain || !x->items.empty();
        else return true;
      },
      v);
}

int Value::depth() const {
  if (is_list()) return list()->depth;
  if (is_dict()) return dict()->depth;
  return 0;
}

const Value* Dict::find(std::string_view key) const {
  for (const auto& [k, val] : items)
    if (k == key) return &val;
  return nullptr;
}

void Dict::set(const std::string& key, Value value) {
  int d = value.depth() + 1;
  if (d > kMaxValueDepth) fail("chat template: values nested deeper than {} levels", kMaxValueDepth);
  depth = std::max(depth, d);
  for (auto& [k, val] : items) {
    if (k == key) {
      val = std::move(value);
      return;
    }
  }
  items.emplace_back(key, std::move(value));
}

Value make_list(std::vector<Value> items, bool is_tuple) {
  auto l = std::make_shared<List>();
  for (const auto& it : items) l->depth = std::max(l->depth, it.depth() + 1);
  if (l->depth > kMaxValueDepth) fail("chat template: values nested deeper than {} levels", kMaxValueDepth);
  l->items = std::move(items);
  l->is_tuple = is_tuple;
  return Value(std::move(l));
}

Value make_dict(std::vector<std::pair<std::string, Value>> items, Dict::Kind kind) {
  auto d = std::make_shared<Dict>();
  d->kind = kind;
  for (auto& [k, val] : items) d->set(k, std::move(val));
  return Value(std::move(d));
}

Value make_function(std::string name, std::function<Value(CallArgs&)> fn) {
  auto f = std::make_shared<Function>();
  f->name = std::move(name);
  f->fn = std::move(fn);
  return Value(FunctionPtr(std::move(f)));
}

std::string type_name(const Value& v) {
  if (v.is_undefined()) return "Undefined";
  if (v.is_none()) return "NoneType";
  if (v.is_bool()) return "bool";
  if (v.is_int()) return "int";
  if (v.is_float()) return "float";
  if (v.is_string()) return "str";
  if (v.is_list()) return v.list()->is_tuple ? "tuple" : "list";
  if (v.is_dict()) {
    switch (v.dict()->kind) {
      case Dict::Kind::Namespace: return "Namespace";
      case Dict::Kind::Loop: return "LoopContext";
      case Dict::Kind::Plain: break;
    }
    return "dict";
  }
  return "function";
}

std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  // Shortest round-trip digits, then Python's layout: positional when -4 <= exp < 16.
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string s(buf, res.ptr);
  bool neg = s[0] == '-';
  if (neg) s.erase(0, 1);
  size_t e = s.find('e');
  int exp = std::stoi(s.substr(e + 1));
  std::string digits;
  for (size_t i = 0; i < e; ++i)
    if (s[i] != '.') digits += s[i];
  std::string out;
  if (exp >= -4 && exp < 16) {
    if (exp < 0) {
      out = "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
    } else if (static_cast<size_t>(exp) + 1 >= digits.size()) {
      out = digits + std::string(static_cast<size_t>(exp) + 1 - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, static_cast<size_t>(exp) + 1) + "." + digits.substr(static_cast<size_t>(exp) + 1);
    }
  } else {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    out += eb;
  }
  return neg ? "-" + out : out;
}

namespace {

std::string repr_string(const std::string& s) {
  bool has_single = s.find('\'') != std::string::npos;
  bool has_double = s.find('"') != std::string::npos;
  char q = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == static_cast<unsigned char>(q) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      out += b;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += q;
  return out;
}

}  // namespace

std::string repr(const Value& v) {
  if (v.is_string()) return repr_string(v.str());
  if (v.is_list()) {
    const auto& l = *v.list();
    std::string out = l.is_tuple ? "(" : "[";
    for (size_t i = 0; i < l.items.size(); ++i) {
      if (i) out += ", ";
      out += repr(l.items[i]);
    }
    if (l.is_tuple && l.items.size() == 1) out += ",";
    out += l.is_tuple ? ")" : "]";
    return out;
  }
  if (v.is_dict()) {
    const auto& d = *v.dict();
    std::string out = "{";
    bool first = true;
    for (const auto& [k, val] : d.items) {
      if (!first) out += ", ";
      first = false;
      out += repr_string(k) + ": " + repr(val);
    }
    out += "}";
    if (d.kind == Dict::Kind::Namespace) return "<Namespace " + out + ">";
    if (d.kind == Dict::Kind::Loop) return "<LoopContext>";
    return out;
  }
  return to_str(v);
}

std::string to_str(const Value& v) {
  return std::visit(
      [&](const auto& x) -> std::string {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, Undefined>) return "";
        else if constexpr (std::is_same_v<T, None>) return "None";
        else if constexpr (std::is_same_v<T, bool>) return x ? "True" : "False";
        else if constexpr (std::is_same_v<T, int64_t>) return std::to_string(x);
        else if constexpr (std::is_same_v<T, double>) return float_repr(x);
        else if constexpr (std::is_same_v<T, std::string>) return x;
        else if constexpr (std::is_same_v<T, FunctionPtr>) return "<function " + x->name + ">";
        else return repr(v);
      },
      v.v);
}

bool equals(const Value& a, const Value& b) {
  if (a.is_undefined() || b.is_undefined()) return a.is_undefined() && b.is_undefined();
  if (a.is_none() || b.is_none()) return a.is_none() && b.is_none();
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) return a.number() == b.number();
    int64_t x = a.is_bool() ? a.boolean() : a.integer();
    int64_t y = b.is_bool() ? b.boolean() : b.integer();
    return x == y;
  }
  if (a.is_string() && b.is_string()) return a.str() == b.str();
  if (a.is_list() && b.is_list()) {
    const auto& x = a.list()->items;
    const auto& y = b.list()->items;
    if (x.size() != y.size() || a.list()->is_tuple != b.list()->is_tuple) return false;
    for (size_t i = 0; i < x.size(); ++i)
      if (!equals(x[i], y[i])) return false;
    return true;
  }
  if (a.is_dict() && b.is_dict()) {
    if (a.dict() == b.dict()) return true;
    const auto& x = *a.dict();
    const auto& y = *b.dict();
    if (x.kind != Dict::Kind::Plain || y.kind != Dict::Kind::Plain) return false;
    if (x.items.size() != y.items.size()) return false;
    for (const auto& [k, val] : x.items) {
      const Value* o = y.find(k);
      if (!o || !equals(val, *o)) return false;
    }
    return true;
  }
  if (a.is_callable() && b.is_callable()) return a.func() == b.func();
  return false;
}

namespace {

void json_string(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    switch (c) {
      case '"': out += "\\\""; ++i; continue;
      case '\\': out += "\\\\"; ++i; continue;
      case '\n': out += "\\n"; ++i; continue;
      case '\r': out += "\\r"; ++i; continue;
      case '\t': out += "\\t"; ++i; continue;
      case '\b': out += "\\b"; ++i; continue;
      case '\f': out += "\\f"; ++i; continue;
      default: break;
    }
    char b[16];
    if (c < 0x20 || (ensure_ascii && c == 0x7f)) {
      std::snprintf(b, sizeof b, "\\u%04x", c);
      out += b;
      ++i;
    } else if (c < 0x80 || !ensure_ascii) {
      out += static_cast<char>(c);
      ++i;
    } else {
      size_t len = 0;
      uint32_t cp = utf8_decode(s, i, &len);
      i += len;
      if (cp >= 0x10000) {
        cp -= 0x10000;
        std::snprintf(b, sizeof b, "\\u%04x\\u%04x", 0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
      } else {
        std::snprintf(b, sizeof b, "\\u%04x", cp);
      }
      out += b;
    }
  }
  out += '"';
}

void json_value(std::string& out, const Value& v, const JsonOptions& opt, int level) {
  auto newline = [&](int lvl) {
    if (!opt.indent) return;
    out += '\n';
    for (int i = 0; i < lvl; ++i) out += *opt.indent;
  };
  const std::string item_sep = opt.indent ? (opt.item_sep == ", " ? "," : opt.item_sep) : opt.item_sep;
  if (v.is_none()) {
    out += "null";
  } else if (v.is_bool()) {
    out += v.boolean() ? "true" : "false";
  } else if (v.is_int()) {
    out += std::to_string(v.integer());
  } else if (v.is_float()) {
    double d = std::get<double>(v.v);
    if (std::isnan(d)) out += "NaN";
    else if (std::isinf(d)) out += d > 0 ? "Infinity" : "-Infinity";
    else out += float_repr(d);
  } else if (v.is_string()) {
    json_string(out, v.str(), opt.ensure_ascii);
  } else if (v.is_list()) {
    const auto& items = v.list()->items;
    if (items.empty()) {
      out += "[]";
      return;
    }
    out += '[';
    for (size_t i = 0; i < items.size(); ++i) {
      if (i) out += item_sep;
      newline(level + 1);
      json_value(out, items[i], opt, level + 1);
    }
    newline(level);
    out += ']';
  } else if (v.is_dict() && v.dict()->kind == Dict::Kind::Plain) {
    auto items = v.dict()->items;
    if (items.empty()) {
      out += "{}";
      return;
    }
    if (opt.sort_keys)
      std::stable_sort(items.begin(), items.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    out += '{';
    for (size_t i = 0; i < items.size(); ++i) {
      if (i) out += item_sep;
      newline(level + 1);
      json_string(out, items[i].first, opt.ensure_ascii);
      out += opt.key_sep;
      json_value(out, items[i].second, opt, level + 1);
    }
    newline(level);
    out += '}';
  } else {
    fail("chat template: Object of type {} is not JSON serializable", type_name(v));
  }
}

}  // namespace

std::string to_json(const Value& v, const JsonOptions& opt) {
  std::string out;
  json_value(out, v, opt, 0);
  return out;
}

template <typename Json>
Value from_json(const Json& j, int depth) {
  if (depth > kMaxValueDepth) fail("chat template context: JSON nested deeper than {} levels", kMaxValueDepth);
  switch (j.type()) {
    case Json::value_t::null: return Value(None{});
    case Json::value_t::boolean: return Value(j.template get<bool>());
    case Json::value_t::number_integer: return Value(j.template get<int64_t>());
    case Json::value_t::number_unsigned: {
      uint64_t u = j.template get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return Value(static_cast<double>(u));
      return Value(static_cast<int64_t>(u));
    }
    case Json::value_t::number_float: return Value(j.template get<double>());
    case Json::value_t::string: return Value(j.template get<std::string>());
    case Json::value_t::array: {
      std::vector<Value> items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(from_json(e, depth + 1));
      return make_list(std::move(items));
    }
    case Json::value_t::object: {
      std::vector<std::pair<std::string, Value>> items;
      for (auto it = j.begin(); it != j.end(); ++it) items.emplace_back(it.key(), from_json(it.value(), depth + 1));
      return make_dict(std::move(items));
    }
    default: fail("chat template context: unsupported JSON value (binary or discarded)");
  }
}

template Value from_json<nlohmann::json>(const nlohmann::json&, int);
template Value from_json<nlohmann::ordered_json>(const nlohmann::ordered_json&, int);

}  // namespace onebit::jinja
