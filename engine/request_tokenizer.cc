// The engine's TextCodec over the project tokenizer (NewTokenizerCodec), and the Engine::Create
// overload taking a tokenizer.
#include <utility>

#include "engine/engine.h"
#include "engine/tokenizer/tokenizer.h"

namespace sbserve {
namespace {

class TokenizerStream : public TextStream {
 public:
  TokenizerStream(const Tokenizer& tok, bool skip_special, std::span<const int32_t> prefix)
      : dec_(tok, skip_special, prefix) {}
  std::string Add(int32_t id) override { return dec_.Add(id); }
  std::string Flush() override { return dec_.Flush(); }

 private:
  IncrementalDecoder dec_;
};

class TokenizerCodec : public TextCodec {
 public:
  explicit TokenizerCodec(std::unique_ptr<Tokenizer> tok) : tok_(std::move(tok)) {}
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool add_special) const override {
    return tok_->Encode(text, add_special);
  }
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special) const override {
    absl::StatusOr<std::string> s = tok_->Decode(ids, skip_special);
    return s.ok() ? *std::move(s) : std::string();
  }
  std::string TokenBytes(int32_t id, bool skip_special) const override {
    absl::StatusOr<std::string> s = tok_->TokenBytes(id, skip_special);
    return s.ok() ? *std::move(s) : std::string();
  }
  std::unique_ptr<TextStream> NewStream(bool skip_special, std::span<const int32_t> prefix) const override {
    return std::make_unique<TokenizerStream>(*tok_, skip_special, prefix);
  }
  std::vector<int32_t> eos_ids() const override { return tok_->eos_ids(); }

 private:
  std::unique_ptr<Tokenizer> tok_;
};

}  // namespace

std::unique_ptr<TextCodec> NewTokenizerCodec(std::unique_ptr<Tokenizer> tokenizer) {
  return std::make_unique<TokenizerCodec>(std::move(tokenizer));
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options,
                                                       std::unique_ptr<Backend> backend,
                                                       std::unique_ptr<Tokenizer> tokenizer) {
  std::unique_ptr<TextCodec> codec;
  if (tokenizer != nullptr) codec = NewTokenizerCodec(std::move(tokenizer));
  return CreateWithCodec(options, std::move(backend), std::move(codec));
}

}  // namespace sbserve
