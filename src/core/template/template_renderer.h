// Evaluates a parsed chat template against a context. Internal to the template component.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/template/template_parser.h"
#include "core/template/template_value.h"

namespace onebit::jinja {

struct RenderLimits {
  size_t max_output_bytes = 4u << 20;  // also bounds every string and list built on the way
  uint64_t max_steps = 1'000'000;      // expression evaluations + loop iterations
  int max_call_depth = 32;             // macro recursion
};

// `context` must be a dict; its keys become the template's variables. Throws onebit::Error.
std::string render_template(const Body& body, const Value& context, const RenderLimits& limits);

}  // namespace onebit::jinja
