#include "core/template/template_parser.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "core/base/error.h"
#include "core/template/template_text.h"

namespace onebit::jinja {
namespace {

struct Token {
  enum class Type { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };
  Type type;
  Pos pos;
  std::string s;  // text, name, string value or operator
  int64_t i = 0;
  double f = 0;
};

std::string describe(const Token& t) {
  switch (t.type) {
    case Token::Type::Text: return "template text";
    case Token::Type::VarBegin: return "'{{'";
    case Token::Type::VarEnd: return "'}}'";
    case Token::Type::BlockBegin: return "'{%'";
    case Token::Type::BlockEnd: return "'%}'";
    case Token::Type::Name: return "'" + t.s + "'";
    case Token::Type::String: return "a string";
    case Token::Type::Int:
    case Token::Type::Float: return "a number";
    case Token::Type::Op: return "'" + t.s + "'";
    case Token::Type::Eof: return "end of template";
  }
  return "?";
}

// Python newline normalisation of the whole source, then keep_trailing_newline=False.
std::string normalise(std::string_view src) {
  std::string out;
  out.reserve(src.size());
  for (size_t i = 0; i < src.size(); ++i) {
    if (src[i] == '\r') {
      out += '\n';
      if (i + 1 < src.size() && src[i + 1] == '\n') ++i;
    } else {
      out += src[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string src) : src_(std::move(src)) {
    line_starts_.push_back(0);
    for (size_t i = 0; i < src_.size(); ++i)
      if (src_[i] == '\n') line_starts_.push_back(i + 1);
  }

  std::vector<Token> run() {
    size_t p = 0;
    bool line_starting = true;
    const size_t n = src_.size();
    while (p < n) {
      size_t t = find_tag(p);
      std::string text = src_.substr(p, (t == std::string::npos ? n : t) - p);
      if (t == std::string::npos) {
        emit_text(text, p);
        break;
      }
      char kind = src_[t + 1];
      char sign = (t + 2 < n && (src_[t + 2] == '-' || src_[t + 2] == '+')) ? src_[t + 2] : 0;
      if (sign == '-') {
        text = py_strip(text, std::nullopt, false, true);
      } else if (sign != '+' && kind != '{') {
        size_t l_pos = text.rfind('\n');
        l_pos = (l_pos == std::string::npos) ? 0 : l_pos + 1;
        if ((l_pos > 0 || line_starting) && text.size() > l_pos && all_space(std::string_view(text).substr(l_pos)))
          text.resize(l_pos);
      }
      emit_text(text, p);
      size_t q = t + 2 + (sign ? 1 : 0);
      if (kind == '#') {
        size_t e = src_.find("#}", q);
        if (e == std::string::npos) fail("chat template {}: comment '{{#' is never closed", where(t));
        char end_sign = (e > q && (src_[e - 1] == '-' || src_[e - 1] == '+')) ? src_[e - 1] : 0;
        p = after_end(e + 2, end_sign, true);
      } else {
        p = lex_tag(t, q, kind);
      }
      line_starting = p > 0 && src_[p - 1] == '\n';
    }
    toks_.push_back(Token{Token::Type::Eof, pos_of(n), "", 0, 0});
    return std::move(toks_);
  }

  Pos pos_of(size_t off) const {
    auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), off);
    size_t line = static_cast<size_t>(it - line_starts_.begin());
    return Pos{static_cast<int>(line), static_cast<int>(off - line_starts_[line - 1] + 1)};
  }

 private:
  std::string where(size_t off) const {
    Pos p = pos_of(off);
    return fmt::format("line {}, column {}", p.line, p.col);
  }

  static bool all_space(std::string_view s) {
    size_t i = 0;
    while (i < s.size()) {
      size_t len;
      if (!is_py_space(utf8_decode(s, i, &len))) return false;
      i += len;
    }
    return true;
  }

  size_t find_tag(size_t p) const {
    while (true) {
      size_t t = src_.find('{', p);
      if (t == std::string::npos || t + 1 >= src_.size()) return std::string::npos;
      char c = src_[t + 1];
      if (c == '{' || c == '%' || c == '#') return t;
      p = t + 1;
    }
  }

  // Position after an end delimiter: '-' eats all following whitespace, trim_blocks one newline.
  size_t after_end(size_t p, char end_sign, bool trim_newline) const {
    if (end_sign == '-') {
      while (p < src_.size()) {
        size_t len;
        if (!is_py_space(utf8_decode(src_, p, &len))) break;
        p += len;
      }
    } else if (end_sign != '+' && trim_newline && p < src_.size() && src_[p] == '\n') {
      ++p;
    }
    return p;
  }

  void emit_text(const std::string& text, size_t off) {
    if (!text.empty()) toks_.push_back(Token{Token::Type::Text, pos_of(off), text, 0, 0});
  }

  void push(Token::Type type, size_t off, std::string s = {}) {
    toks_.push_back(Token{type, pos_of(off), std::move(s), 0, 0});
  }

  size_t lex_tag(size_t t, size_t q, char kind) {
    const size_t n = src_.size();
    size_t first_tok = toks_.size();
    push(kind == '{' ? Token::Type::VarBegin : Token::Type::BlockBegin, t);
    std::vector<char> balance;
    size_t p = q;
    while (true) {
      while (p < n && (src_[p] == ' ' || src_[p] == '\t' || src_[p] == '\n' || src_[p] == '\r' || src_[p] == '\f' ||
                       src_[p] == '\v'))
        ++p;
      if (p >= n)
        fail("chat template {}: tag is never closed, expected '{}'", where(t), kind == '{' ? "}}" : "%}");
      if (balance.empty()) {
        const char* close = kind == '{' ? "}}" : "%}";
        char end_sign = 0;
        size_t len = 0;
        if ((src_[p] == '-' || (src_[p] == '+' && kind == '%')) && src_.compare(p + 1, 2, close) == 0) {
          end_sign = src_[p];
          len = 3;
        } else if (src_.compare(p, 2, close) == 0) {
          len = 2;
        }
        if (len) {
          push(kind == '{' ? Token::Type::VarEnd : Token::Type::BlockEnd, p);
          size_t after = after_end(p + len, end_sign, kind == '%');
          if (kind == '%' && toks_.size() == first_tok + 3 && toks_[first_tok + 1].type == Token::Type::Name &&
              toks_[first_tok + 1].s == "raw") {
            toks_.resize(first_tok);
            return lex_raw(t, p + len);
          }
          return after;
        }
      }
      p = lex_token(p, balance);
    }
  }

  // {% raw %}...{% endraw %}: the content is text, verbatim.
  size_t lex_raw(size_t t, size_t p) {
    size_t s = p;
    while (true) {
      size_t b = src_.find("{%", s);
      if (b == std::string::npos) fail("chat template {}: '{{% raw %}}' is never closed by '{{% endraw %}}'", where(t));
      size_t k = b + 2;
      char sign = 0;
      if (k < src_.size() && (src_[k] == '-' || src_[k] == '+')) sign = src_[k++];
      while (k < src_.size() && (src_[k] == ' ' || src_[k] == '\t' || src_[k] == '\n')) ++k;
      if (src_.compare(k, 6, "endraw") != 0) {
        s = b + 2;
        continue;
      }
      k += 6;
      while (k < src_.size() && (src_[k] == ' ' || src_[k] == '\t' || src_[k] == '\n')) ++k;
      char end_sign = 0;
      if (k < src_.size() && (src_[k] == '-' || src_[k] == '+')) end_sign = src_[k++];
      if (src_.compare(k, 2, "%}") != 0) {
        s = b + 2;
        continue;
      }
      std::string text = src_.substr(p, b - p);
      if (sign == '-') text = py_strip(text, std::nullopt, false, true);
      emit_text(text, p);
      return after_end(k + 2, end_sign, true);
    }
  }

  size_t lex_token(size_t p, std::vector<char>& balance) {
    const size_t n = src_.size();
    char c = src_[p];
    auto is_digit = [](char ch) { return ch >= '0' && ch <= '9'; };
    auto is_name_start = [](char ch) { return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_'; };
    if (is_name_start(c)) {
      size_t e = p;
      while (e < n && (is_name_start(src_[e]) || is_digit(src_[e]))) ++e;
      push(Token::Type::Name, p, src_.substr(p, e - p));
      return e;
    }
    if (is_digit(c)) return lex_number(p);
    if (c == '\'' || c == '"') return lex_string(p);
    static const char* two[] = {"//", "**", "==", "!=", "<=", ">="};
    for (const char* op : two) {
      if (src_.compare(p, 2, op) == 0) {
        push(Token::Type::Op, p, op);
        return p + 2;
      }
    }
    if (std::strchr("+-*/%~<>=()[]{},.:|;", c) == nullptr)
      fail("chat template {}: unexpected character '{}'", where(p), std::string(1, c));
    if (c == '(' || c == '[' || c == '{') {
      balance.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
    } else if (c == ')' || c == ']' || c == '}') {
      if (balance.empty() || balance.back() != c)
        fail("chat template {}: unexpected '{}'", where(p), std::string(1, c));
      balance.pop_back();
    }
    push(Token::Type::Op, p, std::string(1, c));
    return p + 1;
  }

  size_t lex_number(size_t p) {
    const size_t n = src_.size();
    auto digits = [&](size_t i) {  // (\d+_)*\d+ ; returns end or i when none
      size_t e = i;
      while (true) {
        size_t s = e;
        while (e < n && src_[e] >= '0' && src_[e] <= '9') ++e;
        if (e == s) return s == i ? i : s - 1;  // dangling '_' is not part of the number
        if (e < n && src_[e] == '_' && e + 1 < n && src_[e + 1] >= '0' && src_[e + 1] <= '9') {
          ++e;
          continue;
        }
        return e;
      }
    };
    size_t e = digits(p);
    bool is_float = false;
    if (e < n && src_[e] == '.' && e + 1 < n && src_[e + 1] >= '0' && src_[e + 1] <= '9') {
      e = digits(e + 1);
      is_float = true;
    }
    if (e < n && (src_[e] == 'e' || src_[e] == 'E')) {
      size_t k = e + 1;
      if (k < n && (src_[k] == '+' || src_[k] == '-')) ++k;
      size_t d = digits(k);
      if (d > k) {
        e = d;
        is_float = true;
      }
    }
    std::string text;
    for (size_t i = p; i < e; ++i)
      if (src_[i] != '_') text += src_[i];
    Token tok{is_float ? Token::Type::Float : Token::Type::Int, pos_of(p), text, 0, 0};
    if (is_float) {
      tok.f = std::strtod(text.c_str(), nullptr);
    } else {
      errno = 0;
      char* end = nullptr;
      long long v = std::strtoll(text.c_str(), &end, 10);
      if (errno == ERANGE) fail("chat template {}: integer {} is too large", where(p), text);
      tok.i = v;
    }
    toks_.push_back(std::move(tok));
    return e;
  }

  size_t lex_string(size_t p) {
    const size_t n = src_.size();
    char q = src_[p];
    std::string out;
    size_t i = p + 1;
    auto hex = [&](size_t at, int count) -> uint32_t {
      uint32_t v = 0;
      for (int k = 0; k < count; ++k) {
        if (at + static_cast<size_t>(k) >= n) fail("chat template {}: truncated escape in string", where(at));
        char h = src_[at + static_cast<size_t>(k)];
        int d = (h >= '0' && h <= '9') ? h - '0' : (h >= 'a' && h <= 'f') ? h - 'a' + 10 : (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
        if (d < 0) fail("chat template {}: bad escape in string, expected a hex digit", where(at));
        v = v * 16 + static_cast<uint32_t>(d);
      }
      return v;
    };
    while (true) {
      if (i >= n) fail("chat template {}: string is never closed, expected {}", where(p), std::string(1, q));
      char c = src_[i];
      if (c == q) break;
      if (c != '\\') {
        out += c;
        ++i;
        continue;
      }
      if (i + 1 >= n) fail("chat template {}: string is never closed", where(p));
      char e = src_[i + 1];
      i += 2;
      switch (e) {
        case '\n': break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'v': out += '\v'; break;
        case 'x': utf8_append(out, hex(i, 2)); i += 2; break;
        case 'u': utf8_append(out, hex(i, 4)); i += 4; break;
        case 'U': {
          uint32_t cp = hex(i, 8);
          if (cp > 0x10ffff) fail("chat template {}: escape \\U{:08x} is not a code point", where(i), cp);
          utf8_append(out, cp);
          i += 8;
          break;
        }
        default:
          if (e >= '0' && e <= '7') {
            uint32_t v = static_cast<uint32_t>(e - '0');
            for (int k = 0; k < 2 && i < n && src_[i] >= '0' && src_[i] <= '7'; ++k, ++i) v = v * 8 + static_cast<uint32_t>(src_[i] - '0');
            utf8_append(out, v);
          } else {  // unknown escapes stay as written, as in Python
            out += '\\';
            out += e;
          }
      }
    }
    push(Token::Type::String, p, std::move(out));
    return i + 1;
  }

  std::string src_;
  std::vector<size_t> line_starts_;
  std::vector<Token> toks_;
};

class Parser {
 public:
  Parser(std::vector<Token> toks, const ParseLimits& limits) : toks_(std::move(toks)), limits_(limits) {}

  Body parse_all() {
    Body body = parse_body({});
    if (cur().type != Token::Type::Eof) error_expected("end of template");
    return body;
  }

 private:
  struct Guard {
    Guard(Parser& p) : p_(p) {
      if (++p_.depth_ > p_.limits_.max_depth)
        p_.error(p_.cur().pos, fmt::format("nesting deeper than {} levels", p_.limits_.max_depth));
    }
    ~Guard() { --p_.depth_; }
    Parser& p_;
  };

  const Token& cur() const { return toks_[i_]; }
  const Token& peek(size_t k = 1) const { return toks_[std::min(i_ + k, toks_.size() - 1)]; }
  void advance() {
    if (i_ + 1 < toks_.size()) ++i_;
  }
  bool is_op(const char* op) const { return cur().type == Token::Type::Op && cur().s == op; }
  bool is_name(const char* name) const { return cur().type == Token::Type::Name && cur().s == name; }

  [[noreturn]] void error(Pos p, const std::string& msg) const {
    fail("chat template line {}, column {}: {}", p.line, p.col, msg);
  }
  [[noreturn]] void error_expected(const std::string& what) const {
    error(cur().pos, fmt::format("expected {} but found {}", what, describe(cur())));
  }
  void expect_op(const char* op) {
    if (!is_op(op)) error_expected(fmt::format("'{}'", op));
    advance();
  }
  void expect_type(Token::Type t, const char* what) {
    if (cur().type != t) error_expected(what);
    advance();
  }
  std::string expect_name() {
    if (cur().type != Token::Type::Name) error_expected("a name");
    std::string s = cur().s;
    advance();
    return s;
  }

  // Parses nodes until a block tag whose name is in `ends` (left unconsumed) or end of input.
  Body parse_body(const std::set<std::string>& ends) {
    Guard g(*this);
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == Token::Type::Eof) {
        if (!ends.empty()) {
          std::string list;
          for (const auto& e : ends) list += (list.empty() ? "'" : " or '") + e + "'";
          error(t.pos, fmt::format("unexpected end of template, expected {}", list));
        }
        return body;
      }
      if (t.type == Token::Type::Text) {
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::Text;
        n->pos = t.pos;
        n->text = t.s;
        body.push_back(std::move(n));
        advance();
      } else if (t.type == Token::Type::VarBegin) {
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::Output;
        n->pos = t.pos;
        advance();
        n->expr = parse_tuple();
        expect_type(Token::Type::VarEnd, "'}}'");
        body.push_back(std::move(n));
      } else if (t.type == Token::Type::BlockBegin) {
        const Token& name = peek();
        if (name.type == Token::Type::Name && ends.count(name.s)) return body;
        advance();
        body.push_back(parse_statement(t.pos));
      } else {
        error_expected("template text or a tag");
      }
    }
  }

  void end_tag(const char* name) {
    if (cur().type != Token::Type::BlockBegin || peek().type != Token::Type::Name || peek().s != name)
      error_expected(fmt::format("'{{% {} %}}'", name));
    advance();
    advance();
    expect_type(Token::Type::BlockEnd, "'%}'");
  }

  NodePtr parse_statement(Pos pos) {
    if (cur().type != Token::Type::Name) error_expected("a tag name");
    std::string tag = cur().s;
    Pos tag_pos = cur().pos;
    advance();
    auto n = std::make_unique<Node>();
    n->pos = pos;
    if (tag == "if") {
      n->kind = Node::Kind::If;
      auto cond = parse_tuple();
      expect_type(Token::Type::BlockEnd, "'%}'");
      while (true) {
        Body b = parse_body({"elif", "else", "endif"});
        n->branches.emplace_back(std::move(cond), std::move(b));
        advance();  // '{%'
        std::string which = cur().s;
        advance();
        if (which == "elif") {
          cond = parse_tuple();
          expect_type(Token::Type::BlockEnd, "'%}'");
          continue;
        }
        expect_type(Token::Type::BlockEnd, "'%}'");
        if (which == "else") {
          n->else_body = parse_body({"endif"});
          end_tag("endif");
        }
        break;
      }
    } else if (tag == "for") {
      n->kind = Node::Kind::For;
      bool paren = is_op("(");
      if (paren) advance();
      n->targets.push_back(expect_name());
      while (is_op(",")) {
        advance();
        if (is_name("in") || is_op(")")) break;
        n->targets.push_back(expect_name());
      }
      if (paren) expect_op(")");
      if (!is_name("in")) error_expected("'in'");
      advance();
      n->expr = parse_tuple(/*with_condexpr=*/false);
      if (is_name("if")) {
        advance();
        n->loop_filter = parse_expression();
      }
      if (is_name("recursive")) error(cur().pos, "recursive loops are not supported");
      expect_type(Token::Type::BlockEnd, "'%}'");
      ++loop_depth_;
      n->body = parse_body({"else", "endfor"});
      --loop_depth_;
      if (peek().s == "else") {
        advance();
        advance();
        expect_type(Token::Type::BlockEnd, "'%}'");
        n->else_body = parse_body({"endfor"});
      }
      end_tag("endfor");
    } else if (tag == "set") {
      n->targets.push_back(expect_name());
      if (is_op(".")) {
        advance();
        n->attr = expect_name();
      } else {
        while (is_op(",")) {
          advance();
          n->targets.push_back(expect_name());
        }
      }
      if (is_op("=")) {
        advance();
        n->kind = Node::Kind::Set;
        n->expr = parse_tuple();
        expect_type(Token::Type::BlockEnd, "'%}'");
      } else {
        if (!n->attr.empty() || n->targets.size() != 1) error_expected("'='");
        n->kind = Node::Kind::SetBlock;
        expect_type(Token::Type::BlockEnd, "'%}'");
        n->body = parse_body({"endset"});
        end_tag("endset");
      }
    } else if (tag == "macro") {
      n->kind = Node::Kind::Macro;
      n->name = expect_name();
      expect_op("(");
      while (!is_op(")")) {
        MacroParam p;
        p.name = expect_name();
        if (is_op("=")) {
          advance();
          p.default_value = parse_expression();
        }
        n->params.push_back(std::move(p));
        if (!is_op(",")) break;
        advance();
      }
      expect_op(")");
      expect_type(Token::Type::BlockEnd, "'%}'");
      int saved = loop_depth_;
      loop_depth_ = 0;
      n->body = parse_body({"endmacro"});
      loop_depth_ = saved;
      end_tag("endmacro");
    } else if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) error(tag_pos, fmt::format("'{}' outside of a for loop", tag));
      n->kind = tag == "break" ? Node::Kind::Break : Node::Kind::Continue;
      expect_type(Token::Type::BlockEnd, "'%}'");
    } else if (tag == "generation") {
      n->kind = Node::Kind::Generation;
      expect_type(Token::Type::BlockEnd, "'%}'");
      n->body = parse_body({"endgeneration"});
      end_tag("endgeneration");
    } else {
      error(tag_pos, fmt::format("unknown or unsupported tag '{}'", tag));
    }
    return n;
  }

