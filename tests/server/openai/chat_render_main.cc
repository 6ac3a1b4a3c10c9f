// sb_chat_render: renders a chat template over a list of conversations and prints the results as
// JSON, one entry per case: {"text": ...} or {"error": ...}. A template that fails to load prints
// {"load_error": ...}. Used to compare against other implementations by hand.
//
//   sb_chat_render INPUT.json
//   INPUT = {"template": str, "bos_token": str, "eos_token": str,
//            "cases": [{"messages": [...], "add_generation_prompt": bool, "extra": {...}}]}
#include <fstream>
#include <iostream>
#include <sstream>

#include "nlohmann/json.hpp"
#include "server/openai/chat_template.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: sb_chat_render INPUT.json\n";
    return 2;
  }
  std::ifstream in(argv[1], std::ios::binary);
  if (!in) {
    std::cerr << "sb_chat_render: cannot open " << argv[1] << "\n";
    return 2;
  }
  std::stringstream buf;
  buf << in.rdbuf();
  const auto input = nlohmann::ordered_json::parse(buf.str(), nullptr, false);
  if (input.is_discarded() || !input.is_object() || !input.contains("template") || !input["template"].is_string()) {
    std::cerr << "sb_chat_render: input must be an object with a string \"template\"\n";
    return 2;
  }
  auto tpl = sbserve::ChatTemplate::FromSource(input["template"].get<std::string>(),
                                               input.value("bos_token", std::string()),
                                               input.value("eos_token", std::string()));
  nlohmann::ordered_json out;
  if (!tpl.ok()) {
    out["load_error"] = std::string(tpl.status().message());
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  out = nlohmann::ordered_json::array();
  for (const auto& c : input.value("cases", nlohmann::ordered_json::array())) {
    auto text = tpl->Apply(c.value("messages", nlohmann::ordered_json::array()),
                           c.value("add_generation_prompt", false),
                           c.contains("extra") ? c["extra"] : nlohmann::ordered_json());
    nlohmann::ordered_json r;
    if (text.ok()) {
      r["text"] = *text;
    } else {
      r["error"] = std::string(text.status().message());
    }
    out.push_back(r);
  }
  std::cout << out.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
  return 0;
}
