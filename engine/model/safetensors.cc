#include "engine/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "absl/strings/string_view.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace sbserve {
namespace {

using nlohmann::json;

bool ParseDType(const std::string& s, DType* t) {
  if (s == "F32") { *t = DType::kF32; return true; }
  if (s == "F16") { *t = DType::kF16; return true; }
  if (s == "BF16") { *t = DType::kBF16; return true; }
  return false;
}

}  // namespace

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) munmap(map_, map_size_);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    return absl::InternalError(absl::StrCat(path, ": stat failed: ", std::strerror(e)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  file->path_ = path;
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": truncated: ", size, " bytes, shorter than the 8-byte header length"));
  }
  void* map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int e = errno;
  ::close(fd);
  if (map == MAP_FAILED) return absl::InternalError(absl::StrCat(path, ": mmap failed: ", std::strerror(e)));
  file->map_ = map;
  file->map_size_ = size;
  absl::Status st2 = file->Parse(static_cast<const unsigned char*>(map), size);
  if (!st2.ok()) return st2;
  return file;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::FromMemory(const void* bytes, size_t size,
                                                                             const std::string& name) {
  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  file->path_ = name;
  if (size < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": truncated: ", size, " bytes, shorter than the 8-byte header length"));
  }
  absl::Status st = file->Parse(static_cast<const unsigned char*>(bytes), size);
  if (!st.ok()) return st;
  return file;
}

absl::Status SafetensorsFile::Parse(const unsigned char* base, size_t size) {
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];
  if (header_len > static_cast<uint64_t>(kMaxSafetensorsHeader)) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": header length ", header_len,
                                                   " bytes is larger than the limit of ",
                                                   kMaxSafetensorsHeader));
  }
  if (header_len > size - 8) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": truncated: header length ", header_len,
                                                   " exceeds the file size ", size));
  }
  const char* hdr = reinterpret_cast<const char*>(base + 8);
  json j = json::parse(hdr, hdr + header_len, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": header is not a JSON object"));
  }
  const unsigned char* data = base + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;

  struct Range {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Range> ranges;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") continue;
    auto bad = [&](absl::string_view problem) {
      return absl::InvalidArgumentError(absl::StrCat(path_, ": tensor \"", name, "\": ", problem));
    };
    const json& t = it.value();
    if (!t.is_object()) return bad("entry is not an object");
    auto dt = t.find("dtype");
    auto sh = t.find("shape");
    auto off = t.find("data_offsets");
    if (dt == t.end() || !dt->is_string()) return bad("missing dtype");
    if (sh == t.end() || !sh->is_array()) return bad("missing shape");
    if (off == t.end() || !off->is_array() || off->size() != 2) return bad("missing data_offsets [begin, end]");
    TensorInfo info;
    info.name = name;
    info.file = path_;
    if (!ParseDType(dt->get<std::string>(), &info.dtype)) {
      return bad(absl::StrCat("unsupported dtype ", dt->get<std::string>(), " (supported: F32, F16, BF16)"));
    }
    if (sh->size() > 8) return bad("more than 8 dimensions");
    uint64_t numel = 1;
    for (const json& d : *sh) {
      if (!d.is_number_unsigned()) return bad("shape entries must be non-negative integers");
      uint64_t v = d.get<uint64_t>();
      if (v > (uint64_t{1} << 40) || (v != 0 && numel > (uint64_t{1} << 62) / v)) return bad("shape overflows");
      numel *= v;
      info.shape.push_back(static_cast<int64_t>(v));
    }
    if (!(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned()) {
      return bad("data_offsets must be non-negative integers");
    }
    uint64_t begin = (*off)[0].get<uint64_t>();
    uint64_t end = (*off)[1].get<uint64_t>();
    if (end < begin) return bad(absl::StrCat("data_offsets end ", end, " before begin ", begin));
    if (end > data_size) {
      return bad(absl::StrCat("data [", begin, ", ", end, ") lies outside the file's ", data_size,
                              " data bytes (truncated file?)"));
    }
    const uint64_t want = numel * static_cast<uint64_t>(DTypeSize(info.dtype));
    if (end - begin != want) {
      return bad(absl::StrCat("holds ", end - begin, " bytes but its shape and dtype need ", want));
    }
    info.data = data + begin;
    info.nbytes = static_cast<int64_t>(want);
    auto [pos, inserted] = tensors_.emplace(name, std::move(info));
    if (!inserted) return bad("appears twice");
    if (end > begin) ranges.push_back({begin, end, &pos->first});
  }
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].begin < ranges[i - 1].end) {
      return absl::InvalidArgumentError(absl::StrCat(path_, ": tensor \"", *ranges[i].name,
                                                     "\": data overlaps tensor \"", *ranges[i - 1].name, "\""));
    }
  }
  return absl::OkStatus();
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorSpec>& tensors,
                              const std::function<void(size_t, std::vector<unsigned char>&)>& fill) {
  json header = json::object();
  uint64_t offset = 0;
  for (const TensorSpec& t : tensors) {
    const uint64_t n = static_cast<uint64_t>(t.nbytes());
    header[t.name] = {{"dtype", DTypeName(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  header["__metadata__"] = {{"format", "pt"}};
  std::string text = header.dump();
  while ((text.size() + 8) % 8 != 0) text.push_back(' ');  // keep tensor data 8-byte aligned
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::InternalError(absl::StrCat(path, ": cannot create: ", std::strerror(errno)));
  unsigned char len[8];
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  out.write(reinterpret_cast<const char*>(len), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  std::vector<unsigned char> bytes;
  for (size_t i = 0; i < tensors.size(); ++i) {
    bytes.assign(static_cast<size_t>(tensors[i].nbytes()), 0);
    fill(i, bytes);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  out.close();
  if (!out) return absl::InternalError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

}  // namespace sbserve
