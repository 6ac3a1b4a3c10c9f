// Runs the fuzz entry point without libFuzzer (gcc builds, CI): every file of the corpus
// directories given on the command line, then a fixed number of generated inputs (random bytes,
// random UTF-8 text, random ids, and corrupted copies of a valid tokenizer.json).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

// With TOKENIZER_FUZZ_LAST=path, each input is written there first, so a crash leaves the
// offending input behind for reproduction.
void Run(const std::string& input) {
  if (const char* last = std::getenv("TOKENIZER_FUZZ_LAST")) {
    std::ofstream(last, std::ios::binary | std::ios::trunc) << input;
  }
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
}

std::string RandomUtf8(std::mt19937& rng, size_t n) {
  static const uint32_t kPools[][2] = {
      {0x20, 0x7E},       {0x09, 0x0D},     {0xA0, 0x24F},    {0x300, 0x36F},   {0x4E00, 0x4FFF},
      {0x1F300, 0x1F64F}, {0x0600, 0x06FF}, {0x2000, 0x206F}, {0x2581, 0x2581}, {0xFB00, 0xFB06}};
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    const auto& p = kPools[rng() % (sizeof(kPools) / sizeof(kPools[0]))];
    uint32_t cp = p[0] + rng() % (p[1] - p[0] + 1);
    if (cp < 0x80) {
      s.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      s.push_back(static_cast<char>(0xE0 | (cp >> 12)));
      s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      s.push_back(static_cast<char>(0xF0 | (cp >> 18)));
      s.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  int iterations = 3000;
  std::vector<std::string> seeds;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--iterations=", 0) == 0) {
      iterations = std::atoi(arg.c_str() + 13);
      continue;
    }
    std::vector<std::filesystem::path> files;
    if (std::filesystem::is_directory(arg)) {
      for (const auto& e : std::filesystem::directory_iterator(arg)) files.push_back(e.path());
    } else {
      files.push_back(arg);
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      std::ifstream in(f, std::ios::binary);
      std::stringstream ss;
      ss << in.rdbuf();
      seeds.push_back(ss.str());
      Run(seeds.back());
    }
  }
  std::mt19937 rng(12345);
  for (int it = 0; it < iterations; ++it) {
    std::string input;
    switch (it % 5) {
      case 0: {  // random bytes, any mode
        size_t n = rng() % 200;
        for (size_t k = 0; k < n; ++k) input.push_back(static_cast<char>(rng()));
        break;
      }
      case 1:  // valid UTF-8 text
        input = std::string(1, '\x01') + RandomUtf8(rng, rng() % 300);
        break;
      case 2: {  // text with a corrupted byte
        input = std::string(1, '\x01') + RandomUtf8(rng, 1 + rng() % 100);
        input[1 + rng() % (input.size() - 1)] = static_cast<char>(rng());
        break;
      }
      case 3: {  // ids
        input = std::string(1, '\x02');
        size_t n = rng() % 400;
        for (size_t k = 0; k < n; ++k) input.push_back(static_cast<char>(rng()));
        break;
      }
      default: {  // a seed with a few bytes flipped, dropped or duplicated
        if (seeds.empty()) continue;
        input = seeds[rng() % seeds.size()];
        int edits = 1 + rng() % 4;
        for (int e = 0; e < edits && input.size() > 1; ++e) {
          size_t pos = 1 + rng() % (input.size() - 1);
          switch (rng() % 3) {
            case 0:
              input[pos] = static_cast<char>(rng());
              break;
            case 1:
              input.erase(pos, 1 + rng() % 8);
              break;
            default:
              input.insert(pos, input.substr(pos, rng() % 16));
              break;
          }
        }
      }
    }
    Run(input);
  }
  std::printf("tokenizer_fuzz_replay: %zu corpus files and %d generated inputs, no failure\n",
              seeds.size(), iterations);
  return 0;
}
