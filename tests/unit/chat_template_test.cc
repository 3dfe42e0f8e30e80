// Chat templates: recognising the four families from their Jinja text, rendering conversations
// as each family's template writes them (checked against the text the Jinja templates produce
// for the same messages, rendered by Python's jinja2 as apply_chat_template does), and clear
// errors.
#include "coordinator/chat_template.h"

#include <gtest/gtest.h>

namespace kvshard {
namespace {

// SmolLM2-135M-Instruct's template, as its GGUF stores it (real newlines inside the literals).
constexpr const char* kSmolLM2 =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}";

constexpr const char* kLlama3 =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

TEST(ChatTemplate, RecognisesTheFamilies) {
  auto smol = RecognizeChatTemplate(kSmolLM2, "smol");
  ASSERT_TRUE(smol.ok());
  EXPECT_EQ(smol->format, ChatFormat::kChatML);
  EXPECT_EQ(smol->default_system,
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  EXPECT_EQ(RecognizeChatTemplate(kLlama3, "l3")->format, ChatFormat::kLlama3);
  EXPECT_EQ(RecognizeChatTemplate("{{ bos_token }}[INST] <<SYS>>...", "l2")->format,
            ChatFormat::kLlama2);
  EXPECT_EQ(RecognizeChatTemplate("{{ bos_token }}{% ... %}[INST] {{ m }} [/INST]", "m")->format,
            ChatFormat::kMistral);
  const auto unknown = RecognizeChatTemplate("<start_of_turn>user\n{{ m }}", "gemma.json");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().ToString().find("gemma.json: chat template not recognised"),
            std::string::npos);
  EXPECT_NE(unknown.status().ToString().find("--chat-template"), std::string::npos);
  EXPECT_FALSE(ParseChatFormat("vicuna").ok());
  EXPECT_EQ(ParseChatFormat("llama2").value(), ChatFormat::kLlama2);
}

TEST(ChatTemplate, RendersAsTheJinjaTemplatesDo) {
  const std::vector<ChatMessage> one = {{"user", "What is the capital of France?"}};
  // SmolLM2: the default system prompt first, as its template writes when there is none.
  EXPECT_EQ(RenderChat(RecognizeChatTemplate(kSmolLM2, "s").value(), one, true).value(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(RenderChat(RecognizeChatTemplate(kLlama3, "l").value(),
                       {{"system", "Be brief."}, {"user", " Hi \n"}}, true)
                .value(),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  const ChatTemplate l2{ChatFormat::kLlama2, "", "t"};
  EXPECT_EQ(
      RenderChat(l2, {{"system", "S"}, {"user", "A"}, {"assistant", "B"}, {"user", "C"}}, true)
          .value(),
      "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nA [/INST] B </s><s>[INST] C [/INST]");
  const ChatTemplate mistral{ChatFormat::kMistral, "", "t"};
  EXPECT_EQ(RenderChat(mistral, {{"user", "A"}, {"assistant", "B"}, {"user", "C"}}, true).value(),
            "<s>[INST] A [/INST]B</s><s>[INST] C [/INST]");
}

TEST(ChatTemplate, BadConversationsGetClearErrors) {
  const ChatTemplate chatml{ChatFormat::kChatML, "", "t"};
  EXPECT_NE(RenderChat(chatml, {}, true).status().ToString().find("empty"), std::string::npos);
  EXPECT_NE(RenderChat(chatml, {{"robot", "x"}}, true).status().ToString().find("role \"robot\""),
            std::string::npos);
  EXPECT_NE(RenderChat(chatml, {{"user", "x"}, {"system", "y"}}, true)
                .status()
                .ToString()
                .find("may only come first"),
            std::string::npos);
  const ChatTemplate l2{ChatFormat::kLlama2, "", "t"};
  EXPECT_NE(
      RenderChat(l2, {{"user", "x"}, {"user", "y"}}, true).status().ToString().find("alternate"),
      std::string::npos);
  EXPECT_NE(
      LoadChatTemplate("/nonexistent/model", "").status().ToString().find("has no chat template"),
      std::string::npos);
  EXPECT_EQ(LoadChatTemplate("/nonexistent/model", "chatml")->format, ChatFormat::kChatML);
}

// A tokenizer whose ids are the bytes + 3, with BOS 1 and EOS 2.
class ByteTokenizer : public Tokenizer {
 public:
  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override {
    std::vector<int32_t> ids;
    if (add_bos) ids.push_back(1);
    for (unsigned char c : text) ids.push_back(c + 3);
    return ids;
  }
  std::string DecodeToken(int32_t, int32_t t) const override {
    return t >= 3 ? std::string(1, static_cast<char>(t - 3)) : "";
  }
  int32_t vocab_size() const override { return 259; }
  int32_t bos_id() const override { return 1; }
  int32_t eos_id() const override { return 2; }
};

TEST(ChatTemplate, Llama2MarkersBecomeBosAndEos) {
  ByteTokenizer tok;
  EXPECT_EQ(EncodeChat(tok, ChatFormat::kLlama2, "<s>[I] a</s><s>b"),
            (std::vector<int32_t>{1, '[' + 3, 'I' + 3, ']' + 3, ' ' + 3, 'a' + 3, 2, 1, 'b' + 3}));
  EXPECT_EQ(EndOfTurnIds(tok, ChatFormat::kMistral), (std::vector<int32_t>{2}));
  // No single-token "<|im_end|>" in a byte vocabulary: no end-of-turn id beyond EOS.
  EXPECT_TRUE(EndOfTurnIds(tok, ChatFormat::kChatML).empty());
}

}  // namespace
}  // namespace kvshard
