// The values a chat template computes with: Python/Jinja2 semantics over a small closed set of
// kinds (undefined, none, bool, int, float, str, list/tuple, dict, callable).
//
// Internal to the template component; ChatTemplate (chat_template.h) is the public face.
// Containers are shared and, except for namespace() objects, never mutated after creation, so
// copying a Value is cheap. Every container records its nesting depth, and creating one deeper
// than kMaxValueDepth fails: printing, comparing and destroying values recurse, and a template is
// outside input.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace onebit::jinja {

inline constexpr int kMaxValueDepth = 200;

struct Value;
struct List;
struct Dict;
struct Function;
struct CallArgs;

struct Undefined {
  std::string name;  // what was looked up, for the error when it is used
};
struct None {};

using ListPtr = std::shared_ptr<List>;
using DictPtr = std::shared_ptr<Dict>;
using FunctionPtr = std::shared_ptr<const Function>;

struct Value {
  std::variant<Undefined, None, bool, int64_t, double, std::string, ListPtr, DictPtr, FunctionPtr> v;

  Value() : v(Undefined{}) {}
  Value(None n) : v(n) {}
  Value(Undefined u) : v(std::move(u)) {}
  Value(bool b) : v(b) {}
  Value(int64_t i) : v(i) {}
  Value(int i) : v(static_cast<int64_t>(i)) {}
  Value(double d) : v(d) {}
  Value(std::string s) : v(std::move(s)) {}
  Value(const char* s) : v(std::string(s)) {}
  Value(ListPtr l) : v(std::move(l)) {}
  Value(DictPtr d) : v(std::move(d)) {}
  Value(FunctionPtr f) : v(std::move(f)) {}

  bool is_undefined() const { return std::holds_alternative<Undefined>(v); }
  bool is_none() const { return std::holds_alternative<None>(v); }
  bool is_bool() const { return std::holds_alternative<bool>(v); }
  bool is_int() const { return std::holds_alternative<int64_t>(v); }
  bool is_float() const { return std::holds_alternative<double>(v); }
  bool is_number() const { return is_int() || is_float() || is_bool(); }
  bool is_string() const { return std::holds_alternative<std::string>(v); }
  bool is_list() const { return std::holds_alternative<ListPtr>(v); }
  bool is_dict() const { return std::holds_alternative<DictPtr>(v); }
  bool is_callable() const { return std::holds_alternative<FunctionPtr>(v); }

  const std::string& str() const { return std::get<std::string>(v); }
  const ListPtr& list() const { return std::get<ListPtr>(v); }
  const DictPtr& dict() const { return std::get<DictPtr>(v); }
  const FunctionPtr& func() const { return std::get<FunctionPtr>(v); }
  bool boolean() const { return std::get<bool>(v); }
  int64_t integer() const { return std::get<int64_t>(v); }
  double number() const;  // int, bool or float as double

  bool truthy() const;
  int depth() const;  // container nesting depth (0 for scalars)
};

struct List {
  std::vector<Value> items;
  bool is_tuple = false;
  int depth = 1;
};

struct Dict {
  enum class Kind { Plain, Namespace, Loop };
  std::vector<std::pair<std::string, Value>> items;  // insertion order kept, as Python dicts do
  Kind kind = Kind::Plain;
  int depth = 1;

  const Value* find(std::string_view key) const;
  void set(const std::string& key, Value value);  // replaces or appends
};

// Positional and keyword arguments of a call, already evaluated.
struct CallArgs {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};

struct Function {
  std::string name;
  std::function<Value(CallArgs&)> fn;
};

// Builders; they compute depth and fail past kMaxValueDepth.
Value make_list(std::vector<Value> items, bool is_tuple = false);
Value make_dict(std::vector<std::pair<std::string, Value>> items, Dict::Kind kind = Dict::Kind::Plain);
Value make_function(std::string name, std::function<Value(CallArgs&)> fn);

// Python type name ('str', 'int', 'NoneType', ...) for messages.
std::string type_name(const Value& v);

// str(v) as Jinja prints it: undefined -> "", none -> "None", lists and dicts as Python repr.
std::string to_str(const Value& v);
// repr(v) as Python writes it.
std::string repr(const Value& v);
// Python float repr (shortest round-trip, "1.0", "1e+16", "inf", "nan").
std::string float_repr(double d);

// Python ==, with Jinja's rule that any two undefined values are equal.
bool equals(const Value& a, const Value& b);

// json.dumps(v, ensure_ascii, indent, separators, sort_keys) as transformers' tojson filter does.
struct JsonOptions {
  std::optional<std::string> indent;  // nullopt: single line
  std::string item_sep = ", ";
  std::string key_sep = ": ";
  bool ensure_ascii = false;
  bool sort_keys = false;
};
std::string to_json(const Value& v, const JsonOptions& opt);

// nlohmann JSON (either flavour) -> Value. Object key order is that of the JSON object.
template <typename Json>
Value from_json(const Json& j, int depth = 0);

}  // namespace onebit::jinja
