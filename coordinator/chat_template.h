// Chat prompts: a conversation rendered with the model's chat template. Models ship their
// template as Jinja (tokenizer_config.json's chat_template, GGUF's tokenizer.chat_template);
// kvshard does not run Jinja but recognises the template's family and renders it with a small
// built-in renderer for each:
//   llama3   <|begin_of_text|><|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>...
//   chatml   <|im_start|>ROLE\nCONTENT<|im_end|>\n...          (SmolLM2, Qwen)
//   llama2   <s>[INST] <<SYS>>\nSYSTEM\n<</SYS>>\n\nUSER [/INST] ASSISTANT </s>...
//   mistral  <s>[INST] USER [/INST]ASSISTANT</s>...
// each ending with the assistant's header when a reply is wanted. Generation stops at the
// family's end-of-turn tokens.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "coordinator/tokenizer.h"

namespace kvshard {

enum class ChatFormat { kLlama3, kChatML, kLlama2, kMistral };

struct ChatMessage {
  std::string role;  // system, user or assistant
  std::string content;
};

struct ChatTemplate {
  ChatFormat format = ChatFormat::kChatML;
  // The system prompt the template puts first when the conversation has none (SmolLM2's "You
  // are a helpful AI assistant named SmolLM, ..."), or "".
  std::string default_system;
  std::string source;  // where it came from, for messages
};

// "llama3", "chatml", "llama2" or "mistral" (for --chat-template); InvalidArgument listing them.
StatusOr<ChatFormat> ParseChatFormat(std::string_view name);
const char* ChatFormatName(ChatFormat format);

// The family of a Jinja chat template, by the markers it writes; InvalidArgument naming `source`
// and quoting the template's start when it is none of the four.
StatusOr<ChatTemplate> RecognizeChatTemplate(std::string_view jinja, const std::string& source);

// The chat template of a model (directory with tokenizer_config.json, or a GGUF file), or of
// `override_name` when given. NotFound naming the model when it has none and none is given.
StatusOr<ChatTemplate> LoadChatTemplate(const std::string& model, const std::string& override_name);

// The conversation as the model's prompt text, ending with the assistant's header when
// add_generation_prompt. InvalidArgument for an empty conversation, an unknown role, or (llama2,
// mistral) turns that do not alternate user / assistant after an optional system message.
StatusOr<std::string> RenderChat(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt);

// The texts of the tokens that end an assistant turn in this family.
std::vector<std::string> EndOfTurnTokens(ChatFormat format);

// The rendered conversation as ids: byte-level vocabularies (llama3, chatml) match the template's
// special tokens in the text; for llama2 / mistral, "<s>" and "</s>" become BOS / EOS and the text
// between is encoded without BOS (SentencePiece would read them as characters).
std::vector<int32_t> EncodeChat(const Tokenizer& tok, ChatFormat format,
                                const std::string& rendered);

// The ids of EndOfTurnTokens that the vocabulary has as single tokens (EOS for llama2 / mistral).
std::vector<int32_t> EndOfTurnIds(const Tokenizer& tok, ChatFormat format);

}  // namespace kvshard
