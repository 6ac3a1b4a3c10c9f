// Memory-mapped safetensors files, validated before any tensor byte is touched.
//
// Layout: 8-byte little-endian header length N, N bytes of JSON
// {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the data.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/dtype.h"

namespace sbserve {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // inside the mapping
  int64_t nbytes = 0;
  std::string file;            // for error messages

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
};

inline constexpr int64_t kMaxSafetensorsHeader = 100 << 20;  // 100 MiB of JSON is already absurd

class SafetensorsFile {
 public:
  // Maps and validates `path`. Errors name the file, the tensor and the problem.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // Validates an in-memory image (the fuzz and unit tests use it); `bytes` must outlive the result.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> FromMemory(const void* bytes, size_t size,
                                                                     const std::string& name);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }

 private:
  SafetensorsFile() = default;
  absl::Status Parse(const unsigned char* base, size_t size);

  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorInfo> tensors_;
};

// Writes a safetensors file tensor by tensor: `fill(i, bytes)` produces tensor i's on-disk bytes
// (bytes arrives sized to the tensor), so a multi-GB checkpoint never sits in memory whole.
struct TensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;

  int64_t nbytes() const {
    int64_t n = DTypeSize(dtype);
    for (int64_t s : shape) n *= s;
    return n;
  }
};
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorSpec>& tensors,
                              const std::function<void(size_t, std::vector<unsigned char>&)>& fill);

}  // namespace sbserve
