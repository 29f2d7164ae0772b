#include "core/template/template_renderer.h"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <functional>
#include <map>
#include <optional>
#include <unordered_map>

#include "core/base/error.h"
#include "core/template/template_text.h"

namespace onebit::jinja {
namespace {

constexpr int64_t kMaxRange = 100000;  // as Jinja's sandbox

struct Frame {
  std::unordered_map<std::string, Value> vars;
  std::shared_ptr<Frame> parent;
};
using FramePtr = std::shared_ptr<Frame>;

enum class Flow { Normal, Break, Continue };

[[noreturn]] void error_at(Pos p, const std::string& msg) {
  fail("chat template line {}, column {}: {}", p.line, p.col, msg);
}

// Arguments of a builtin bound to its parameter names (positional first, then keywords).
struct Bound {
  std::vector<std::optional<Value>> v;
  const Value* get(size_t i) const { return v[i] ? &*v[i] : nullptr; }
};

Bound bind(const CallArgs& a, std::initializer_list<const char*> names, const std::string& what, Pos p) {
  Bound b;
  b.v.resize(names.size());
  if (a.pos.size() > names.size())
    error_at(p, fmt::format("{} takes at most {} argument(s), {} given", what, names.size(), a.pos.size()));
  for (size_t i = 0; i < a.pos.size(); ++i) b.v[i] = a.pos[i];
  for (const auto& [k, val] : a.kw) {
    size_t i = 0;
    for (const char* n : names) {
      if (k == n) break;
      ++i;
    }
    if (i == names.size()) error_at(p, fmt::format("{} got an unexpected keyword argument '{}'", what, k));
    if (b.v[i]) error_at(p, fmt::format("{} got multiple values for argument '{}'", what, k));
    b.v[i] = val;
  }
  return b;
}

std::string undefined_message(const Value& v) {
  const auto& u = std::get<Undefined>(v.v);
  return u.name.empty() ? "value is undefined" : u.name;
}

// Python comparison for <, <=, >, >=; returns -1/0/1.
int compare(const Value& a, const Value& b, const char* op, Pos p) {
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) {
      double x = a.number(), y = b.number();
      return x < y ? -1 : x > y ? 1 : 0;
    }
    int64_t x = a.is_bool() ? a.boolean() : a.integer();
    int64_t y = b.is_bool() ? b.boolean() : b.integer();
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.is_string() && b.is_string()) return a.str() < b.str() ? -1 : a.str() > b.str() ? 1 : 0;
  if (a.is_list() && b.is_list()) {
    const auto& x = a.list()->items;
    const auto& y = b.list()->items;
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (equals(x[i], y[i])) continue;
      return compare(x[i], y[i], op, p);
    }
    return x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
  }
  error_at(p, fmt::format("'{}' not supported between instances of '{}' and '{}'", op, type_name(a), type_name(b)));
}

std::vector<std::string> py_splitlines(std::string_view s) {
  std::vector<std::string> out;
  size_t i = 0, start = 0;
  while (i < s.size()) {
    size_t len;
    uint32_t cp = utf8_decode(s, i, &len);
    bool br = cp == '\n' || cp == '\r' || cp == 0x0b || cp == 0x0c || cp == 0x1c || cp == 0x1d || cp == 0x1e ||
              cp == 0x85 || cp == 0x2028 || cp == 0x2029;
    if (!br) {
      i += len;
      continue;
    }
    out.emplace_back(s.substr(start, i - start));
    i += len;
    if (cp == '\r' && i < s.size() && s[i] == '\n') ++i;
    start = i;
  }
  if (start < s.size()) out.emplace_back(s.substr(start));
  return out;
}

class Renderer {
 public:
  Renderer(const RenderLimits& lim) : lim_(lim) { install_globals(); }

  std::string run(const Body& body, const Value& context) {
    if (!context.is_dict()) fail("chat template context must be a JSON object");
    auto root = std::make_shared<Frame>();
    root->parent = globals_;
    for (const auto& [k, v] : context.dict()->items) root->vars[k] = v;
    std::string out;
    std::string* saved = out_;
    out_ = &out;
    exec(body, root);
    out_ = saved;
    return out;
  }

 private:
  // ---- bookkeeping -------------------------------------------------------------------------
  void step(Pos p) {
    if (++steps_ > lim_.max_steps) error_at(p, fmt::format("template ran for more than {} steps", lim_.max_steps));
  }
  void check_size(size_t n, Pos p) const {
    if (n > lim_.max_output_bytes)
      error_at(p, fmt::format("a value or the output grew past {} bytes", lim_.max_output_bytes));
  }
  Value str_value(std::string s, Pos p) const {
    check_size(s.size(), p);
    return Value(std::move(s));
  }
  void emit(const std::string& s, Pos p) {
    check_size(out_->size() + s.size(), p);
    *out_ += s;
  }

