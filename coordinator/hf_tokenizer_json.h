// The tokenizer.json model of hf_tokenizer.cc built from parsed JSON, for the other formats that
// carry the same vocabulary (gguf_tokenizer.cc builds the equivalent tokenizer.json of a GGUF
// file's byte-level BPE vocabulary). Internal to coordinator/.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "common/status.h"
#include "coordinator/tokenizer.h"

namespace kvshard {

// tokenizer_json: a parsed tokenizer.json; tokenizer_config: a parsed tokenizer_config.json, or
// null when there is none. Errors as LoadHfTokenizer's, naming `name`.
StatusOr<std::unique_ptr<Tokenizer>> HfTokenizerFromJson(const nlohmann::json& tokenizer_json,
                                                         const nlohmann::json& tokenizer_config,
                                                         const std::string& name);

}  // namespace kvshard
