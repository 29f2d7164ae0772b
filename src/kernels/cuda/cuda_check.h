// CK(call): aborts the program with the CUDA error name, string and location when `call` fails.
// For standalone check and benchmark programs (tests/cuda, bench/cuda), which stop at the first
// CUDA error; library code returns errors to its caller instead.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CK(call)                                                                                      \
  do {                                                                                                \
    cudaError_t e_ = (call);                                                                          \
    if (e_ != cudaSuccess) {                                                                          \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorName(e_), __FILE__, __LINE__, \
                   cudaGetErrorString(e_));                                                           \
      std::exit(1);                                                                                   \
    }                                                                                                 \
  } while (0)
