// The CUDA backend: the Backend operations as kernels of src/kernels/cuda on GPU 0, with weights
// and activations in device memory and one-token steps replayed as CUDA graphs (run_cached).
// docs/kernels-cuda.md describes the kernels and the numerics.
//
// In a build without CUDA (nvcc not found at configure time) make_cuda_backend throws an Error
// saying so; on a machine without a usable GPU it throws an Error with the CUDA runtime's reason.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "engine/backend.h"

namespace onebit {

std::unique_ptr<Backend> make_cuda_backend();

// True when this build has CUDA and a device can be used; otherwise false and, if `why` is given,
// the reason ("built without CUDA", "no CUDA device: ...").
bool cuda_available(std::string* why = nullptr);

// Device-to-device copy rate of GPU 0 in bytes/s (bytes read + bytes written), best of `passes`
// copies of `bytes` after one warm-up: the practical memory roofline `1bit bench` divides by.
double cuda_copy_bandwidth(size_t bytes = size_t{1} << 31, int passes = 10);

// How many one-sequence decode steps this process has issued as the persistent decode_step kernel
// (eagerly or into a recorded graph; replays of a recording are not counted): tests check that the
// path they compare ran. 0 in a build without CUDA.
int64_t cuda_decode_steps_issued();

}  // namespace onebit
