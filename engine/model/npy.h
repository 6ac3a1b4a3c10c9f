// Writes float32 arrays in NumPy's .npy format (version 1.0).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace sbserve {

absl::Status WriteNpyF32(const std::string& path, const std::vector<int64_t>& shape, const float* data);

}  // namespace sbserve
