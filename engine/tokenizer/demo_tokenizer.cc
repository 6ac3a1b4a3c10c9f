#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/bpe_trainer.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/utf8.h"
#include "nlohmann/json.hpp"

namespace sbserve {
namespace {

constexpr const char* kEndOfText = "<|endoftext|>";

absl::Status WriteText(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path.string()));
  return absl::OkStatus();
}

nlohmann::ordered_json AddedTokenJson(int32_t id, const std::string& content) {
  return {{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", false}, {"special", true}};
}

}  // namespace

absl::Status WriteDemoTokenizer(const std::string& dir, int32_t vocab_size) {
  return WriteBpeTokenizer(dir, vocab_size, tokenizer_internal::DemoTrainingText(), /*allow_reserved=*/true);
}

absl::Status WriteBpeTokenizer(const std::string& dir, int32_t vocab_size, std::string_view text,
                               bool allow_reserved) {
  if (vocab_size < 512) {
    return absl::InvalidArgumentError(
        absl::StrCat("demo tokenizer vocab_size must be >= 512, got ", vocab_size));
  }
  const int32_t base = 1 + 256;
  auto trained = tokenizer_internal::TrainByteLevelBpe(text, vocab_size - base);
  if (!trained.ok()) return trained.status();
  if (!allow_reserved && base + static_cast<int32_t>(trained->new_tokens.size()) < vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("the training text yields only ", trained->new_tokens.size(),
                                                   " merges, fewer than vocab_size - 257 = ", vocab_size - base));
  }

  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  vocab[kEndOfText] = 0;
  const auto& table = tokenizer_internal::GetByteLevelTable();
  for (int b = 0; b < 256; ++b) vocab[table.byte_to_utf8[b]] = 1 + b;
  int32_t next = base;
  for (const std::string& t : trained->new_tokens) vocab[t] = next++;
  nlohmann::ordered_json merges = nlohmann::ordered_json::array();
  for (const auto& [a, b] : trained->merges) merges.push_back({a, b});

  nlohmann::ordered_json added = nlohmann::ordered_json::array();
  added.push_back(AddedTokenJson(0, kEndOfText));
  // When the text runs out of pairs before vocab_size, the rest are reserved specials so the
  // vocabulary still has exactly vocab_size ids (the checkpoint's embedding has that many rows).
  for (int32_t k = 0; next < vocab_size; ++k, ++next) {
    added.push_back(AddedTokenJson(next, absl::StrCat("<|reserved_", k, "|>")));
  }
  const nlohmann::ordered_json byte_level = {{"type", "ByteLevel"},
                                             {"add_prefix_space", false},
                                             {"trim_offsets", true},
                                             {"use_regex", true}};
  nlohmann::ordered_json tok = {{"version", "1.0"},
                                {"truncation", nullptr},
                                {"padding", nullptr},
                                {"added_tokens", added},
                                {"normalizer", nullptr},
                                {"pre_tokenizer", byte_level},
                                {"post_processor", byte_level},
                                {"decoder", byte_level},
                                {"model",
                                 {{"type", "BPE"},
                                  {"dropout", nullptr},
                                  {"unk_token", nullptr},
                                  {"continuing_subword_prefix", nullptr},
                                  {"end_of_word_suffix", nullptr},
                                  {"fuse_unk", false},
                                  {"byte_fallback", false},
                                  {"ignore_merges", false},
                                  {"vocab", vocab},
                                  {"merges", merges}}}};
  nlohmann::ordered_json config = {{"add_bos_token", false},
                                   {"add_eos_token", false},
                                   {"bos_token", kEndOfText},
                                   {"eos_token", kEndOfText},
                                   {"pad_token", kEndOfText},
                                   {"unk_token", kEndOfText},
                                   {"clean_up_tokenization_spaces", false},
                                   {"model_max_length", 4096},
                                   {"tokenizer_class", "PreTrainedTokenizerFast"}};
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  if (absl::Status st = WriteText(std::filesystem::path(dir) / "tokenizer.json", tok.dump(1));
      !st.ok()) {
    return st;
  }
  return WriteText(std::filesystem::path(dir) / "tokenizer_config.json", config.dump(2));
}

}  // namespace sbserve
