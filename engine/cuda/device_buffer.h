// Grow-only device allocation of the CUDA backend's buffers.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>

#include "absl/status/status.h"
#include "kernels/cuda_check.h"

namespace sbserve::cuda {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  absl::Status Reserve(size_t bytes, bool* moved = nullptr) {
    if (bytes <= bytes_) return absl::OkStatus();
    if (moved) *moved = true;
    if (ptr_) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    SB_CUDA_RETURN_IF_ERROR(cudaMalloc(&ptr_, std::max<size_t>(bytes, 256)));
    bytes_ = std::max<size_t>(bytes, 256);
    return absl::OkStatus();
  }
  size_t bytes() const { return bytes_; }
  template <typename T = void>
  T* get() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace sbserve::cuda
