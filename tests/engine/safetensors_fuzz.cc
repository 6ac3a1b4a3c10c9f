// libFuzzer entry for the safetensors header parser: any byte string is either accepted with every
// tensor's range inside the input, or refused with a message — never a crash or an out-of-range read.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "engine/model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = sbserve::SafetensorsFile::FromMemory(data, size, "fuzz");
  if (file.ok()) {
    for (const auto& [name, t] : (*file)->tensors()) {
      const auto* p = static_cast<const uint8_t*>(t.data);
      if (p < data || p + t.nbytes > data + size) std::abort();
      // Touch the first and last byte: ASan flags any range the validation let through wrongly.
      if (t.nbytes > 0 && (p[0] + p[t.nbytes - 1]) == 0x1ff) std::abort();
    }
  } else if (file.status().message().empty()) {
    std::abort();
  }
  return 0;
}