  ExprPtr make(Expr::Kind k, Pos p) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->pos = p;
    return e;
  }

  // Computes the node's height from its children; chains like a+b+c+... or x|f|f|f are built
  // iteratively, so this (not the recursion guard) is what bounds them.
  ExprPtr seal(ExprPtr e) {
    int h = 0;
    for (const auto& a : e->args)
      if (a) h = std::max(h, a->height);
    for (const auto& kv : e->kwargs) h = std::max(h, kv.second->height);
    e->height = h + 1;
    if (e->height > 4 * limits_.max_depth)
      error(e->pos, fmt::format("expression nested deeper than {} levels", 4 * limits_.max_depth));
    return e;
  }

  // expression (',' expression)* -> a tuple when there is a comma.
  ExprPtr parse_tuple(bool with_condexpr = true) {
    Pos p = cur().pos;
    ExprPtr first = parse_expression(with_condexpr);
    if (!is_op(",")) return first;
    auto t = make(Expr::Kind::TupleLit, p);
    t->args.push_back(std::move(first));
    while (is_op(",")) {
      advance();
      if (cur().type == Token::Type::VarEnd || cur().type == Token::Type::BlockEnd || is_op(")") || is_name("if"))
        break;
      t->args.push_back(parse_expression(with_condexpr));
    }
    return seal(std::move(t));
  }

  ExprPtr parse_expression(bool with_condexpr = true) {
    Guard g(*this);
    return with_condexpr ? parse_condexpr() : parse_or();
  }

  ExprPtr parse_condexpr() {
    Pos p = cur().pos;
    ExprPtr e = parse_or();
    while (is_name("if")) {
      advance();
      auto c = make(Expr::Kind::Cond, p);
      c->args.push_back(parse_or());
      c->args.push_back(std::move(e));
      if (is_name("else")) {
        advance();
        c->args.push_back(parse_condexpr());
      } else {
        c->args.push_back(nullptr);
      }
      e = seal(std::move(c));
    }
    return e;
  }

  ExprPtr binary(Expr::Kind k, ExprPtr l, ExprPtr r, Pos p, std::string op = {}) {
    auto e = make(k, p);
    e->name = std::move(op);
    e->args.push_back(std::move(l));
    e->args.push_back(std::move(r));
    return seal(std::move(e));
  }

  ExprPtr parse_or() {
    Pos p = cur().pos;
    ExprPtr l = parse_and();
    while (is_name("or")) {
      advance();
      l = binary(Expr::Kind::Or, std::move(l), parse_and(), p);
    }
    return l;
  }

  ExprPtr parse_and() {
    Pos p = cur().pos;
    ExprPtr l = parse_not();
    while (is_name("and")) {
      advance();
      l = binary(Expr::Kind::And, std::move(l), parse_not(), p);
    }
    return l;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      Guard g(*this);
      Pos p = cur().pos;
      advance();
      auto e = make(Expr::Kind::Not, p);
      e->args.push_back(parse_not());
      return seal(std::move(e));
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    Pos p = cur().pos;
    ExprPtr first = parse_math1();
    std::unique_ptr<Expr> cmp;
    while (true) {
      std::string op;
      if (cur().type == Token::Type::Op &&
          (cur().s == "==" || cur().s == "!=" || cur().s == "<" || cur().s == "<=" || cur().s == ">" || cur().s == ">=")) {
        op = cur().s;
        advance();
      } else if (is_name("in")) {
        op = "in";
        advance();
      } else if (is_name("not") && peek().type == Token::Type::Name && peek().s == "in") {
        op = "notin";
        advance();
        advance();
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(Expr::Kind::Compare, p);
        cmp->args.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(parse_math1());
    }
    return cmp ? seal(std::move(cmp)) : std::move(first);
  }

  ExprPtr parse_math1() {
    Pos p = cur().pos;
    ExprPtr l = parse_concat();
    while (is_op("+") || is_op("-")) {
      std::string op = cur().s;
      advance();
      l = binary(Expr::Kind::Binary, std::move(l), parse_concat(), p, op);
    }
    return l;
  }

  ExprPtr parse_concat() {
    Pos p = cur().pos;
    ExprPtr l = parse_math2();
    while (is_op("~")) {
      advance();
      l = binary(Expr::Kind::Binary, std::move(l), parse_math2(), p, "~");
    }
    return l;
  }

  ExprPtr parse_math2() {
    Pos p = cur().pos;
    ExprPtr l = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      std::string op = cur().s;
      advance();
      l = binary(Expr::Kind::Binary, std::move(l), parse_pow(), p, op);
    }
    return l;
  }

  ExprPtr parse_pow() {
    Pos p = cur().pos;
    ExprPtr l = parse_unary();
    while (is_op("**")) {
      advance();
      l = binary(Expr::Kind::Binary, std::move(l), parse_unary(), p, "**");
    }
    return l;
  }

  ExprPtr parse_unary(bool with_filter = true) {
    Guard g(*this);
    Pos p = cur().pos;
    ExprPtr node;
    if (is_op("-") || is_op("+")) {
      bool neg = is_op("-");
      advance();
      node = make(neg ? Expr::Kind::Neg : Expr::Kind::Pos, p);
      node->args.push_back(parse_unary(false));
      node = seal(std::move(node));
    } else {
      node = parse_primary();
    }
    node = parse_postfix(std::move(node));
    if (with_filter) node = parse_filter_expr(std::move(node));
    return node;
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    Pos p = t.pos;
    switch (t.type) {
      case Token::Type::Name: {
        auto e = make(Expr::Kind::Const, p);
        if (t.s == "true" || t.s == "True") e->value = Value(true);
        else if (t.s == "false" || t.s == "False") e->value = Value(false);
        else if (t.s == "none" || t.s == "None") e->value = Value(None{});
        else {
          e->kind = Expr::Kind::Name;
          e->name = t.s;
        }
        advance();
        return e;
      }
      case Token::Type::String: {
        std::string s;
        while (cur().type == Token::Type::String) {
          s += cur().s;
          advance();
        }
        auto e = make(Expr::Kind::Const, p);
        e->value = Value(std::move(s));
        return e;
      }
      case Token::Type::Int:
      case Token::Type::Float: {
        auto e = make(Expr::Kind::Const, p);
        e->value = t.type == Token::Type::Int ? Value(t.i) : Value(t.f);
        advance();
        return e;
      }
      case Token::Type::Op:
        if (t.s == "(") {
          advance();
          if (is_op(")")) {
            advance();
            return make(Expr::Kind::TupleLit, p);
          }
          ExprPtr first = parse_expression();
          if (is_op(")")) {
            advance();
            return first;
          }
          auto tup = make(Expr::Kind::TupleLit, p);
          tup->args.push_back(std::move(first));
          while (is_op(",")) {
            advance();
            if (is_op(")")) break;
            tup->args.push_back(parse_expression());
          }
          expect_op(")");
          return seal(std::move(tup));
        }
        if (t.s == "[") {
          advance();
          auto l = make(Expr::Kind::ListLit, p);
          while (!is_op("]")) {
            l->args.push_back(parse_expression());
            if (!is_op(",")) break;
            advance();
          }
          expect_op("]");
          return seal(std::move(l));
        }
        if (t.s == "{") {
          advance();
          auto d = make(Expr::Kind::DictLit, p);
          while (!is_op("}")) {
            d->args.push_back(parse_expression());
            expect_op(":");
            d->args.push_back(parse_expression());
            if (!is_op(",")) break;
            advance();
          }
          expect_op("}");
          return seal(std::move(d));
        }
        break;
      default:
        break;
    }
    error_expected("an expression");
  }

  void parse_call_args(Expr& e) {
    expect_op("(");
    while (!is_op(")")) {
      if (cur().type == Token::Type::Name && peek().type == Token::Type::Op && peek().s == "=") {
        std::string k = cur().s;
        advance();
        advance();
        e.kwargs.emplace_back(k, parse_expression());
      } else {
        if (!e.kwargs.empty()) error(cur().pos, "positional argument after keyword argument");
        e.args.push_back(parse_expression());
      }
      if (!is_op(",")) break;
      advance();
    }
    expect_op(")");
  }

  ExprPtr parse_postfix(ExprPtr node) {
    while (true) {
      Pos p = cur().pos;
      if (is_op(".")) {
        advance();
        if (cur().type == Token::Type::Int) {
          auto e = make(Expr::Kind::GetItem, p);
          auto idx = make(Expr::Kind::Const, p);
          idx->value = Value(cur().i);
          advance();
          e->args.push_back(std::move(node));
          e->args.push_back(std::move(idx));
          node = seal(std::move(e));
        } else {
          auto e = make(Expr::Kind::GetAttr, p);
          e->name = expect_name();
          e->args.push_back(std::move(node));
          node = seal(std::move(e));
        }
      } else if (is_op("[")) {
        advance();
        ExprPtr parts[3];
        bool slice = false;
        int k = 0;
        while (true) {
          if (is_op(":")) {
            slice = true;
            advance();
            if (++k > 2) error(cur().pos, "a slice takes at most three parts");
            continue;
          }
          if (is_op("]")) break;
          if (parts[k]) error_expected("':' or ']'");
          parts[k] = parse_expression();
        }
        expect_op("]");
        if (!slice && !parts[0]) error(p, "empty subscript");
        auto e = make(slice ? Expr::Kind::Slice : Expr::Kind::GetItem, p);
        e->args.push_back(std::move(node));
        if (slice) {
          for (auto& part : parts) e->args.push_back(std::move(part));
        } else {
          e->args.push_back(std::move(parts[0]));
        }
        node = seal(std::move(e));
      } else if (is_op("(")) {
        auto e = make(Expr::Kind::Call, p);
        e->args.push_back(std::move(node));
        parse_call_args(*e);
        node = seal(std::move(e));
      } else {
        return node;
      }
    }
  }

  std::string dotted_name() {
    std::string name = expect_name();
    while (is_op(".")) {
      advance();
      name += "." + expect_name();
    }
    return name;
  }

  ExprPtr parse_filter_expr(ExprPtr node) {
    while (true) {
      Pos p = cur().pos;
      if (is_op("|")) {
        advance();
        auto e = make(Expr::Kind::Filter, p);
        e->name = dotted_name();
        e->args.push_back(std::move(node));
        if (is_op("(")) parse_call_args(*e);
        node = seal(std::move(e));
      } else if (is_name("is")) {
        advance();
        auto e = make(Expr::Kind::Test, p);
        if (is_name("not")) {
          e->negated = true;
          advance();
        }
        e->name = dotted_name();
        e->args.push_back(std::move(node));
        if (is_op("(")) {
          parse_call_args(*e);
        } else if ((cur().type == Token::Type::Name || cur().type == Token::Type::String ||
                    cur().type == Token::Type::Int || cur().type == Token::Type::Float || is_op("(") || is_op("[") ||
                    is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
          if (is_name("is")) error(cur().pos, "tests cannot be chained with 'is'");
          e->args.push_back(parse_postfix(parse_primary()));
        }
        node = seal(std::move(e));
      } else if (is_op("(")) {
        auto e = make(Expr::Kind::Call, p);
        e->args.push_back(std::move(node));
        parse_call_args(*e);
        node = seal(std::move(e));
      } else {
        return node;
      }
    }
  }

  std::vector<Token> toks_;
  ParseLimits limits_;
  size_t i_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

Body parse_template(std::string_view source, const ParseLimits& limits) {
  Lexer lexer(normalise(source));
  Parser parser(lexer.run(), limits);
  return parser.parse_all();
}

}  // namespace onebit::jinja
