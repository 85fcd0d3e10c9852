#include <fstream>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "core/errors.h"
#include "core/safetensors.h"
#include "core/torch_util.h"
#include "core/weights.h"
#include "tests/test_util.h"

namespace mmdit {
namespace {

// Every safetensors dtype survives write -> read bit for bit, with shapes, names and metadata.
TEST(Safetensors, EveryDtypeRoundTrips) {
  auto dir = test::temp_dir("st_roundtrip");
  torch::manual_seed(0);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  const at::ScalarType types[] = {at::kDouble, at::kFloat, at::kHalf, at::kBFloat16, at::kFloat8_e4m3fn,
                                  at::kFloat8_e5m2, at::kLong, at::kInt, at::kShort, at::kChar, at::kByte, at::kBool};
  for (auto t : types) {
    at::Tensor x = at::randn({3, 5, 2}) * 10;
    if (t == at::kBool) x = x > 0;
    tensors.emplace_back(std::string("w.") + c10::toString(t), x.to(t));
  }
  tensors.emplace_back("scalar", at::tensor(3.5f).reshape({}));
  tensors.emplace_back("empty", at::zeros({0, 4}));
  write_safetensors(dir / "a.safetensors", tensors, {{"format", "pt"}});
  auto f = SafetensorsFile::open(dir / "a.safetensors");
  EXPECT_EQ(f->header().metadata.at("format"), "pt");
  ASSERT_EQ(f->header().tensors.size(), tensors.size());
  for (const auto& [name, x] : tensors) {
    at::Tensor y = f->tensor(name);
    EXPECT_EQ(y.scalar_type(), x.scalar_type()) << name;
    EXPECT_EQ(y.sizes(), x.sizes()) << name;
    // Compare raw bytes: fp8 and bool have no equality kernels everywhere, and bits are what count.
    ASSERT_EQ(y.nbytes(), x.nbytes()) << name;
    EXPECT_EQ(0, std::memcmp(y.data_ptr(), x.contiguous().data_ptr(), x.nbytes())) << name;
  }
}

TEST(Safetensors, TensorsAreZeroCopyViewsOfTheMapping) {
  auto dir = test::temp_dir("st_zerocopy");
  write_safetensors(dir / "a.safetensors", {{"x", at::arange(16, at::kFloat)}});
  auto f = SafetensorsFile::open(dir / "a.safetensors");
  at::Tensor a = f->tensor("x"), b = f->tensor("x");
  EXPECT_EQ(a.data_ptr(), b.data_ptr());  // both point into the mapping
  EXPECT_EQ(a[5].item<float>(), 5.0f);
}

TEST(Safetensors, ShardedIndexLoadsAcrossFiles) {
  auto dir = test::temp_dir("st_sharded");
  write_safetensors(dir / "model-00001-of-00002.safetensors", {{"a.weight", at::ones({2, 2})}});
  write_safetensors(dir / "model-00002-of-00002.safetensors", {{"b.weight", at::full({3}, 2.0)}});
  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"metadata":{"total_size":28},"weight_map":{"a.weight":"model-00001-of-00002.safetensors",)"
      << R"("b.weight":"model-00002-of-00002.safetensors"}})";
  auto store = WeightStore::open(dir);  // a folder finds its index
  EXPECT_EQ(store.size(), 2u);
  EXPECT_TRUE(store.missing_files().empty());
  EXPECT_EQ(store.get("a.weight").sum().item<float>(), 4.0f);
  EXPECT_EQ(store.get("b.weight").sum().item<float>(), 6.0f);
  // A missing shard is reported, and only reading from it fails.
  std::filesystem::remove(dir / "model-00002-of-00002.safetensors");
  auto partial = WeightStore::open(dir / "model.safetensors.index.json");
  ASSERT_EQ(partial.missing_files().size(), 1u);
  EXPECT_EQ(partial.info("b.weight"), nullptr);
  EXPECT_THROW(partial.get("b.weight"), FileError);
  EXPECT_EQ(partial.get("a.weight").sum().item<float>(), 4.0f);
}

TEST(Safetensors, IndexNamingATensorItsShardLacksIsAnError) {
  auto dir = test::temp_dir("st_badindex");
  write_safetensors(dir / "s.safetensors", {{"a", at::ones({1})}});
  std::ofstream(dir / "model.safetensors.index.json") << R"({"weight_map":{"a":"s.safetensors","b":"s.safetensors"}})";
  EXPECT_THROW(WeightStore::open(dir), FormatError);
}

struct Tiny : torch::nn::Module {
  Tiny() {
    lin = register_module("proj", torch::nn::Linear(4, 3));
    norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({3})));
  }
  torch::nn::Linear lin{nullptr};
  torch::nn::LayerNorm norm{nullptr};
};

TEST(Weights, LoadModuleByDiffusersNamesAndDtype) {
  auto dir = test::temp_dir("weights_load");
  torch::manual_seed(1);
  at::Tensor w = at::randn({3, 4});
  write_safetensors(dir / "m.safetensors", {{"pre.proj.weight", w.to(at::kBFloat16)},
                                            {"pre.proj.bias", at::zeros({3})},
                                            {"pre.norm.weight", at::ones({3})},
                                            {"pre.norm.bias", at::zeros({3})}});
  Tiny m;
  load_module(m, WeightStore::open(dir / "m.safetensors"), {.prefix = "pre."});
  EXPECT_EQ(m.lin->weight.scalar_type(), at::kFloat);  // bf16 file upcast to the model's dtype
  EXPECT_TRUE(at::equal(m.lin->weight, w.to(at::kBFloat16).to(at::kFloat)));

  Tiny wrong;
  write_safetensors(dir / "bad.safetensors", {{"proj.weight", at::zeros({4, 4})}});
  EXPECT_THROW(load_module(wrong, WeightStore::open(dir / "bad.safetensors")), ShapeError);
  write_safetensors(dir / "short.safetensors", {{"proj.weight", at::zeros({3, 4})}});
  EXPECT_THROW(load_module(wrong, WeightStore::open(dir / "short.safetensors")), FormatError);
}

}  // namespace
}  // namespace mmdit
