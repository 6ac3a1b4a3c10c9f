// Corrupt checkpoints are refused with one clear message naming the file, the tensor and the
// problem; valid ones load in every supported layout.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "engine/model/checkpoint.h"
#include "engine/model/model_writer.h"
#include "engine/model/safetensors.h"
#include "nlohmann/json.hpp"

namespace sbserve {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() /
            ("sbserve_ckpt_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    fs::remove_all(dir_);
    CreateOptions o;
    o.preset = "tiny";
    o.tokenizer = false;
    ASSERT_TRUE(WriteRandomCheckpoint(dir_, o).ok());
    file_ = dir_ + "/model.safetensors";
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string ReadAll(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  void WriteAll(const std::string& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << bytes;
  }
  // Splits the file into header JSON and data, lets `edit` change the JSON, writes it back.
  void EditHeader(const std::function<void(json&)>& edit) {
    const std::string bytes = ReadAll(file_);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
    json h = json::parse(bytes.substr(8, n));
    edit(h);
    std::string text = h.dump();
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
    WriteAll(file_, out + text + bytes.substr(8 + n));
  }
  std::string OpenError() {
    auto c = Checkpoint::Open(dir_);
    EXPECT_FALSE(c.ok());
    return c.ok() ? "" : std::string(c.status().message());
  }

  std::string dir_, file_;
};

TEST_F(CheckpointTest, ValidCheckpointLoads) {
  auto c = Checkpoint::Open(dir_);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->config().n_layer, 2);
  EXPECT_GT((*c)->num_parameters(), 0);
}

// sbserve's own config key "deterministic": false when absent, read when set, a bool only.
TEST_F(CheckpointTest, DeterministicKeyIsReadFromTheConfig) {
  {
    auto c = Checkpoint::Open(dir_);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_FALSE((*c)->config().deterministic);
  }
  json cfg = json::parse(ReadAll(dir_ + "/config.json"));
  cfg["deterministic"] = true;
  WriteAll(dir_ + "/config.json", cfg.dump());
  {
    auto c = Checkpoint::Open(dir_);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_TRUE((*c)->config().deterministic);
  }
  cfg["deterministic"] = "yes";
  WriteAll(dir_ + "/config.json", cfg.dump());
  const std::string err = OpenError();
  EXPECT_NE(err.find("deterministic"), std::string::npos) << err;
}

TEST_F(CheckpointTest, TruncatedFile) {
  const std::string bytes = ReadAll(file_);
  WriteAll(file_, bytes.substr(0, bytes.size() - 100));
  const std::string err = OpenError();
  EXPECT_NE(err.find("model.safetensors"), std::string::npos) << err;
  EXPECT_NE(err.find("truncated"), std::string::npos) << err;
  EXPECT_NE(err.find("tensor \""), std::string::npos) << err;
}

TEST_F(CheckpointTest, FileShorterThanHeaderLength) {
  WriteAll(file_, std::string("\x05\x00\x00", 3));
  EXPECT_NE(OpenError().find("truncated"), std::string::npos);
}

TEST_F(CheckpointTest, WrongDtype) {
  EditHeader([](json& h) { h["transformer.h.0.ln_1.weight"]["dtype"] = "I32"; });
  const std::string err = OpenError();
  EXPECT_NE(err.find("transformer.h.0.ln_1.weight"), std::string::npos) << err;
  EXPECT_NE(err.find("unsupported dtype I32"), std::string::npos) << err;
}

TEST_F(CheckpointTest, DtypeSizeMismatch) {
  // F16 in the header for bytes laid out as F32: the byte count no longer matches.
  EditHeader([](json& h) { h["transformer.h.0.ln_1.weight"]["dtype"] = "F16"; });
  const std::string err = OpenError();
  EXPECT_NE(err.find("transformer.h.0.ln_1.weight"), std::string::npos) << err;
  EXPECT_NE(err.find("bytes"), std::string::npos) << err;
}

TEST_F(CheckpointTest, WrongShape) {
  // The config implies n_inner 128; tell it 96 so c_fc/c_proj have the wrong shape.
  json cfg = json::parse(ReadAll(dir_ + "/config.json"));
  cfg["n_inner"] = 96;
  WriteAll(dir_ + "/config.json", cfg.dump());
  const std::string err = OpenError();
  EXPECT_NE(err.find("transformer.h.0.mlp.c_fc.weight"), std::string::npos) << err;
  EXPECT_NE(err.find("has shape [256, 64], config.json implies [192, 64]"), std::string::npos) << err;
}

TEST_F(CheckpointTest, MissingTensor) {
  EditHeader([](json& h) { h.erase("transformer.h.1.attn.c_proj.weight"); });
  const std::string err = OpenError();
  EXPECT_NE(err.find("\"transformer.h.1.attn.c_proj.weight\" is missing"), std::string::npos) << err;
}

TEST_F(CheckpointTest, OverlappingOffsets) {
  EditHeader([](json& h) {
    auto a = h["transformer.h.0.ln_1.weight"]["data_offsets"];
    auto b = h["transformer.h.0.ln_2.weight"]["data_offsets"];
    // Point ln_2 at ln_1's bytes (same size).
    h["transformer.h.0.ln_2.weight"]["data_offsets"] = a;
    (void)b;
  });
  const std::string err = OpenError();
  EXPECT_NE(err.find("overlaps"), std::string::npos) << err;
}

TEST_F(CheckpointTest, HugeHeaderLength) {
  std::string bytes = ReadAll(file_);
  for (int i = 0; i < 8; ++i) bytes[i] = i == 7 ? '\x10' : '\x00';  // 2^60
  WriteAll(file_, bytes);
  const std::string err = OpenError();
  EXPECT_NE(err.find("header length"), std::string::npos) << err;
}

TEST_F(CheckpointTest, NonJsonHeader) {
  std::string bytes = ReadAll(file_);
  bytes[8] = '#';
  WriteAll(file_, bytes);
  EXPECT_NE(OpenError().find("not a JSON object"), std::string::npos);
}

TEST_F(CheckpointTest, MissingConfigField) {
  json cfg = json::parse(ReadAll(dir_ + "/config.json"));
  cfg.erase("n_embd");
  WriteAll(dir_ + "/config.json", cfg.dump());
  const std::string err = OpenError();
  EXPECT_NE(err.find("config.json"), std::string::npos) << err;
  EXPECT_NE(err.find("\"n_embd\": missing"), std::string::npos) << err;
}

TEST_F(CheckpointTest, UnsupportedConfigValue) {
  json cfg = json::parse(ReadAll(dir_ + "/config.json"));
  cfg["normalization_function"] = "batchnorm";
  WriteAll(dir_ + "/config.json", cfg.dump());
  EXPECT_NE(OpenError().find("normalization_function"), std::string::npos);
}

TEST_F(CheckpointTest, PartialHeadBias) {
  // A head_bias in one layer only is neither R1 nor R2.
  CreateOptions o;
  o.preset = "tiny";
  o.variant = "R2";
  o.tokenizer = false;
  fs::remove_all(dir_);
  ASSERT_TRUE(WriteRandomCheckpoint(dir_, o).ok());
  EditHeader([](json& h) { h.erase("transformer.h.1.attn.head_bias"); });
  EXPECT_NE(OpenError().find("head_bias present in 1 of 2 layers"), std::string::npos);
}

TEST_F(CheckpointTest, ShardedIndexErrors) {
  CreateOptions o;
  o.preset = "tiny";
  o.shards = 2;
  o.tokenizer = false;
  fs::remove_all(dir_);
  ASSERT_TRUE(WriteRandomCheckpoint(dir_, o).ok());
  ASSERT_TRUE(Checkpoint::Open(dir_).ok());
  json index = json::parse(ReadAll(dir_ + "/model.safetensors.index.json"));
  index["weight_map"]["transformer.wte.weight"] = "../etc/passwd";
  WriteAll(dir_ + "/model.safetensors.index.json", index.dump());
  EXPECT_NE(OpenError().find("invalid shard file name"), std::string::npos);
  index["weight_map"]["transformer.wte.weight"] = "model-00002-of-00002.safetensors";
  WriteAll(dir_ + "/model.safetensors.index.json", index.dump());
  EXPECT_NE(OpenError().find("does not contain it"), std::string::npos);
}

TEST_F(CheckpointTest, RandomCorruptionNeverCrashes) {
  // Byte flips anywhere in the header region: every outcome is a clean status.
  const std::string bytes = ReadAll(file_);
  std::mt19937_64 rng(99);
  int refused = 0;
  for (int trial = 0; trial < 400; ++trial) {
    std::string m = bytes;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) m[rng() % std::min<size_t>(m.size(), 4096)] = static_cast<char>(rng());
    auto file = SafetensorsFile::FromMemory(m.data(), m.size(), "mutant");
    if (!file.ok()) {
      ++refused;
      EXPECT_FALSE(file.status().message().empty());
    }
  }
  EXPECT_GT(refused, 0);
}

}  // namespace
}  // namespace sbserve
