// Tensor helpers shared by the golden tests.
#pragma once
#include <filesystem>
#include <memory>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "core/safetensors.h"

namespace mmdit::test {

// ‖a − b‖ / ‖b‖ in float64 on the CPU: the tests' measure of agreement with a reference. Shapes must
// match (a mismatch fails the test and returns a huge error).
inline double rel_err(const at::Tensor& a, const at::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  if (a.sizes() != b.sizes()) return 1e9;
  at::Tensor x = a.detach().to(at::kCPU, at::kDouble), y = b.detach().to(at::kCPU, at::kDouble);
  return ((x - y).norm() / y.norm()).item<double>();
}

// A goldens safetensors file; tensors come back as owned copies.
struct GoldenFile {
  std::shared_ptr<SafetensorsFile> f;
  explicit GoldenFile(const std::filesystem::path& path) : f(SafetensorsFile::open(path)) {}
  at::Tensor operator[](const std::string& n) const { return f->tensor(n).clone(); }
};

}  // namespace mmdit::test
