#include "core/base/model.h"

#include <gtest/gtest.h>

#include "core/base/error.h"

namespace onebit {
namespace {

ModelConfig tiny() {
  ModelConfig c;
  c.hidden_size = 64;
  c.intermediate_size = 160;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.vocab_size = 300;
  c.max_position_embeddings = 128;
  c.bos_token_id = 1;
  c.eos_token_ids = {2, 3};
  return c;
}

TEST(ModelConfig, JsonRoundTrip) {
  ModelConfig c = tiny();
  ModelConfig d = ModelConfig::from_json(c.to_json());
  EXPECT_EQ(d.to_json(), c.to_json());
}

TEST(ModelConfig, RejectsInconsistentHeads) {
  ModelConfig c = tiny();
  c.num_kv_heads = 3;
  EXPECT_THROW(c.validate(), Error);
  c = tiny();
  c.head_dim = 8;
  try {
    c.validate();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("hidden_size"), std::string::npos);
  }
}

TEST(ModelConfig, MissingKeyNamed) {
  auto j = tiny().to_json();
  j.erase("num_layers");
  try {
    ModelConfig::from_json(j);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("num_layers"), std::string::npos);
  }
}

TEST(Model, ValidateNamesTensorAndShapes) {
  Model m;
  m.path = "x.h1b";
  m.config = tiny();
  static const uint8_t byte = 0;
  for (const auto& e : expected_tensors(m.config)) {
    Tensor t;
    t.name = e.name;
    t.shape = e.shape;
    t.packing = e.ternary ? Packing::kTernary2 : Packing::kF32;
    t.data = {&byte, 1};
    if (e.ternary) t.scales = {1.0f};
    m.tensors.push_back(t);
  }
  EXPECT_NO_THROW(m.validate());
  m.tensors[2].shape = {64, 32};
  try {
    m.validate();
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "x.h1b: tensor blk.0.attn_q.weight: expected 64x64 ternary, file has 64x32");
  }
}

TEST(Packing, NamesRoundTrip) {
  for (Packing p : {Packing::kF32, Packing::kBF16, Packing::kI2_S, Packing::kTQ1_0, Packing::kTernaryHF}) {
    EXPECT_EQ(packing_from_name(packing_name(p)), p);
  }
  EXPECT_THROW(packing_from_name("nope"), Error);
}

}  // namespace
}  // namespace onebit
