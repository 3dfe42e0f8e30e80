#include "coordinator/chat_template.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "shard/gguf.h"

namespace kvshard {
namespace {

using json = nlohmann::json;

bool Has(std::string_view s, std::string_view marker) {
  return s.find(marker) != std::string_view::npos;
}

// The literal system prompt a ChatML template writes when the first message is not a system
// one: the text between "<|im_start|>system\n" and "<|im_end|>" inside a string literal.
std::string DefaultChatMLSystem(std::string_view jinja) {
  const std::string_view open = "<|im_start|>system";
  const size_t at = jinja.find(open);
  if (at == std::string_view::npos) return "";
  size_t begin = at + open.size();
  // The newline after the role: a real one, or "\n" escaped inside the Jinja string literal.
  if (jinja.substr(begin, 1) == "\n") {
    begin += 1;
  } else if (jinja.substr(begin, 2) == "\\n") {
    begin += 2;
  } else {
    return "";
  }
  const size_t end = jinja.find("<|im_end|>", begin);
  if (end == std::string_view::npos) return "";
  const std::string_view body = jinja.substr(begin, end - begin);
  // Only a plain literal (no Jinja expression inside) is a default we can reproduce.
  if (Has(body, "{{") || Has(body, "{%") || Has(body, "'") || Has(body, "+")) return "";
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] == '\\' && i + 1 < body.size() && body[i + 1] == 'n') {
      out.push_back('\n');
      ++i;
    } else {
      out.push_back(body[i]);
    }
  }
  return out;
}

std::string Trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\n\r");
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of(" \t\n\r");
  return s.substr(b, e - b + 1);
}

StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot read {}", path);
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

}  // namespace

StatusOr<ChatFormat> ParseChatFormat(std::string_view name) {
  if (name == "llama3") return ChatFormat::kLlama3;
  if (name == "chatml") return ChatFormat::kChatML;
  if (name == "llama2") return ChatFormat::kLlama2;
  if (name == "mistral") return ChatFormat::kMistral;
  return InvalidArgument("chat template {:?} is not one of llama3, chatml, llama2, mistral", name);
}

const char* ChatFormatName(ChatFormat format) {
  switch (format) {
    case ChatFormat::kLlama3: return "llama3";
    case ChatFormat::kChatML: return "chatml";
    case ChatFormat::kLlama2: return "llama2";
    case ChatFormat::kMistral: return "mistral";
  }
  return "?";
}

StatusOr<ChatTemplate> RecognizeChatTemplate(std::string_view jinja, const std::string& source) {
  ChatTemplate t;
  t.source = source;
  if (Has(jinja, "<|start_header_id|>") && Has(jinja, "<|eot_id|>")) {
    t.format = ChatFormat::kLlama3;
  } else if (Has(jinja, "<|im_start|>")) {
    t.format = ChatFormat::kChatML;
    t.default_system = DefaultChatMLSystem(jinja);
  } else if (Has(jinja, "[INST]") && Has(jinja, "<<SYS>>")) {
    t.format = ChatFormat::kLlama2;
  } else if (Has(jinja, "[INST]")) {
    t.format = ChatFormat::kMistral;
  } else {
    std::string start(jinja.substr(0, 80));
    return InvalidArgument(
        "{}: chat template not recognised (kvshard renders the llama3, chatml, llama2 and mistral "
        "families; pass --chat-template NAME): {:?}...",
        source, start);
  }
  return t;
}

StatusOr<ChatTemplate> LoadChatTemplate(const std::string& model,
                                        const std::string& override_name) {
  ChatTemplate found;
  bool have = false;
  std::string jinja, source;
  if (std::optional<std::string> gguf = GgufModelPath(model)) {
    KVS_ASSIGN_OR_RETURN(const std::unique_ptr<GgufFile> f, GgufFile::Open(*gguf));
    if (f->Find("tokenizer.chat_template") != nullptr) {
      KVS_ASSIGN_OR_RETURN(jinja, f->String("tokenizer.chat_template"));
      source = *gguf + " (tokenizer.chat_template)";
      have = true;
    }
  } else {
    const std::filesystem::path config = std::filesystem::path(model) / "tokenizer_config.json";
    std::error_code ec;
    if (std::filesystem::exists(config, ec)) {
      KVS_ASSIGN_OR_RETURN(const std::string text, ReadText(config.string()));
      const json j = json::parse(text, nullptr, false);
      if (j.is_discarded() || !j.is_object()) {
        return DataLoss("{}: not a JSON object", config.string());
      }
      if (j.contains("chat_template") && j["chat_template"].is_string()) {
        jinja = j["chat_template"].get<std::string>();
        source = config.string() + " (chat_template)";
        have = true;
      }
    }
  }
  if (have) {
    auto recognised = RecognizeChatTemplate(jinja, source);
    if (recognised.ok()) {
      found = *recognised;
    } else if (override_name.empty()) {
      return recognised.status();
    }
  }
  if (!override_name.empty()) {
    KVS_ASSIGN_OR_RETURN(const ChatFormat format, ParseChatFormat(override_name));
    if (!have || found.format != format) found = ChatTemplate{format, "", "--chat-template"};
    return found;
  }
  if (!have) {
    return NotFound("{} has no chat template; pass --chat-template llama3|chatml|llama2|mistral",
                    model);
  }
  return found;
}

