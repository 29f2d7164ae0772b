// Lexer and parser for the Jinja2 subset of chat templates: source text -> syntax tree.
//
// The lexer applies the whitespace rules of transformers' chat-template environment:
// trim_blocks=True (one newline after a block or comment tag is dropped), lstrip_blocks=True
// (spaces/tabs before a block or comment tag on its own line are dropped), '-' and '+' markers,
// newline normalisation and keep_trailing_newline=False. Internal to the template component.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/template/template_value.h"

namespace onebit::jinja {

struct Pos {
  int line = 1;
  int col = 1;
};

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    Const,      // value
    Name,       // name
    GetAttr,    // args[0].name
    GetItem,    // args[0][args[1]]
    Slice,      // args[0][args[1]:args[2]:args[3]] (null parts omitted)
    Call,       // args[0](args[1..], kwargs)
    Filter,     // args[0] | name(args[1..], kwargs)
    Test,       // args[0] is [not] name(args[1..]); negated
    Neg,        // -args[0]
    Pos,        // +args[0]
    Not,        // not args[0]
    Binary,     // args[0] op args[1]: + - * / // % ** ~
    And,        // args[0] and args[1]
    Or,         // args[0] or args[1]
    Compare,    // args[0] ops[0] args[1] ops[1] args[2] ... (==, !=, <, <=, >, >=, in, notin)
    Cond,       // args[1] if args[0] else args[2] (args[2] may be null)
    ListLit,    // [args...]
    TupleLit,   // (args...)
    DictLit,    // {kwargs-like pairs: keys in args[2i], values in args[2i+1]}
  };
  Kind kind;
  Pos pos;
  Value value;
  std::string name;
  std::vector<std::string> ops;
  bool negated = false;
  int height = 1;  // longest path to a leaf; bounded so that evaluation cannot overflow the stack
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
};

struct Node;
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

struct MacroParam {
  std::string name;
  ExprPtr default_value;  // may be null
};

struct Node {
  enum class Kind { Text, Output, If, For, Set, SetBlock, Macro, Break, Continue, Generation };
  Kind kind;
  Pos pos;
  std::string text;                               // Text
  ExprPtr expr;                                   // Output, Set value, For iterable
  std::vector<std::pair<ExprPtr, Body>> branches; // If: condition + body (elif chain)
  Body body;                                      // For / SetBlock / Macro / Generation
  Body else_body;                                 // If / For
  std::vector<std::string> targets;               // For loop vars, Set names
  std::string attr;                               // Set: ns.attr target (targets[0] is ns)
  ExprPtr loop_filter;                            // For ... if cond
  std::string name;                               // Macro name
  std::vector<MacroParam> params;                 // Macro parameters
};

struct ParseLimits {
  int max_depth = 64;  // nesting of blocks and of expressions
};

// Throws onebit::Error naming line and column on any syntax error.
Body parse_template(std::string_view source, const ParseLimits& limits);

}  // namespace onebit::jinja
