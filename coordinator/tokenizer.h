// Text <-> token ids for Llama-family vocabularies. Three file formats are read: llama2.c's
// tokenizer.bin (scores + byte strings, encoded here with SentencePiece-style BPE),
// SentencePiece's tokenizer.model (encoded by libsentencepiece); both give the same ids for the
// same vocabulary (tests/unit/tokenizer_test.cc checks this on the Llama 2 vocabulary); and
// Hugging Face's tokenizer.json with byte-level BPE (Llama 3 and later; checked against the
// Python `tokenizers` library on a committed corpus).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace kvshard {

// Implementations are immutable after loading, so one instance may be shared by threads.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Encodes `text` as SentencePiece BPE does (dummy-prefix space when the vocabulary has one,
  // byte fallback for characters it lacks); prepends bos_id() when add_bos. Any bytes are
  // accepted, including invalid UTF-8 and NULs.
  virtual std::vector<int32_t> Encode(std::string_view text, bool add_bos) const = 0;

  // Bytes of `token` as printed right after `prev` (llama2.c semantics): a leading space is
  // stripped when prev == bos_id(); byte tokens <0xXX> give the raw byte; BOS, EOS, <unk> and
  // other control tokens, and ids outside [0, vocab_size()), give "".
  virtual std::string DecodeToken(int32_t prev, int32_t token) const = 0;

  // Concatenates DecodeToken(prev, t) over `tokens`, with prev starting at bos_id(): a sequence
  // with or without a leading BOS decodes to the same text, and for ordinary text
  // Decode(Encode(text, add_bos)) == text either way (the dummy-prefix space is stripped).
  std::string Decode(const std::vector<int32_t>& tokens) const;

  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // 1 for llama vocabularies
  virtual int32_t eos_id() const = 0;  // 2 for llama vocabularies
};

// The byte of a byte-fallback piece "<0xXX>" (hex digits in either case), nullopt for any other
// piece.
std::optional<uint8_t> ParseBytePiece(std::string_view piece);

// Reads llama2.c's tokenizer.bin: int32 max_token_length, then per token float32 score, int32
// byte length, bytes (little-endian). The file has no count; it must hold exactly `vocab_size`
// entries (from the model config). Ids 0/1/2 are <unk>/BOS/EOS; pieces "<0xXX>" are byte tokens.
// Errors: NotFound (no file), DataLoss (truncated, negative or absurd lengths, non-finite
// scores), InvalidArgument (entry count differs from vocab_size, vocab_size < 3); all name the
// file.
StatusOr<std::unique_ptr<Tokenizer>> LoadLlama2cTokenizer(const std::string& path,
                                                          int32_t vocab_size);

// The llama2.c encoder over `pieces` (spaces as spaces, "<0xXX>" byte pieces) and their scores,
// ids 0/1/2 = <unk>/BOS/EOS. InvalidArgument / DataLoss naming `name` for mismatched sizes,
// non-finite scores or absurd pieces.
StatusOr<std::unique_ptr<Tokenizer>> MakeLlama2cTokenizer(std::vector<std::string> pieces,
                                                          std::vector<float> scores,
                                                          const std::string& name);

// The tokenizer a GGUF file stores (tokenizer.ggml.*): model "gpt2" (byte-level BPE: tokens,
// merges, token types 3/4 as added tokens, the pre-tokenizer named by tokenizer.ggml.pre: the
// llama3, smollm/starcoder, gpt2 and qwen2 families) or "llama" (SentencePiece-style: tokens and
// scores, by the llama2.c encoder). BOS/EOS from tokenizer.ggml.bos_token_id / eos_token_id; BOS is
// added when tokenizer.ggml.add_bos_token says so. Errors name the file and the key.
class GgufFile;
StatusOr<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(const GgufFile& file);

// Loads a SentencePiece tokenizer.model with libsentencepiece. Errors: NotFound, DataLoss (not a
// valid model).
StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceTokenizer(const std::string& path);

// Loads a Hugging Face tokenizer.json whose model is byte-level BPE (Llama 3, SmolLM2, Qwen,
// GPT-2 style; hf_tokenizer.cc says which parts of the format are read). BOS is the
// post-processor's leading special token (Encode adds it only when the file's template does);
// BOS and EOS are taken from tokenizer_config.json beside the file when it names them. Text that
// is not valid UTF-8 is encoded as Python's decode(errors="replace") would repair it. Errors name
// the file: NotFound, DataLoss (not JSON, malformed fields, ids out of range, merges naming
// unknown tokens), InvalidArgument (a model, normalizer or pre-tokenizer kind not supported).
StatusOr<std::unique_ptr<Tokenizer>> LoadHfTokenizer(const std::string& path);

// The same from the files' contents (tokenizer_config_json may be empty); errors name `name`.
StatusOr<std::unique_ptr<Tokenizer>> ParseHfTokenizer(std::string_view tokenizer_json,
                                                      std::string_view tokenizer_config_json,
                                                      const std::string& name);

// Loads `dir`/tokenizer.json if present, else `dir`/tokenizer.model, else `dir`/tokenizer.bin,
// and checks its vocabulary against the model's `vocab_size` (InvalidArgument naming both numbers
// if they differ; a tokenizer.json may have fewer ids than a padded embedding). NotFound naming
// `dir` when none of the files exists.
StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerFromModelDir(const std::string& dir,
                                                               int32_t vocab_size);

// Writes a llama2.c-format tokenizer.bin (max_token_length = longest piece). InvalidArgument when
// the two vectors differ in size or are empty, a piece exceeds 1 MiB or a score is not finite.
Status WriteLlama2cTokenizer(const std::string& path, const std::vector<std::string>& pieces,
                             const std::vector<float>& scores);

// A vocabulary for random-weight models: ids 0, 1, 2 = "<unk>", "\n<s>\n", "\n</s>\n" (as in
// llama2.c's tokenizer.bin), 3..258 = "<0x00>".."<0xFF>", then distinct pieces " w259", " w260",
// ... with low scores. No merge can ever produce them, so any text encodes to its bytes (+3).
// InvalidArgument if vocab_size < 259; the outputs are replaced on success.
Status SyntheticVocabulary(int32_t vocab_size, std::vector<std::string>* pieces,
                           std::vector<float>* scores);

}  // namespace kvshard
