// The trained demo model's files, linked into the binary (assembler .incbin of the files in
// engine/demo_model/model/), so every build and image can serve it with no download and no
// training: EnsureDemoModel() writes them out once into the cache directory.
#include "engine/demo_model/embedded.h"

#define SB_STR2(x) #x
#define SB_STR(x) SB_STR2(x)

#define SB_EMBED(sym, file)                                        \
  __asm__(".section .rodata\n"                                     \
          ".global " #sym "_begin\n"                               \
          ".global " #sym "_end\n"                                 \
          ".balign 64\n" #sym "_begin:\n"                          \
          ".incbin \"" SB_STR(SB_DEMO_MODEL_DIR) "/" file "\"\n"   \
          #sym "_end:\n"                                           \
          ".byte 0\n"                                              \
          ".previous\n")

SB_EMBED(sb_demo_config, "config.json");
SB_EMBED(sb_demo_generation_config, "generation_config.json");
SB_EMBED(sb_demo_tokenizer, "tokenizer.json");
SB_EMBED(sb_demo_tokenizer_config, "tokenizer_config.json");
SB_EMBED(sb_demo_weights, "model.safetensors");

extern "C" {
extern const char sb_demo_config_begin[], sb_demo_config_end[];
extern const char sb_demo_generation_config_begin[], sb_demo_generation_config_end[];
extern const char sb_demo_tokenizer_begin[], sb_demo_tokenizer_end[];
extern const char sb_demo_tokenizer_config_begin[], sb_demo_tokenizer_config_end[];
extern const char sb_demo_weights_begin[], sb_demo_weights_end[];
}

namespace sbserve {

std::vector<EmbeddedFile> DemoModelFiles() {
  auto span = [](const char* b, const char* e) { return std::string_view(b, static_cast<size_t>(e - b)); };
  return {
      {"config.json", span(sb_demo_config_begin, sb_demo_config_end)},
      {"generation_config.json", span(sb_demo_generation_config_begin, sb_demo_generation_config_end)},
      {"tokenizer.json", span(sb_demo_tokenizer_begin, sb_demo_tokenizer_end)},
      {"tokenizer_config.json", span(sb_demo_tokenizer_config_begin, sb_demo_tokenizer_config_end)},
      {"model.safetensors", span(sb_demo_weights_begin, sb_demo_weights_end)},
  };
}

}  // namespace sbserve