StatusOr<std::string> RenderChat(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt) {
  if (messages.empty()) return InvalidArgument("messages: the conversation is empty");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& r = messages[i].role;
    if (r != "system" && r != "user" && r != "assistant") {
      return InvalidArgument("messages[{}]: role {:?} is not system, user or assistant", i, r);
    }
    if (r == "system" && i != 0) {
      return InvalidArgument("messages[{}]: a system message may only come first", i);
    }
  }
  std::vector<ChatMessage> m = messages;
  if (m[0].role != "system" && !tmpl.default_system.empty()) {
    m.insert(m.begin(), ChatMessage{"system", tmpl.default_system});
  }
  std::string out;
  switch (tmpl.format) {
    case ChatFormat::kChatML:
      for (const ChatMessage& msg : m)
        out += "<|im_start|>" + msg.role + "\n" + msg.content + "<|im_end|>\n";
      if (add_generation_prompt) out += "<|im_start|>assistant\n";
      return out;
    case ChatFormat::kLlama3:
      out = "<|begin_of_text|>";
      for (const ChatMessage& msg : m) {
        out += "<|start_header_id|>" + msg.role + "<|end_header_id|>\n\n" + Trim(msg.content) +
               "<|eot_id|>";
      }
      if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      return out;
    case ChatFormat::kLlama2:
    case ChatFormat::kMistral: {
      size_t i = 0;
      std::string system;
      if (m[0].role == "system") {
        system = m[0].content;
        i = 1;
      }
      if (!system.empty() && tmpl.format == ChatFormat::kMistral) {
        // Mistral's template has no system slot: it is prepended to the first user turn.
        system += "\n\n";
      }
      bool user_turn = true;
      for (; i < m.size(); ++i) {
        const bool is_user = m[i].role == "user";
        if (is_user != user_turn) {
          return InvalidArgument("messages[{}]: {} turns must alternate user / assistant", i,
                                 ChatFormatName(tmpl.format));
        }
        if (is_user) {
          std::string content = Trim(m[i].content);
          if (!system.empty()) {
            content = tmpl.format == ChatFormat::kLlama2
                          ? "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content
                          : system + content;
            system.clear();
          }
          out += "<s>[INST] " + content + " [/INST]";
        } else {
          out += (tmpl.format == ChatFormat::kLlama2 ? " " : "") + Trim(m[i].content) +
                 (tmpl.format == ChatFormat::kLlama2 ? " </s>" : "</s>");
        }
        user_turn = !user_turn;
      }
      return out;  // the prompt for a reply is the last "[/INST]" itself
    }
  }
  return out;
}

std::vector<int32_t> EncodeChat(const Tokenizer& tok, ChatFormat format,
                                const std::string& rendered) {
  if (format == ChatFormat::kLlama3 || format == ChatFormat::kChatML) {
    return tok.Encode(rendered, /*add_bos=*/false);  // its added tokens are matched in the text
  }
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (pos < rendered.size()) {
    const size_t bos = rendered.find("<s>", pos), eos = rendered.find("</s>", pos);
    const size_t at = std::min(bos, eos);
    if (at > pos) {
      const std::vector<int32_t> part =
          tok.Encode(std::string_view(rendered).substr(pos, at - pos), /*add_bos=*/false);
      ids.insert(ids.end(), part.begin(), part.end());
    }
    if (at == std::string::npos) break;
    ids.push_back(at == bos ? tok.bos_id() : tok.eos_id());
    pos = at + (at == bos ? 3 : 4);
  }
  return ids;
}

std::vector<int32_t> EndOfTurnIds(const Tokenizer& tok, ChatFormat format) {
  std::vector<int32_t> ids;
  if (format == ChatFormat::kLlama2 || format == ChatFormat::kMistral) return {tok.eos_id()};
  for (const std::string& t : EndOfTurnTokens(format)) {
    const std::vector<int32_t> one = tok.Encode(t, /*add_bos=*/false);
    if (one.size() == 1) ids.push_back(one[0]);  // only where the vocabulary has it as a token
  }
  return ids;
}

std::vector<std::string> EndOfTurnTokens(ChatFormat format) {
  switch (format) {
    case ChatFormat::kLlama3: return {"<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"};
    case ChatFormat::kChatML: return {"<|im_end|>", "<|endoftext|>"};
    case ChatFormat::kLlama2:
    case ChatFormat::kMistral: return {"</s>"};
  }
  return {};
}

}  // namespace kvshard
