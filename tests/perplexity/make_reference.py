#!/usr/bin/env python3
"""The reference perplexity that tests/perplexity/check.py holds `kvshard perplexity` to:
stories260K (models/stories260K, its config.json and model.safetensors as Hugging Face
transformers reads them: LlamaForCausalLM, float32, CPU torch, both from PyPI), teacher-forced
over the first tokens of assets/texts/alice29.txt (scripts/fetch-assets.sh), in the same windows
as kvshard's (BOS first, --context tokens, moving by --stride, each token scored once, in the first
window that reaches it). Shares no code with kvshard but the token ids, which are
`kvshard tokenize`'s (its llama2.c tokenizer is checked against the reference implementations
by the tokenizer tests). CI does not rebuild it.

    pip install torch transformers safetensors
    python3 tests/perplexity/make_reference.py --kvshard build/kvshard > tests/perplexity/reference.json
"""
import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[2]
CASES = [  # (tokens of the text, context, stride)
    (1200, 256, 128),
    (1200, 512, 511),
    (700, 100, 37),
]


def windows(n, per_window, stride):
    out, scored, end = [], 0, min(n, per_window)
    while True:
        begin = max(0, end - per_window)
        out.append((begin, end, scored))
        scored = end
        if end == n:
            return out
        end = min(n, end + stride)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvshard", required=True)
    ap.add_argument("--text", default=str(ROOT / "assets/texts/alice29.txt"))
    args = ap.parse_args()
    model_dir = ROOT / "models/stories260K"
    ids = subprocess.run([args.kvshard, "tokenize", "--model", str(model_dir), "--text-file",
                          args.text], check=True, capture_output=True, text=True).stdout
    ids = [int(x) for x in ids.strip().split(",")]
    model = LlamaForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
    bos = model.config.bos_token_id
    out = {"model": "models/stories260K", "text": "assets/texts/alice29.txt", "cases": []}
    for n, context, stride in CASES:
        nll, count = 0.0, 0
        for begin, end, scored in windows(n, context - 1, stride):
            prompt = torch.tensor([[bos] + ids[begin:end]])
            with torch.no_grad():
                logp = torch.log_softmax(model(prompt).logits[0].double(), dim=-1)
            for p in range(scored, end):
                at = p - begin  # prompt index of text position p is p - begin + 1
                nll -= logp[at, ids[p]].item()
                count += 1
        out["cases"].append({"limit_tokens": n, "context": context, "stride": stride,
                             "tokens": count, "perplexity": math.exp(nll / count)})
        print(out["cases"][-1], file=sys.stderr)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
