// Helpers shared by the CUDA checks of tests/cuda: a seeded-from-entropy RNG, failure counting,
// device buffers (copied, or poisoned with 0x7f bytes so an unwritten output shows), host copies.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_check.h"

namespace {

std::mt19937_64 rng(std::random_device{}());
int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what.c_str());
    ++failures;
  }
}

template <typename T>
T* dev(const std::vector<T>& h) {
  T* p = nullptr;
  CK(cudaMalloc(&p, std::max<size_t>(h.size(), 1) * sizeof(T)));
  if (!h.empty()) CK(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}
template <typename T>
T* dev_poison(size_t n) {
  T* p = nullptr;
  CK(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
  CK(cudaMemset(p, 0x7f, std::max<size_t>(n, 1) * sizeof(T)));
  return p;
}
template <typename T>
std::vector<T> host(const T* p, size_t n) {
  CK(cudaDeviceSynchronize());
  std::vector<T> h(n);
  CK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

std::vector<float> randn(size_t n, float sd = 1.0f) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// True, after printing the line CTest treats as a skip, when no CUDA device can be used.
bool skip_without_device() {
  int devices = 0;
  const cudaError_t e = cudaGetDeviceCount(&devices);
  if (e == cudaSuccess && devices > 0) return false;
  std::printf("SKIPPED: no CUDA device (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "device count 0");
  return true;
}

// ONEBIT_CHECK_SMALL set: a checker runs a small set of shapes that still reaches every kernel
// and launch path, for compute-sanitizer (bench/cuda/sanitize_on_device.sh), which runs kernels
// many times slower.
bool small_checks() { return std::getenv("ONEBIT_CHECK_SMALL") != nullptr; }

// cudaFree of every pointer (nullptr allowed).
template <typename... Ptrs>
void free_all(Ptrs... ptrs) {
  (cudaFree(const_cast<void*>(static_cast<const void*>(ptrs))), ...);
}

}  // namespace
