// Tokenizer encode throughput on one core.
// usage: tokenizer_bench --tokenizer DIR_OR_FILE --corpus DOCS.jsonl [--passes N]
// DOCS.jsonl holds one JSON string per line (a document); every document is encoded without
// special tokens, one thread. Pass 1 starts with an empty word cache; later passes show the
// steady state of a long-running server.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

int main(int argc, char** argv) {
  std::string tokenizer_path, corpus_path;
  int passes = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--tokenizer") tokenizer_path = argv[i + 1];
    if (a == "--corpus") corpus_path = argv[i + 1];
    if (a == "--passes") passes = std::atoi(argv[i + 1]);
  }
  if (tokenizer_path.empty() || corpus_path.empty()) {
    std::fprintf(stderr, "usage: %s --tokenizer DIR_OR_FILE --corpus DOCS.jsonl [--passes N]\n",
                 argv[0]);
    return 2;
  }
  auto load_start = std::chrono::steady_clock::now();
  auto tok = sbserve::Tokenizer::Load(tokenizer_path);
  if (!tok.ok()) {
    std::fprintf(stderr, "%s\n", std::string(tok.status().message()).c_str());
    return 1;
  }
  std::printf("sbserve load: %.3f s, vocab_size %d\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count(),
              (*tok)->vocab_size());
  std::vector<std::string> docs;
  size_t bytes = 0;
  std::ifstream in(corpus_path);
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    auto doc = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!doc.is_string()) {
      std::fprintf(stderr, "%s: every line must be a JSON string\n", corpus_path.c_str());
      return 2;
    }
    docs.push_back(doc.get<std::string>());
    bytes += docs.back().size();
  }
  for (int pass = 1; pass <= passes; ++pass) {
    size_t tokens = 0;
    auto start = std::chrono::steady_clock::now();
    for (const std::string& d : docs) {
      auto ids = (*tok)->Encode(d, /*add_special_tokens=*/false);
      if (!ids.ok()) {
        std::fprintf(stderr, "%s\n", std::string(ids.status().message()).c_str());
        return 1;
      }
      tokens += ids->size();
    }
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf(
        "sbserve pass %d: %zu docs, %.2f MB, %zu tokens, %.3f s, %.2f MB/s, %.3f M tokens/s\n",
        pass, docs.size(), bytes / 1e6, tokens, s, bytes / 1e6 / s, tokens / 1e6 / s);
  }
  return 0;
}
