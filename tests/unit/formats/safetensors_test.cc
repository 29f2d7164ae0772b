#include "core/formats/safetensors.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <filesystem>
#include <random>

#include "core/base/error.h"
#include "core/base/mapped_file.h"

namespace onebit {
namespace {

namespace fs = std::filesystem;

std::string temp_path(const std::string& leaf) {
  fs::path dir = fs::path(testing::TempDir()) / "onebit_safetensors_test";
  fs::create_directories(dir);
  return (dir / leaf).string();
}

// A safetensors image from a header text and a data section.
std::vector<uint8_t> image(const std::string& header, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> b(8);
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(n >> (8 * i));
  b.insert(b.end(), header.begin(), header.end());
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

std::string error_of(const std::vector<uint8_t>& bytes) {
  try {
    parse_safetensors(bytes, "x.safetensors");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Safetensors, WriteThenParseRoundTrips) {
  std::mt19937 rng(7);
  std::vector<uint8_t> packed(3 * 5), bf16(4 * 2), f32(4), i8(3);
  for (auto& b : packed) b = static_cast<uint8_t>(rng());
  for (auto& b : bf16) b = static_cast<uint8_t>(rng());
  for (auto& b : f32) b = static_cast<uint8_t>(rng());
  for (auto& b : i8) b = static_cast<uint8_t>(rng());
  const std::string path = temp_path("rt.safetensors");
  write_safetensors(path,
                    {{"a.packed", StDtype::kU8, {3, 5}, packed},
                     {"b.norm", StDtype::kBF16, {4}, bf16},
                     {"c.scale", StDtype::kF32, {}, f32},
                     {"d.codes", StDtype::kI8, {1, 3}, i8}},
                    {{"format", "pt"}});
  auto f = MappedFile::open(path);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | f->data()[i];
  EXPECT_EQ((8 + header_len) % 8, 0u) << "data section should start 8-aligned";
  SafetensorsFile st = parse_safetensors(f->bytes(), path);
  ASSERT_EQ(st.tensors.size(), 4u);
  EXPECT_EQ(st.metadata.at("format"), "pt");
  const StTensor* a = st.find("a.packed");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, StDtype::kU8);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{3, 5}));
  EXPECT_TRUE(std::equal(a->data.begin(), a->data.end(), packed.begin(), packed.end()));
  const StTensor* b = st.find("b.norm");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->dtype, StDtype::kBF16);
  EXPECT_TRUE(std::equal(b->data.begin(), b->data.end(), bf16.begin(), bf16.end()));
  const StTensor* c = st.find("c.scale");
  ASSERT_NE(c, nullptr);
  EXPECT_TRUE(c->shape.empty());
  EXPECT_EQ(c->numel(), 1);
  EXPECT_TRUE(std::equal(c->data.begin(), c->data.end(), f32.begin(), f32.end()));
  EXPECT_EQ(st.find("d.codes")->dtype, StDtype::kI8);
  EXPECT_EQ(st.find("missing"), nullptr);
  // Ordered by offset; the data section is contiguous.
  EXPECT_EQ(st.tensors[0].offset, 0u);
  for (size_t i = 1; i < st.tensors.size(); ++i)
    EXPECT_EQ(st.tensors[i].offset, st.tensors[i - 1].offset + st.tensors[i - 1].data.size());
}

TEST(Safetensors, WriterRejectsSizeMismatch) {
  std::vector<uint8_t> three(3);
  EXPECT_THROW(write_safetensors(temp_path("bad.safetensors"), {{"t", StDtype::kF32, {1}, three}}), Error);
}

TEST(Safetensors, EveryTruncationThrows) {
  const std::string path = temp_path("trunc.safetensors");
  std::vector<uint8_t> d1(6 * 4, 1), d2(2 * 2, 2);
  write_safetensors(path, {{"w", StDtype::kF32, {2, 3}, d1}, {"n", StDtype::kF16, {2}, d2}});
  auto f = MappedFile::open(path);
  std::vector<uint8_t> all(f->data(), f->data() + f->size());
  EXPECT_NO_THROW(parse_safetensors(all, "full"));
  for (size_t n = 0; n < all.size(); ++n) {
    std::vector<uint8_t> cut(all.begin(), all.begin() + static_cast<ptrdiff_t>(n));
    EXPECT_THROW(parse_safetensors(cut, "cut"), Error) << "prefix " << n;
  }
}

TEST(Safetensors, HostileHeadersThrowUsefulErrors) {
  std::vector<uint8_t> data(16, 0);
  // Header length beyond the file / beyond the 100 MB bound.
  auto big = image("{}", data);
  big[0] = 0xff;
  big[1] = 0xff;
  EXPECT_NE(error_of(big).find("header length"), std::string::npos);
  auto huge = image("{}", data);
  huge[7] = 0x01;
  EXPECT_NE(error_of(huge).find("out of range"), std::string::npos);
  // Not JSON, not an object.
  EXPECT_NE(error_of(image("{nope", data)).find("not valid JSON"), std::string::npos);
  EXPECT_NE(error_of(image("[1,2]", data)).find("JSON object"), std::string::npos);
  // Unsupported dtype: names tensor and dtype.
  std::string e = error_of(image(R"({"w":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}})", data));
  EXPECT_NE(e.find("'w'"), std::string::npos) << e;
  EXPECT_NE(e.find("I64"), std::string::npos) << e;
  // Offsets outside the data section.
  e = error_of(image(R"({"w":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})", data));
  EXPECT_NE(e.find("outside the data section"), std::string::npos) << e;
  e = error_of(image(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[9,4]}})", data));
  EXPECT_NE(e.find("outside"), std::string::npos) << e;
  // Size does not match the shape.
  e = error_of(image(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", data));
  EXPECT_NE(e.find("needs 12 bytes"), std::string::npos) << e;
  // Overlap.
  e = error_of(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                     R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                     data));
  EXPECT_NE(e.find("overlap"), std::string::npos) << e;
  // Negative and absurd dims.
  e = error_of(image(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", data));
  EXPECT_NE(e.find("non-negative"), std::string::npos) << e;
  e = error_of(image(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})", data));
  EXPECT_NE(e.find("absurdly large"), std::string::npos) << e;
  e = error_of(image(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", data));
  EXPECT_NE(e.find("[begin, end]"), std::string::npos) << e;
  e = error_of(image(R"({"w":{"dtype":"F32","shape":[1]}})", data));
  EXPECT_NE(e.find("data_offsets"), std::string::npos) << e;
  e = error_of(image(R"({"__metadata__":{"k":1}})", data));
  EXPECT_NE(e.find("__metadata__"), std::string::npos) << e;
  EXPECT_FALSE(error_of(image(R"({"__metadata__":{"k":"v"}})", data)).size());
}

}  // namespace
}  // namespace onebit