  // ---- statements --------------------------------------------------------------------------
  Flow exec(const Body& body, const FramePtr& frame) {
    for (const auto& n : body) {
      Flow f = exec_node(*n, frame);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

  Flow exec_node(const Node& n, const FramePtr& frame) {
    step(n.pos);
    switch (n.kind) {
      case Node::Kind::Text: emit(n.text, n.pos); return Flow::Normal;
      case Node::Kind::Output: emit(to_str(eval(*n.expr, frame)), n.pos); return Flow::Normal;
      case Node::Kind::If:
        for (const auto& [cond, body] : n.branches)
          if (eval(*cond, frame).truthy()) return exec(body, frame);
        return exec(n.else_body, frame);
      case Node::Kind::For: return exec_for(n, frame);
      case Node::Kind::Set: {
        Value v = eval(*n.expr, frame);
        if (!n.attr.empty()) {
          Value ns = lookup(n.targets[0], frame);
          if (!ns.is_dict() || ns.dict()->kind != Dict::Kind::Namespace)
            error_at(n.pos, fmt::format("cannot assign attribute '{}' on '{}': it is not a namespace()", n.attr,
                                        n.targets[0]));
          ns.dict()->set(n.attr, std::move(v));
        } else {
          assign(n.targets, v, *frame, n.pos);
        }
        return Flow::Normal;
      }
      case Node::Kind::SetBlock: frame->vars[n.targets[0]] = Value(capture(n.body, frame)); return Flow::Normal;
      case Node::Kind::Macro: define_macro(n, frame); return Flow::Normal;
      case Node::Kind::Break: return Flow::Break;
      case Node::Kind::Continue: return Flow::Continue;
      case Node::Kind::Generation: return exec(n.body, frame);
    }
    return Flow::Normal;
  }

  std::string capture(const Body& body, const FramePtr& frame) {
    std::string buf;
    std::string* saved = out_;
    out_ = &buf;
    try {
      exec(body, frame);
    } catch (...) {
      out_ = saved;
      throw;
    }
    out_ = saved;
    return buf;
  }

  void assign(const std::vector<std::string>& targets, const Value& v, Frame& frame, Pos p) {
    if (targets.size() == 1) {
      frame.vars[targets[0]] = v;
      return;
    }
    std::vector<Value> items = iterate(v, p);
    if (items.size() != targets.size())
      error_at(p, fmt::format("cannot unpack {} value(s) into {} names", items.size(), targets.size()));
    for (size_t i = 0; i < targets.size(); ++i) frame.vars[targets[i]] = items[i];
  }

  std::vector<Value> iterate(const Value& v, Pos p) {
    if (v.is_list()) return v.list()->items;
    if (v.is_undefined()) return {};
    if (v.is_dict() && v.dict()->kind == Dict::Kind::Plain) {
      std::vector<Value> keys;
      for (const auto& kv : v.dict()->items) keys.emplace_back(kv.first);
      return keys;
    }
    if (v.is_string()) {
      std::vector<Value> chars;
      auto off = codepoint_offsets(v.str());
      for (size_t i = 0; i + 1 < off.size(); ++i) chars.emplace_back(v.str().substr(off[i], off[i + 1] - off[i]));
      return chars;
    }
    error_at(p, fmt::format("'{}' object is not iterable", type_name(v)));
  }

  Flow exec_for(const Node& n, const FramePtr& frame) {
    std::vector<Value> items = iterate(eval(*n.expr, frame), n.pos);
    if (n.loop_filter) {
      std::vector<Value> kept;
      for (auto& it : items) {
        step(n.pos);
        auto f = std::make_shared<Frame>();
        f->parent = frame;
        assign(n.targets, it, *f, n.pos);
        if (eval(*n.loop_filter, f).truthy()) kept.push_back(std::move(it));
      }
      items = std::move(kept);
    }
    const int64_t len = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < len; ++i) {
      step(n.pos);
      auto f = std::make_shared<Frame>();
      f->parent = frame;
      assign(n.targets, items[static_cast<size_t>(i)], *f, n.pos);
      auto loop = std::make_shared<Dict>();
      loop->kind = Dict::Kind::Loop;
      loop->items = {
          {"index", Value(i + 1)},
          {"index0", Value(i)},
          {"revindex", Value(len - i)},
          {"revindex0", Value(len - i - 1)},
          {"first", Value(i == 0)},
          {"last", Value(i == len - 1)},
          {"length", Value(len)},
          {"depth", Value(1)},
          {"depth0", Value(0)},
          {"previtem", i > 0 ? items[static_cast<size_t>(i - 1)] : Value(Undefined{"there is no previous item"})},
          {"nextitem", i + 1 < len ? items[static_cast<size_t>(i + 1)] : Value(Undefined{"there is no next item"})},
          {"cycle", make_function("cycle", [i, p = n.pos](CallArgs& a) -> Value {
             if (a.pos.empty()) error_at(p, "loop.cycle() needs at least one argument");
             return a.pos[static_cast<size_t>(i) % a.pos.size()];
           })},
      };
      f->vars["loop"] = Value(std::move(loop));
      Flow fl = exec(n.body, f);
      if (fl == Flow::Break) break;
    }
    if (len == 0) return exec(n.else_body, frame);
    return Flow::Normal;
  }

  void define_macro(const Node& n, const FramePtr& frame) {
    std::weak_ptr<Frame> home = frame;
    const Node* node = &n;
    frame->vars[n.name] = make_function(n.name, [this, home, node](CallArgs& a) -> Value {
      FramePtr parent = home.lock();
      if (!parent) error_at(node->pos, fmt::format("macro '{}' called after its scope ended", node->name));
      if (a.pos.size() > node->params.size())
        error_at(node->pos, fmt::format("macro '{}' takes not more than {} argument(s)", node->name, node->params.size()));
      if (++call_depth_ > lim_.max_call_depth) {
        --call_depth_;
        error_at(node->pos, fmt::format("macro calls nested deeper than {}", lim_.max_call_depth));
      }
      auto f = std::make_shared<Frame>();
      f->parent = parent;
      std::vector<bool> set(node->params.size(), false);
      for (size_t i = 0; i < a.pos.size(); ++i) {
        f->vars[node->params[i].name] = a.pos[i];
        set[i] = true;
      }
      for (const auto& [k, v] : a.kw) {
        size_t i = 0;
        while (i < node->params.size() && node->params[i].name != k) ++i;
        if (i == node->params.size()) {
          --call_depth_;
          error_at(node->pos, fmt::format("macro '{}' has no argument '{}'", node->name, k));
        }
        f->vars[k] = v;
        set[i] = true;
      }
      std::string s;
      try {
        for (size_t i = 0; i < node->params.size(); ++i) {
          if (set[i]) continue;
          const auto& prm = node->params[i];
          f->vars[prm.name] = prm.default_value ? eval(*prm.default_value, f)
                                                : Value(Undefined{fmt::format("'{}' is undefined", prm.name)});
        }
        s = capture(node->body, f);
      } catch (...) {
        --call_depth_;
        throw;
      }
      --call_depth_;
      return Value(std::move(s));
    });
  }

  // ---- expressions -------------------------------------------------------------------------
  Value lookup(const std::string& name, const FramePtr& frame) const {
    for (const Frame* f = frame.get(); f; f = f->parent.get()) {
      auto it = f->vars.find(name);
      if (it != f->vars.end()) return it->second;
    }
    return Value(Undefined{fmt::format("'{}' is undefined", name)});
  }

  Value eval(const Expr& e, const FramePtr& frame) {
    step(e.pos);
    switch (e.kind) {
      case Expr::Kind::Const: return e.value;
      case Expr::Kind::Name: return lookup(e.name, frame);
      case Expr::Kind::GetAttr: return get_attr(eval(*e.args[0], frame), e.name, e.pos);
      case Expr::Kind::GetItem: return get_item(eval(*e.args[0], frame), eval(*e.args[1], frame), e.pos);
      case Expr::Kind::Slice: {
        Value obj = eval(*e.args[0], frame);
        std::optional<Value> parts[3];
        for (int i = 0; i < 3; ++i)
          if (e.args[static_cast<size_t>(i) + 1]) parts[i] = eval(*e.args[static_cast<size_t>(i) + 1], frame);
        return slice(obj, parts, e.pos);
      }
      case Expr::Kind::Call: {
        Value callee = eval(*e.args[0], frame);
        CallArgs a = eval_args(e, frame, 1);
        return call(callee, a, e.pos);
      }
      case Expr::Kind::Filter: {
        Value subject = eval(*e.args[0], frame);
        CallArgs a = eval_args(e, frame, 1);
        return apply_filter(e.name, subject, a, e.pos);
      }
      case Expr::Kind::Test: {
        Value subject = eval(*e.args[0], frame);
        CallArgs a = eval_args(e, frame, 1);
        bool r = apply_test(e.name, subject, a, e.pos);
        return Value(e.negated ? !r : r);
      }
      case Expr::Kind::Neg: {
        Value v = eval(*e.args[0], frame);
        if (v.is_float()) return Value(-std::get<double>(v.v));
        if (v.is_int() || v.is_bool()) {
          int64_t x = v.is_bool() ? v.boolean() : v.integer();
          if (x == INT64_MIN) error_at(e.pos, "integer overflow");
          return Value(-x);
        }
        error_at(e.pos, fmt::format("bad operand type for unary -: '{}'", type_name(v)));
      }
      case Expr::Kind::Pos: {
        Value v = eval(*e.args[0], frame);
        if (!v.is_number()) error_at(e.pos, fmt::format("bad operand type for unary +: '{}'", type_name(v)));
        return v.is_bool() ? Value(static_cast<int64_t>(v.boolean())) : v;
      }
      case Expr::Kind::Not: return Value(!eval(*e.args[0], frame).truthy());
      case Expr::Kind::And: {
        Value l = eval(*e.args[0], frame);
        return l.truthy() ? eval(*e.args[1], frame) : l;
      }
      case Expr::Kind::Or: {
        Value l = eval(*e.args[0], frame);
        return l.truthy() ? l : eval(*e.args[1], frame);
      }
      case Expr::Kind::Binary: return binary(e.name, eval(*e.args[0], frame), eval(*e.args[1], frame), e.pos);
      case Expr::Kind::Compare: {
        Value l = eval(*e.args[0], frame);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value r = eval(*e.args[i + 1], frame);
          if (!compare_op(e.ops[i], l, r, e.pos)) return Value(false);
          l = std::move(r);
        }
        return Value(true);
      }
      case Expr::Kind::Cond:
        if (eval(*e.args[0], frame).truthy()) return eval(*e.args[1], frame);
        return e.args[2] ? eval(*e.args[2], frame) : Value(Undefined{"the condition was false and there is no else"});
      case Expr::Kind::ListLit:
      case Expr::Kind::TupleLit: {
        std::vector<Value> items;
        for (const auto& a : e.args) items.push_back(eval(*a, frame));
        return make_list(std::move(items), e.kind == Expr::Kind::TupleLit);
      }
      case Expr::Kind::DictLit: {
        std::vector<std::pair<std::string, Value>> items;
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          Value k = eval(*e.args[i], frame);
          if (!k.is_string()) error_at(e.args[i]->pos, fmt::format("dict keys must be strings, not '{}'", type_name(k)));
          items.emplace_back(k.str(), eval(*e.args[i + 1], frame));
        }
        return make_dict(std::move(items));
      }
    }
    error_at(e.pos, "unknown expression");
  }

  CallArgs eval_args(const Expr& e, const FramePtr& frame, size_t first) {
    CallArgs a;
    for (size_t i = first; i < e.args.size(); ++i) a.pos.push_back(eval(*e.args[i], frame));
    for (const auto& [k, v] : e.kwargs) a.kw.emplace_back(k, eval(*v, frame));
    return a;
  }

  Value call(const Value& callee, CallArgs& a, Pos p) {
    if (callee.is_callable()) {
      Value r = callee.func()->fn(a);
      if (r.is_string()) check_size(r.str().size(), p);
      return r;
    }
    if (callee.is_undefined()) error_at(p, undefined_message(callee));
    error_at(p, fmt::format("'{}' object is not callable", type_name(callee)));
  }

  bool compare_op(const std::string& op, const Value& l, const Value& r, Pos p) {
    if (op == "==") return equals(l, r);
    if (op == "!=") return !equals(l, r);
    if (op == "<") return compare(l, r, "<", p) < 0;
    if (op == "<=") return compare(l, r, "<=", p) <= 0;
    if (op == ">") return compare(l, r, ">", p) > 0;
    if (op == ">=") return compare(l, r, ">=", p) >= 0;
    if (op == "in") return contains(r, l, p);
    return !contains(r, l, p);  // notin
  }

  bool contains(const Value& container, const Value& item, Pos p) {
    if (container.is_string()) {
      if (!item.is_string())
        error_at(p, fmt::format("'in <string>' requires string as left operand, not {}", type_name(item)));
      return container.str().find(item.str()) != std::string::npos;
    }
    if (container.is_list()) {
      for (const auto& x : container.list()->items)
        if (equals(x, item)) return true;
      return false;
    }
    if (container.is_dict()) return item.is_string() && container.dict()->find(item.str()) != nullptr;
    if (container.is_undefined()) return false;
    error_at(p, fmt::format("argument of type '{}' is not iterable", type_name(container)));
  }

  Value binary(const std::string& op, const Value& a, const Value& b, Pos p) {
    if (op == "~") return str_value(to_str(a) + to_str(b), p);
    auto unsupported = [&]() -> Value {
      if (a.is_undefined()) error_at(p, undefined_message(a));
      if (b.is_undefined()) error_at(p, undefined_message(b));
      error_at(p, fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, type_name(a), type_name(b)));
    };
    auto as_int = [](const Value& v) { return v.is_bool() ? static_cast<int64_t>(v.boolean()) : v.integer(); };
    bool ints = (a.is_int() || a.is_bool()) && (b.is_int() || b.is_bool());
    if (op == "+") {
      if (a.is_string() && b.is_string()) return str_value(a.str() + b.str(), p);
      if (a.is_list() && b.is_list() && a.list()->is_tuple == b.list()->is_tuple) {
        check_size(a.list()->items.size() + b.list()->items.size(), p);
        std::vector<Value> items = a.list()->items;
        items.insert(items.end(), b.list()->items.begin(), b.list()->items.end());
        return make_list(std::move(items), a.list()->is_tuple);
      }
      if (ints) {
        int64_t r;
        if (__builtin_add_overflow(as_int(a), as_int(b), &r)) error_at(p, "integer overflow");
        return Value(r);
      }
      if (a.is_number() && b.is_number()) return Value(a.number() + b.number());
      if (a.is_string() || b.is_string())
        if (!a.is_undefined() && !b.is_undefined())
          error_at(p, fmt::format("can only concatenate {} (not \"{}\") to {}", type_name(a), type_name(b), type_name(a)));
      return unsupported();
    }
    if (op == "*") {
      auto repeat = [&](const Value& seq, int64_t n) -> Value {
        if (n < 0) n = 0;
        if (seq.is_string()) {
          if (seq.str().size() && static_cast<uint64_t>(n) > lim_.max_output_bytes / seq.str().size())
            check_size(lim_.max_output_bytes + 1, p);
          std::string r;
          for (int64_t i = 0; i < n; ++i) r += seq.str();
          return Value(std::move(r));
        }
        const auto& items = seq.list()->items;
        if (items.size() && static_cast<uint64_t>(n) > lim_.max_output_bytes / items.size())
          check_size(lim_.max_output_bytes + 1, p);
        std::vector<Value> r;
        for (int64_t i = 0; i < n; ++i) r.insert(r.end(), items.begin(), items.end());
        return make_list(std::move(r), seq.list()->is_tuple);
      };
      if ((a.is_string() || a.is_list()) && (b.is_int() || b.is_bool())) return repeat(a, as_int(b));
      if ((b.is_string() || b.is_list()) && (a.is_int() || a.is_bool())) return repeat(b, as_int(a));
      if (ints) {
        int64_t r;
        if (__builtin_mul_overflow(as_int(a), as_int(b), &r)) error_at(p, "integer overflow");
        return Value(r);
      }
      if (a.is_number() && b.is_number()) return Value(a.number() * b.number());
      return unsupported();
    }
    if (!a.is_number() || !b.is_number()) return unsupported();
    if (op == "-") {
      if (ints) {
        int64_t r;
        if (__builtin_sub_overflow(as_int(a), as_int(b), &r)) error_at(p, "integer overflow");
        return Value(r);
      }
      return Value(a.number() - b.number());
    }
    if (op == "/") {
      if (b.number() == 0) error_at(p, "division by zero");
      return Value(a.number() / b.number());
    }
    if (op == "//" || op == "%") {
      if (b.number() == 0) error_at(p, op == "//" ? "integer division or modulo by zero" : "modulo by zero");
      if (ints) {
        int64_t x = as_int(a), y = as_int(b);
        if (x == INT64_MIN && y == -1) error_at(p, "integer overflow");
        int64_t q = x / y, r = x % y;
        if (r != 0 && ((r < 0) != (y < 0))) {
          --q;
          r += y;
        }
        return Value(op == "//" ? q : r);
      }
      double x = a.number(), y = b.number();
      if (op == "//") return Value(std::floor(x / y));
      double r = std::fmod(x, y);
      if (r != 0 && ((r < 0) != (y < 0))) r += y;
      return Value(r);
    }
    if (op == "**") {
      if (ints && as_int(b) >= 0) {
        int64_t base = as_int(a), e = as_int(b), r = 1;
        while (e > 0) {
          if ((e & 1) && __builtin_mul_overflow(r, base, &r)) error_at(p, "integer overflow");
          e >>= 1;
          if (e > 0 && __builtin_mul_overflow(base, base, &base)) error_at(p, "integer overflow");
        }
        return Value(r);
      }
      if (a.number() == 0 && b.number() < 0) error_at(p, "0.0 cannot be raised to a negative power");
      return Value(std::pow(a.number(), b.number()));
    }
    return unsupported();
  }

  // ---- attribute and item access -----------------------------------------------------------
  Value get_attr(const Value& obj, const std::string& name, Pos p) {
    if (obj.is_undefined()) error_at(p, undefined_message(obj));
    if (obj.is_string()) {
      Value m = string_method(obj.str(), name, p);
      return m.is_undefined() ? Value(Undefined{fmt::format("'str object' has no attribute '{}'", name)}) : m;
    }
    if (obj.is_dict()) {
      const DictPtr& d = obj.dict();
      if (d->kind == Dict::Kind::Plain) {
        Value m = dict_method(d, name, p);
        if (!m.is_undefined()) return m;
      }
      if (const Value* v = d->find(name)) return *v;
      return Value(Undefined{fmt::format("'{} object' has no attribute '{}'", type_name(obj), name)});
    }
    if (obj.is_list()) {
      static const char* mutating[] = {"append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse"};
      for (const char* m : mutating)
        if (name == m) error_at(p, fmt::format("lists cannot be modified in a chat template ('{}')", name));
    }
    return Value(Undefined{fmt::format("'{} object' has no attribute '{}'", type_name(obj), name)});
  }

  Value get_item(const Value& obj, const Value& key, Pos p) {
    if (obj.is_undefined()) error_at(p, undefined_message(obj));
    if (obj.is_dict()) {
      if (key.is_string()) {
        if (const Value* v = obj.dict()->find(key.str())) return *v;
        if (obj.dict()->kind == Dict::Kind::Plain) {
          Value m = dict_method(obj.dict(), key.str(), p);
          if (!m.is_undefined()) return m;
        }
        return Value(Undefined{fmt::format("'{} object' has no attribute '{}'", type_name(obj), key.str())});
      }
      return Value(Undefined{fmt::format("'{} object' has no element {}", type_name(obj), repr(key))});
    }
    if ((obj.is_list() || obj.is_string()) && (key.is_int() || key.is_bool())) {
      int64_t i = key.is_bool() ? key.boolean() : key.integer();
      if (obj.is_list()) {
        const auto& items = obj.list()->items;
        int64_t n = static_cast<int64_t>(items.size());
        if (i < 0) i += n;
        if (i < 0 || i >= n) return Value(Undefined{fmt::format("{} object has no element {}", type_name(obj), repr(key))});
        return items[static_cast<size_t>(i)];
      }
      auto off = codepoint_offsets(obj.str());
      int64_t n = static_cast<int64_t>(off.size()) - 1;
      if (i < 0) i += n;
      if (i < 0 || i >= n) return Value(Undefined{fmt::format("str object has no element {}", repr(key))});
      size_t k = static_cast<size_t>(i);
      return Value(obj.str().substr(off[k], off[k + 1] - off[k]));
    }
    if (key.is_string()) return get_attr(obj, key.str(), p);
    return Value(Undefined{fmt::format("{} object has no element {}", type_name(obj), repr(key))});
  }

  Value slice(const Value& obj, const std::optional<Value> (&parts)[3], Pos p) {
    if (obj.is_undefined()) error_at(p, undefined_message(obj));
    if (!obj.is_list() && !obj.is_string())
      return Value(Undefined{fmt::format("'{}' object cannot be sliced", type_name(obj))});
    std::vector<size_t> off;
    int64_t n;
    if (obj.is_string()) {
      off = codepoint_offsets(obj.str());
      n = static_cast<int64_t>(off.size()) - 1;
    } else {
      n = static_cast<int64_t>(obj.list()->items.size());
    }
    auto part = [&](int i) -> std::optional<int64_t> {
      if (!parts[i] || parts[i]->is_none()) return std::nullopt;
      const Value& v = *parts[i];
      if (!v.is_int() && !v.is_bool())
        error_at(p, fmt::format("slice indices must be integers or None, not {}", type_name(v)));
      return v.is_bool() ? static_cast<int64_t>(v.boolean()) : v.integer();
    };
    int64_t step = part(2).value_or(1);
    if (step == 0) error_at(p, "slice step cannot be zero");
    auto clamp = [&](std::optional<int64_t> v, int64_t dflt) {
      if (!v) return dflt;
      int64_t x = *v;
      if (x < 0) x += n;
      if (step > 0) return std::clamp<int64_t>(x, 0, n);
      return std::clamp<int64_t>(x, -1, n - 1);
    };
    int64_t start = clamp(part(0), step > 0 ? 0 : n - 1);
    int64_t stop = clamp(part(1), step > 0 ? n : -1);
    std::vector<int64_t> idx;
    if (step > 0)
      for (int64_t i = start; i < stop; i += step) idx.push_back(i);
    else
      for (int64_t i = start; i > stop; i += step) idx.push_back(i);
    if (obj.is_string()) {
      std::string r;
      for (int64_t i : idx) r += obj.str().substr(off[static_cast<size_t>(i)], off[static_cast<size_t>(i) + 1] - off[static_cast<size_t>(i)]);
      return Value(std::move(r));
    }
    std::vector<Value> r;
    for (int64_t i : idx) r.push_back(obj.list()->items[static_cast<size_t>(i)]);
    return make_list(std::move(r), obj.list()->is_tuple);
  }

  static std::optional<std::string> opt_str(const Value* v, const char* what, Pos p) {
    if (!v || v->is_none()) return std::nullopt;
    if (!v->is_string()) error_at(p, fmt::format("{} must be a string or None, not {}", what, type_name(*v)));
    return v->str();
  }
  static int64_t opt_int(const Value* v, int64_t dflt, const char* what, Pos p) {
    if (!v || v->is_none()) return dflt;
    if (!v->is_int() && !v->is_bool()) error_at(p, fmt::format("{} must be an integer, not {}", what, type_name(*v)));
    return v->is_bool() ? v->boolean() : v->integer();
  }

  Value string_method(const std::string& s, const std::string& name, Pos p) {
    auto m = [&](auto fn) { return make_function(name, [s, p, name, fn](CallArgs& a) -> Value { return fn(s, a, p, name); }); };
    using A = CallArgs;
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      bool l = name != "rstrip", r = name != "lstrip";
      return m([l, r](const std::string& s, A& a, Pos p, const std::string& nm) -> Value {
        Bound b = bind(a, {"chars"}, "str." + nm + "()", p);
        return Value(py_strip(s, opt_str(b.get(0), "chars", p), l, r));
      });
    }
    if (name == "startswith" || name == "endswith") {
      bool start = name == "startswith";
      return m([start](const std::string& s, A& a, Pos p, const std::string& nm) -> Value {
        Bound b = bind(a, {"prefix"}, "str." + nm + "()", p);
        if (!b.get(0)) error_at(p, "str." + nm + "() takes exactly one argument");
        std::vector<Value> cands;
        if (b.get(0)->is_list()) cands = b.get(0)->list()->items;
        else cands.push_back(*b.get(0));
        for (const auto& c : cands) {
          if (!c.is_string()) error_at(p, fmt::format("str.{}() arguments must be str, not {}", nm, type_name(c)));
          const std::string& x = c.str();
          if (x.size() <= s.size() && (start ? s.compare(0, x.size(), x) == 0 : s.compare(s.size() - x.size(), x.size(), x) == 0))
            return Value(true);
        }
        return Value(false);
      });
    }
    if (name == "upper" || name == "lower" || name == "title" || name == "capitalize" || name == "splitlines" ||
        name == "isdigit" || name == "isalpha" || name == "isalnum" || name == "isspace" || name == "islower" ||
        name == "isupper") {
      return m([](const std::string& s, A& a, Pos p, const std::string& nm) -> Value {
        bind(a, {}, "str." + nm + "()", p);
        if (nm == "upper") return Value(ascii_upper(s));
        if (nm == "lower") return Value(ascii_lower(s));
        if (nm == "title") return Value(py_title(s));
        if (nm == "capitalize") return Value(py_capitalize(s));
        if (nm == "splitlines") {
          std::vector<Value> items;
          for (auto& l : py_splitlines(s)) items.emplace_back(std::move(l));
          return make_list(std::move(items));
        }
        if (s.empty()) return Value(false);
        bool any_cased = false;
        for (unsigned char c : s) {
          bool digit = c >= '0' && c <= '9', alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
          if (nm == "isdigit" && !digit) return Value(false);
          if (nm == "isalpha" && !alpha) return Value(false);
          if (nm == "isalnum" && !digit && !alpha) return Value(false);
          if (nm == "isspace" && !(c == ' ' || (c >= 9 && c <= 13))) return Value(false);
          if (nm == "islower" && c >= 'A' && c <= 'Z') return Value(false);
          if (nm == "isupper" && c >= 'a' && c <= 'z') return Value(false);
          any_cased = any_cased || alpha;
        }
        return Value(nm == "islower" || nm == "isupper" ? any_cased : true);
      });
    }
    if (name == "split" || name == "rsplit") {
      bool right = name == "rsplit";
      return m([right, this](const std::string& s, A& a, Pos p, const std::string& nm) -> Value {
        Bound b = bind(a, {"sep", "maxsplit"}, "str." + nm + "()", p);
        auto sep = opt_str(b.get(0), "sep", p);
        if (sep && sep->empty()) error_at(p, "empty separator");
        int64_t maxsplit = opt_int(b.get(1), -1, "maxsplit", p);
        auto parts = right ? py_rsplit(s, sep, maxsplit) : py_split(s, sep, maxsplit);
        check_size(parts.size(), p);
        std::vector<Value> items;
        for (auto& x : parts) items.emplace_back(std::move(x));
        return make_list(std::move(items));
      });
    }
    if (name == "replace") {
      return m([this](const std::string& s, A& a, Pos p, const std::string&) -> Value {
        Bound b = bind(a, {"old", "new", "count"}, "str.replace()", p);
        auto from = opt_str(b.get(0), "old", p);
        auto to = opt_str(b.get(1), "new", p);
        if (!from || !to) error_at(p, "str.replace() needs two string arguments");
        int64_t count = opt_int(b.get(2), -1, "count", p);
        size_t est = s.size() + (to->size() > from->size() ? (to->size() - from->size() + 1) * (s.size() + 1) : 0);
        if (est > lim_.max_output_bytes) check_size(py_replace(s, *from, "", count).size() + to->size(), p);
        return str_value(py_replace(s, *from, *to, count), p);
      });
    }
    if (name == "find" || name == "rfind" || name == "count") {
      return m([](const std::string& s, A& a, Pos p, const std::string& nm) -> Value {
        Bound b = bind(a, {"sub"}, "str." + nm + "()", p);
        auto sub = opt_str(b.get(0), "sub", p);
        if (!sub) error_at(p, "str." + nm + "() needs a string argument");
        auto cp_index = [&](size_t byte) { return static_cast<int64_t>(codepoint_count(std::string_view(s).substr(0, byte))); };
        if (nm == "count") {
          if (sub->empty()) return Value(static_cast<int64_t>(codepoint_count(s)) + 1);
          int64_t c = 0;
          for (size_t i = s.find(*sub); i != std::string::npos; i = s.find(*sub, i + sub->size())) ++c;
          return Value(c);
        }
        size_t i = nm == "find" ? s.find(*sub) : s.rfind(*sub);
        return Value(i == std::string::npos ? int64_t{-1} : cp_index(i));
      });
    }
    if (name == "join") {
      return m([this](const std::string& s, A& a, Pos p, const std::string&) -> Value {
        Bound b = bind(a, {"iterable"}, "str.join()", p);
        if (!b.get(0)) error_at(p, "str.join() takes exactly one argument");
        std::string r;
        bool first = true;
        for (const auto& x : iterate(*b.get(0), p)) {
          if (!x.is_string()) error_at(p, fmt::format("sequence item: expected str instance, {} found", type_name(x)));
          if (!first) r += s;
          first = false;
          r += x.str();
          check_size(r.size(), p);
        }
        return Value(std::move(r));
      });
    }
    return Value(Undefined{});
  }

  Value dict_method(const DictPtr& d, const std::string& name, Pos p) {
    if (name == "items" || name == "keys" || name == "values") {
      return make_function(name, [d, name, p](CallArgs& a) -> Value {
        bind(a, {}, "dict." + name + "()", p);
        std::vector<Value> r;
        for (const auto& [k, v] : d->items) {
          if (name == "items") r.push_back(make_list({Value(k), v}, true));
          else if (name == "keys") r.emplace_back(k);
          else r.push_back(v);
        }
        return make_list(std::move(r));
      });
    }
    if (name == "get") {
      return make_function(name, [d, p](CallArgs& a) -> Value {
        Bound b = bind(a, {"key", "default"}, "dict.get()", p);
        if (!b.get(0)) error_at(p, "dict.get() needs a key");
        if (b.get(0)->is_string())
          if (const Value* v = d->find(b.get(0)->str())) return *v;
        return b.get(1) ? *b.get(1) : Value(None{});
      });
    }
    static const char* mutating[] = {"update", "pop", "popitem", "setdefault", "clear"};
    for (const char* m : mutating)
      if (name == m) error_at(p, fmt::format("dicts cannot be modified in a chat template ('{}')", name));
    return Value(Undefined{});
  }

  // ---- globals -----------------------------------------------------------------------------
  void install_globals() {
    globals_ = std::make_shared<Frame>();
    auto& g = globals_->vars;
    g["range"] = make_function("range", [](CallArgs& a) -> Value {
      Pos p{};
      if (!a.kw.empty() || a.pos.empty() || a.pos.size() > 3) error_at(p, "range() takes 1 to 3 integer arguments");
      std::vector<int64_t> v;
      for (const auto& x : a.pos) v.push_back(opt_int(&x, 0, "range() argument", p));
      int64_t start = 0, stop, step = 1;
      if (v.size() == 1) stop = v[0];
      else {
        start = v[0];
        stop = v[1];
        if (v.size() == 3) step = v[2];
      }
      if (step == 0) error_at(p, "range() arg 3 must not be zero");
      std::vector<Value> items;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        if (static_cast<int64_t>(items.size()) >= kMaxRange)
          fail("chat template: range() larger than {} items is not allowed", kMaxRange);
        items.emplace_back(i);
        if ((step > 0 && i > INT64_MAX - step) || (step < 0 && i < INT64_MIN - step)) break;
      }
      return make_list(std::move(items));
    });
    g["namespace"] = make_function("namespace", [](CallArgs& a) -> Value {
      Value ns = make_dict({}, Dict::Kind::Namespace);
      for (const auto& x : a.pos) {
        if (!x.is_dict() || x.dict()->kind != Dict::Kind::Plain) fail("chat template: namespace() takes a dict or keyword arguments");
        for (const auto& [k, v] : x.dict()->items) ns.dict()->set(k, v);
      }
      for (const auto& [k, v] : a.kw) ns.dict()->set(k, v);
      return ns;
    });
    g["dict"] = make_function("dict", [](CallArgs& a) -> Value {
      Value d = make_dict({});
      for (const auto& x : a.pos) {
        if (!x.is_dict()) fail("chat template: dict() takes a dict or keyword arguments");
        for (const auto& [k, v] : x.dict()->items) d.dict()->set(k, v);
      }
      for (const auto& [k, v] : a.kw) d.dict()->set(k, v);
      return d;
    });
    g["raise_exception"] = make_function("raise_exception", [](CallArgs& a) -> Value {
      std::string msg = a.pos.empty() ? std::string("raise_exception() called") : to_str(a.pos[0]);
      throw Error(msg);
    });
    g["strftime_now"] = make_function("strftime_now", [](CallArgs& a) -> Value {
      if (a.pos.size() != 1 || !a.pos[0].is_string()) fail("chat template: strftime_now() takes one format string");
      const std::string& f = a.pos[0].str();
      if (f.size() > 256) fail("chat template: strftime_now() format longer than 256 bytes");
      std::time_t now = std::time(nullptr);
      std::tm tm{};
      localtime_r(&now, &tm);
      std::string buf(4096, '\0');
      size_t n = std::strftime(buf.data(), buf.size(), f.c_str(), &tm);
      buf.resize(n);
      return Value(std::move(buf));
    });
  }

  // ---- tests -------------------------------------------------------------------------------
  bool apply_test(const std::string& name, const Value& v, CallArgs& a, Pos p) {
    auto arg = [&](const char* what) -> Value {
      Bound b = bind(a, {"other"}, fmt::format("test '{}'", name), p);
      if (!b.get(0)) error_at(p, fmt::format("test '{}' needs an argument ({})", name, what));
      return *b.get(0);
    };
    auto none_args = [&]() { bind(a, {}, fmt::format("test '{}'", name), p); };
    if (name == "defined") return none_args(), !v.is_undefined();
    if (name == "undefined") return none_args(), v.is_undefined();
    if (name == "none") return none_args(), v.is_none();
    if (name == "boolean") return none_args(), v.is_bool();
    if (name == "true") return none_args(), v.is_bool() && v.boolean();
    if (name == "false") return none_args(), v.is_bool() && !v.boolean();
    if (name == "integer") return none_args(), v.is_int();
    if (name == "float") return none_args(), v.is_float();
    if (name == "number") return none_args(), v.is_number();
    if (name == "string") return none_args(), v.is_string();
    if (name == "mapping") return none_args(), v.is_dict() && v.dict()->kind == Dict::Kind::Plain;
    if (name == "iterable") return none_args(), v.is_list() || v.is_string() || v.is_undefined() || (v.is_dict() && v.dict()->kind == Dict::Kind::Plain);
    if (name == "sequence") return none_args(), v.is_list() || v.is_string() || (v.is_dict() && v.dict()->kind == Dict::Kind::Plain);
    if (name == "callable") return none_args(), v.is_callable();
    if (name == "escaped") return none_args(), false;
    if (name == "lower") return none_args(), v.is_string() && ascii_lower(v.str()) == v.str();
    if (name == "upper") return none_args(), v.is_string() && ascii_upper(v.str()) == v.str();
    if (name == "odd" || name == "even") {
      none_args();
      if (!v.is_int() && !v.is_bool()) error_at(p, fmt::format("test '{}' needs an integer, not {}", name, type_name(v)));
      int64_t x = v.is_bool() ? v.boolean() : v.integer();
      return (x % 2 != 0) == (name == "odd");
    }
    if (name == "divisibleby") {
      const Value d = arg("the divisor");
      if (!(v.is_int() || v.is_bool()) || !(d.is_int() || d.is_bool()))
        error_at(p, "test 'divisibleby' needs integers");
      int64_t x = v.is_bool() ? v.boolean() : v.integer(), y = d.is_bool() ? d.boolean() : d.integer();
      if (y == 0) error_at(p, "division by zero");
      return y == -1 || x % y == 0;
    }
    if (name == "eq" || name == "equalto" || name == "==") return equals(v, arg("the value to compare"));
    if (name == "ne" || name == "!=") return !equals(v, arg("the value to compare"));
    if (name == "lt" || name == "lessthan" || name == "<") return compare(v, arg("the value to compare"), "<", p) < 0;
    if (name == "le" || name == "<=") return compare(v, arg("the value to compare"), "<=", p) <= 0;
    if (name == "gt" || name == "greaterthan" || name == ">") return compare(v, arg("the value to compare"), ">", p) > 0;
    if (name == "ge" || name == ">=") return compare(v, arg("the value to compare"), ">=", p) >= 0;
    if (name == "in") return contains(arg("the container"), v, p);
    if (name == "sameas") {
      const Value o = arg("the value to compare");
      if (v.is_list() && o.is_list()) return v.list() == o.list();
      if (v.is_dict() && o.is_dict()) return v.dict() == o.dict();
      // Python identity: singletons and (interned) small scalars compare by value.
      return !v.is_callable() && v.v.index() == o.v.index() && equals(v, o);
    }
    error_at(p, fmt::format("unknown test '{}'", name));
  }

  // ---- filters -----------------------------------------------------------------------------
  Value attribute_of(const Value& item, const Value& attr, Pos p) {
    // Jinja's make_attrgetter: dotted path, integer parts index lists.
    if (attr.is_int()) return get_item(item, attr, p);
    if (!attr.is_string()) error_at(p, "attribute must be a string");
    Value cur = item;
    const std::string& path = attr.str();
    size_t start = 0;
    while (true) {
      size_t dot = path.find('.', start);
      std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      bool numeric = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
      cur = numeric && part.size() < 18 ? get_item(cur, Value(static_cast<int64_t>(std::stoll(part))), p)
                                        : get_item(cur, Value(part), p);
      if (dot == std::string::npos) return cur;
      start = dot + 1;
    }
  }

  std::vector<Value> seq_arg(const Value& v, Pos p) { return iterate(v, p); }

  Value sort_key(const Value& v, bool case_sensitive) {
    if (!case_sensitive && v.is_string()) return Value(ascii_lower(v.str()));
    return v;
  }

  Value apply_filter(const std::string& name, const Value& v, CallArgs& a, Pos p) {
    const std::string what = fmt::format("filter '{}'", name);
    auto length = [&](const Value& x) -> int64_t {
      if (x.is_string()) return static_cast<int64_t>(codepoint_count(x.str()));
      if (x.is_list()) return static_cast<int64_t>(x.list()->items.size());
      if (x.is_dict()) return static_cast<int64_t>(x.dict()->items.size());
      if (x.is_undefined()) return 0;
      error_at(p, fmt::format("object of type '{}' has no len()", type_name(x)));
    };
    if (name == "safe") return bind(a, {}, what, p), v;
    if (name == "string") return bind(a, {}, what, p), Value(to_str(v));
    if (name == "length" || name == "count") return bind(a, {}, what, p), Value(length(v));
    if (name == "upper") return bind(a, {}, what, p), Value(ascii_upper(to_str(v)));
    if (name == "lower") return bind(a, {}, what, p), Value(ascii_lower(to_str(v)));
    if (name == "capitalize") return bind(a, {}, what, p), Value(py_capitalize(to_str(v)));
    if (name == "title") return bind(a, {}, what, p), Value(jinja_title(to_str(v)));
    if (name == "trim") {
      Bound b = bind(a, {"chars"}, what, p);
      return Value(py_strip(to_str(v), opt_str(b.get(0), "chars", p), true, true));
    }
    if (name == "escape" || name == "e") {
      bind(a, {}, what, p);
      std::string r;
      for (char c : to_str(v)) {
        switch (c) {
          case '&': r += "&amp;"; break;
          case '<': r += "&lt;"; break;
          case '>': r += "&gt;"; break;
          case '"': r += "&#34;"; break;
          case '\'': r += "&#39;"; break;
          default: r += c;
        }
      }
      return str_value(std::move(r), p);
    }
    if (name == "default" || name == "d") {
      Bound b = bind(a, {"default_value", "boolean"}, what, p);
      bool boolean = b.get(1) && b.get(1)->truthy();
      if (v.is_undefined() || (boolean && !v.truthy())) return b.get(0) ? *b.get(0) : Value(std::string());
      return v;
    }
    if (name == "first" || name == "last") {
      bind(a, {}, what, p);
      if (v.is_undefined()) error_at(p, undefined_message(v));
      std::vector<Value> items = iterate(v, p);
      if (items.empty()) return Value(Undefined{fmt::format("No {} item, sequence was empty.", name)});
      return name == "first" ? items.front() : items.back();
    }
    if (name == "reverse") {
      bind(a, {}, what, p);
      if (v.is_string()) {
        auto items = iterate(v, p);
        std::string r;
        for (auto it = items.rbegin(); it != items.rend(); ++it) r += it->str();
        return Value(std::move(r));
      }
      auto items = iterate(v, p);
      std::reverse(items.begin(), items.end());
      return make_list(std::move(items));
    }
    if (name == "list") return bind(a, {}, what, p), make_list(iterate(v, p));
    if (name == "items") {
      bind(a, {}, what, p);
      if (v.is_undefined()) return make_list({});
      if (!v.is_dict() || v.dict()->kind != Dict::Kind::Plain)
        error_at(p, fmt::format("can only get item pairs from a mapping, not {}", type_name(v)));
      std::vector<Value> r;
      for (const auto& [k, x] : v.dict()->items) r.push_back(make_list({Value(k), x}, true));
      return make_list(std::move(r));
    }
    if (name == "join") {
      Bound b = bind(a, {"d", "attribute"}, what, p);
      std::string sep = b.get(0) ? to_str(*b.get(0)) : "";
      std::string r;
      bool first = true;
      for (const auto& x : iterate(v, p)) {
        if (!first) r += sep;
        first = false;
        r += to_str(b.get(1) ? attribute_of(x, *b.get(1), p) : x);
        check_size(r.size(), p);
      }
      return Value(std::move(r));
    }
    if (name == "replace") {
      Bound b = bind(a, {"old", "new", "count"}, what, p);
      if (!b.get(0) || !b.get(1)) error_at(p, "filter 'replace' needs old and new strings");
      std::string s = to_str(v), from = to_str(*b.get(0)), to = to_str(*b.get(1));
      int64_t count = opt_int(b.get(2), -1, "count", p);
      if (s.size() + (to.size() + 1) * (s.size() + 1) > lim_.max_output_bytes)
        check_size(py_replace(s, from, "", count).size(), p);
      return str_value(py_replace(s, from, to, count), p);
    }
    if (name == "tojson") {
      // transformers' tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
      Bound b = bind(a, {"ensure_ascii", "indent", "separators", "sort_keys"}, what, p);
      JsonOptions opt;
      opt.ensure_ascii = b.get(0) && b.get(0)->truthy();
      if (const Value* ind = b.get(1); ind && !ind->is_none()) {
        if (ind->is_string()) opt.indent = ind->str();
        else opt.indent = std::string(static_cast<size_t>(std::clamp<int64_t>(opt_int(ind, 0, "indent", p), 0, 64)), ' ');
      }
      if (const Value* sep = b.get(2); sep && !sep->is_none()) {
        if (!sep->is_list() || sep->list()->items.size() != 2 || !sep->list()->items[0].is_string() ||
            !sep->list()->items[1].is_string())
          error_at(p, "tojson separators must be a pair of strings");
        opt.item_sep = sep->list()->items[0].str();
        opt.key_sep = sep->list()->items[1].str();
      } else if (opt.indent) {
        opt.item_sep = ",";
      }
      opt.sort_keys = b.get(3) && b.get(3)->truthy();
      std::string r;
      try {
        r = to_json(v, opt);
      } catch (const Error& err) {
        error_at(p, err.what());
      }
      return str_value(std::move(r), p);
    }
    if (name == "int") {
      Bound b = bind(a, {"default", "base"}, what, p);
      Value dflt = b.get(0) ? *b.get(0) : Value(int64_t{0});
      if (v.is_int()) return v;
      if (v.is_bool()) return Value(static_cast<int64_t>(v.boolean()));
      if (v.is_float()) {
        double d = std::get<double>(v.v);
        if (!std::isfinite(d) || std::fabs(d) >= 9.2e18) return dflt;
        return Value(static_cast<int64_t>(d));
      }
      if (v.is_string()) {
        std::string s = py_strip(v.str(), std::nullopt, true, true);
        int base = static_cast<int>(opt_int(b.get(1), 10, "base", p));
        if (base < 2 || base > 36) return dflt;
        errno = 0;
        char* end = nullptr;
        long long x = std::strtoll(s.c_str(), &end, base);
        if (!s.empty() && end == s.c_str() + s.size() && errno == 0) return Value(static_cast<int64_t>(x));
        end = nullptr;
        double d = std::strtod(s.c_str(), &end);
        if (!s.empty() && end == s.c_str() + s.size() && std::isfinite(d) && std::fabs(d) < 9.2e18)
          return Value(static_cast<int64_t>(d));
      }
      return dflt;
    }
    if (name == "float") {
      Bound b = bind(a, {"default"}, what, p);
      Value dflt = b.get(0) ? *b.get(0) : Value(0.0);
      if (v.is_number()) return Value(v.number());
      if (v.is_string()) {
        std::string s = py_strip(v.str(), std::nullopt, true, true);
        char* end = nullptr;
        double d = std::strtod(s.c_str(), &end);
        if (!s.empty() && end == s.c_str() + s.size()) return Value(d);
      }
      return dflt;
    }
    if (name == "abs") {
      bind(a, {}, what, p);
      if (v.is_float()) return Value(std::fabs(std::get<double>(v.v)));
      if (v.is_int() || v.is_bool()) {
        int64_t x = v.is_bool() ? v.boolean() : v.integer();
        if (x == INT64_MIN) error_at(p, "integer overflow");
        return Value(x < 0 ? -x : x);
      }
      error_at(p, fmt::format("bad operand type for abs(): '{}'", type_name(v)));
    }
    if (name == "round") {
      Bound b = bind(a, {"precision", "method"}, what, p);
      int64_t prec = std::clamp<int64_t>(opt_int(b.get(0), 0, "precision", p), -20, 20);
      std::string method = b.get(1) ? to_str(*b.get(1)) : "common";
      if (!v.is_number()) error_at(p, fmt::format("filter 'round' needs a number, not {}", type_name(v)));
      double x = v.number(), scale = std::pow(10.0, static_cast<double>(prec));
      double r;
      if (method == "common") r = std::nearbyint(x * scale) / scale;
      else if (method == "ceil") r = std::ceil(x * scale) / scale;
      else if (method == "floor") r = std::floor(x * scale) / scale;
      else error_at(p, "method must be 'common', 'ceil' or 'floor'");
      return Value(r);
    }
    if (name == "center") {
      Bound b = bind(a, {"width"}, what, p);
      std::string s = to_str(v);
      int64_t width = std::min<int64_t>(opt_int(b.get(0), 80, "width", p), static_cast<int64_t>(lim_.max_output_bytes));
      int64_t len = static_cast<int64_t>(codepoint_count(s));
      if (width <= len) return Value(s);
      int64_t pad = width - len, left = pad / 2 + (pad & width & 1);
      return str_value(std::string(static_cast<size_t>(left), ' ') + s + std::string(static_cast<size_t>(pad - left), ' '), p);
    }
    if (name == "indent") {
      Bound b = bind(a, {"width", "first", "blank"}, what, p);
      std::string ind = (b.get(0) && b.get(0)->is_string())
                            ? b.get(0)->str()
                            : std::string(static_cast<size_t>(std::clamp<int64_t>(opt_int(b.get(0), 4, "width", p), 0, 256)), ' ');
      bool first = b.get(1) && b.get(1)->truthy(), blank = b.get(2) && b.get(2)->truthy();
      auto lines = py_splitlines(to_str(v) + "\n");
      std::string r;
      for (size_t i = 0; i < lines.size(); ++i) {
        if (i) {
          r += "\n";
          if (blank || !lines[i].empty()) r += ind;
        }
        r += lines[i];
        check_size(r.size(), p);
      }
      if (first) r = ind + r;
      return str_value(std::move(r), p);
    }
    if (name == "wordcount") {
      bind(a, {}, what, p);
      std::string s = to_str(v);
      int64_t n = 0;
      bool in = false;
      for (unsigned char c : s) {
        bool w = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80;
        if (w && !in) ++n;
        in = w;
      }
      return Value(n);
    }
    if (name == "attr") {
      Bound b = bind(a, {"name"}, what, p);
      if (!b.get(0) || !b.get(0)->is_string()) error_at(p, "filter 'attr' needs an attribute name");
      return get_attr(v, b.get(0)->str(), p);
    }
    if (name == "map") {
      auto items = seq_arg(v, p);
      std::vector<Value> r;
      const Value* attribute = nullptr;
      const Value* dflt = nullptr;
      for (const auto& [k, x] : a.kw) {
        if (k == "attribute") attribute = &x;
        else if (k == "default") dflt = &x;
      }
      if (attribute) {
        for (const auto& it : items) {
          Value x = attribute_of(it, *attribute, p);
          r.push_back(x.is_undefined() && dflt ? *dflt : x);
        }
        return make_list(std::move(r));
      }
      if (a.pos.empty() || !a.pos[0].is_string()) error_at(p, "filter 'map' needs a filter name or attribute=");
      std::string fname = a.pos[0].str();
      CallArgs rest;
      rest.pos.assign(a.pos.begin() + 1, a.pos.end());
      rest.kw = a.kw;
      for (const auto& it : items) {
        step(p);
        r.push_back(apply_filter(fname, it, rest, p));
      }
      return make_list(std::move(r));
    }
    if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
      bool attr_mode = name == "selectattr" || name == "rejectattr";
      bool want = name == "select" || name == "selectattr";
      size_t k = 0;
      Value attribute;
      if (attr_mode) {
        if (a.pos.empty()) error_at(p, fmt::format("filter '{}' needs an attribute name", name));
        attribute = a.pos[k++];
      }
      std::optional<std::string> test;
      if (k < a.pos.size()) {
        if (!a.pos[k].is_string()) error_at(p, "test name must be a string");
        test = a.pos[k++].str();
      }
      CallArgs targs;
      targs.pos.assign(a.pos.begin() + static_cast<std::ptrdiff_t>(k), a.pos.end());
      targs.kw = a.kw;
      std::vector<Value> r;
      for (const auto& it : seq_arg(v, p)) {
        step(p);
        Value x = attr_mode ? attribute_of(it, attribute, p) : it;
        bool ok = test ? apply_test(*test, x, targs, p) : x.truthy();
        if (ok == want) r.push_back(it);
      }
      return make_list(std::move(r));
    }
    if (name == "unique") {
      Bound b = bind(a, {"case_sensitive", "attribute"}, what, p);
      bool cs = b.get(0) && b.get(0)->truthy();
      std::vector<Value> r, seen;
      for (const auto& it : seq_arg(v, p)) {
        Value key = sort_key(b.get(1) ? attribute_of(it, *b.get(1), p) : it, cs);
        bool dup = false;
        for (const auto& s : seen) {
          step(p);
          if (equals(s, key)) {
            dup = true;
            break;
          }
        }
        if (!dup) {
          seen.push_back(key);
          r.push_back(it);
        }
      }
      return make_list(std::move(r));
    }
    if (name == "sort" || name == "min" || name == "max") {
      bool is_sort = name == "sort";
      Bound b = is_sort ? bind(a, {"reverse", "case_sensitive", "attribute"}, what, p)
                        : bind(a, {"case_sensitive", "attribute"}, what, p);
      bool reverse = is_sort && b.get(0) && b.get(0)->truthy();
      const Value* cs_v = b.get(is_sort ? 1 : 0);
      const Value* attr = b.get(is_sort ? 2 : 1);
      bool cs = cs_v && cs_v->truthy();
      auto items = seq_arg(v, p);
      std::vector<std::pair<Value, Value>> keyed;
      for (const auto& it : items) keyed.emplace_back(sort_key(attr ? attribute_of(it, *attr, p) : it, cs), it);
      auto less = [&](const auto& x, const auto& y) { return compare(x.first, y.first, "<", p) < 0; };
      if (!is_sort) {
        if (keyed.empty()) return Value(Undefined{"No aggregated item, sequence was empty."});
        auto it = name == "min" ? std::min_element(keyed.begin(), keyed.end(), less)
                                : std::max_element(keyed.begin(), keyed.end(), less);
        return it->second;
      }
      std::stable_sort(keyed.begin(), keyed.end(), less);
      if (reverse) std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) { return less(y, x); });
      std::vector<Value> r;
      for (auto& kv : keyed) r.push_back(std::move(kv.second));
      return make_list(std::move(r));
    }
    if (name == "dictsort") {
      Bound b = bind(a, {"case_sensitive", "by", "reverse"}, what, p);
      if (!v.is_dict()) error_at(p, "filter 'dictsort' needs a dict");
      bool cs = b.get(0) && b.get(0)->truthy();
      std::string by = b.get(1) ? to_str(*b.get(1)) : "key";
      if (by != "key" && by != "value") error_at(p, "You can only sort by either \"key\" or \"value\"");
      bool reverse = b.get(2) && b.get(2)->truthy();
      auto items = v.dict()->items;
      auto key = [&](const std::pair<std::string, Value>& kv) { return sort_key(by == "key" ? Value(kv.first) : kv.second, cs); };
      std::stable_sort(items.begin(), items.end(), [&](const auto& x, const auto& y) {
        int c = compare(key(x), key(y), "<", p);
        return reverse ? c > 0 : c < 0;
      });
      std::vector<Value> r;
      for (auto& [k, x] : items) r.push_back(make_list({Value(k), x}, true));
      return make_list(std::move(r));
    }
    if (name == "sum") {
      Bound b = bind(a, {"attribute", "start"}, what, p);
      Value total = b.get(1) ? *b.get(1) : Value(int64_t{0});
      for (const auto& it : seq_arg(v, p)) total = binary("+", total, b.get(0) ? attribute_of(it, *b.get(0), p) : it, p);
      return total;
    }
    error_at(p, fmt::format("unknown filter '{}'", name));
  }

  const RenderLimits& lim_;
  FramePtr globals_;
  std::string* out_ = nullptr;
  uint64_t steps_ = 0;
  int call_depth_ = 0;
};

}  // namespace

std::string render_template(const Body& body, const Value& context, const RenderLimits& limits) {
  Renderer r(limits);
  return r.run(body, context);
}

}  // namespace onebit::jinja
