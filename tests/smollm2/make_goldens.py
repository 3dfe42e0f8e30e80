#!/usr/bin/env python3
"""Golden chat answers of SmolLM2-135M-Instruct (the Q4_1 GGUF that scripts/fetch-assets.sh
fetches) for tests/cli (kvshard generate --chat at mpirun -np 1 and -np 3), made by two
implementations that share no code with kvshard:

  numpy:     the Llama forward pass written here in numpy over the weights as llama.cpp's own
             gguf-py dequantizes them, in the GGUF's layout (RoPE on interleaved pairs, as
             llama.cpp applies it, so kvshard's Q/K row reordering is not reused), float32
             activations, greedy, no KV cache.
  transformers: Hugging Face transformers on CPU torch (both from PyPI), reading the same GGUF
             (from_pretrained(gguf_file=...): gguf-py's dequantization, then its own Llama, the
             Q/K rows put back by its own converter), float32, greedy generate() from the same
             prompt ids.
  llama.cpp: llama-completion built from the source vendored in the llama-cpp-python 0.3.36 sdist
             (PyPI), greedy (--temp 0 --top-k 1), the same prompt text; its CPU path multiplies
             Q4_1 weights by activations quantized to Q8_1, so where two tokens' logits are within
             its quantization error it may pick the other one (recorded, with the margin).

Each prompt is one user turn in SmolLM2's ChatML template with its default system prompt; the
prompt ids are llama.cpp's llama-tokenize of that text (kvshard's own tokenizer is checked
against the same ids by the tests). The goldens are the numpy texts, which transformers' must
equal (the script fails otherwise); CI does not rebuild them.

    pip install gguf numpy transformers torch
    python3 tests/smollm2/make_goldens.py --llama-cpp /path/to/llama.cpp/build/bin
"""

import argparse
import json
import os
import subprocess

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
MODEL = os.path.join(REPO, "assets", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.",
           "Name three primary colors."]
MAX_TOKENS = 40


class Model:
    def __init__(self, path):
        r = GGUFReader(path)
        self.meta = {k: v.contents() for k, v in r.fields.items()}
        self.w = {t.name: dequantize(t.data, t.tensor_type).astype(np.float32).reshape(
            [int(x) for x in reversed(t.shape)]) for t in r.tensors}
        m = self.meta
        self.layers, self.dim = m["llama.block_count"], m["llama.embedding_length"]
        self.heads, self.kv = m["llama.attention.head_count"], m["llama.attention.head_count_kv"]
        self.hd = self.dim // self.heads
        self.eps, self.theta = m["llama.attention.layer_norm_rms_epsilon"], m["llama.rope.freq_base"]
        self.tokens = m["tokenizer.ggml.tokens"]

    def rms(self, x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos):  # pairs (2i, 2i + 1), as llama.cpp's rope for llama
        i = np.arange(self.hd // 2)
        ang = pos[:, None] * (self.theta ** (-2.0 * i / self.hd))[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        out = np.empty_like(x)
        out[..., 0::2] = x[..., 0::2] * c - x[..., 1::2] * s
        out[..., 1::2] = x[..., 0::2] * s + x[..., 1::2] * c
        return out

    def logits(self, ids):
        w, T, hd = self.w, len(ids), self.hd
        x = w["token_embd.weight"][ids]
        pos = np.arange(T, dtype=np.float64)
        mask = np.triu(np.full((T, T), -np.inf), 1)
        for layer in range(self.layers):
            p = "blk.%d." % layer
            h = self.rms(x, w[p + "attn_norm.weight"])
            q = self.rope((h @ w[p + "attn_q.weight"].T).reshape(T, self.heads, hd), pos)
            k = self.rope((h @ w[p + "attn_k.weight"].T).reshape(T, self.kv, hd), pos)
            v = (h @ w[p + "attn_v.weight"].T).reshape(T, self.kv, hd)
            k = np.repeat(k, self.heads // self.kv, axis=1)
            v = np.repeat(v, self.heads // self.kv, axis=1)
            a = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
            a = np.exp(a - a.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            x = x + np.einsum("hts,shd->thd", a, v).reshape(T, self.dim) @ w[p + "attn_output.weight"].T
            h = self.rms(x, w[p + "ffn_norm.weight"])
            g, u = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
            x = x + ((g / (1 + np.exp(-g))) * u) @ w[p + "ffn_down.weight"].T
        x = self.rms(x, w["output_norm.weight"])
        return x[-1] @ w.get("output.weight", w["token_embd.weight"]).T

    def greedy(self, ids, stop):
        seq, margins = list(ids), []
        for _ in range(MAX_TOKENS):
            l = self.logits(seq)
            top = np.argsort(-l)[:2]
            margins.append(float(l[top[0]] - l[top[1]]))
            seq.append(int(top[0]))
            if seq[-1] in stop:
                break
        return seq[len(ids):], margins

    def text(self, ids):
        # GPT-2 byte-level decoding of the token texts.
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
        cs, n = bs[:], 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        back = {chr(c): b for b, c in zip(bs, cs)}
        return bytes(back[ch] for i in ids for ch in self.tokens[i]).decode("utf-8", "replace")


class Transformers:
    def __init__(self, path):
        import torch
        from transformers import AutoModelForCausalLM
        self.torch = torch
        torch.set_num_threads(2)
        self.model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(path), gguf_file=os.path.basename(path), torch_dtype=torch.float32,
            attn_implementation="eager")
        self.model.eval()

    def greedy(self, ids, stop):
        with self.torch.no_grad():
            out = self.model.generate(self.torch.tensor([ids]), max_new_tokens=MAX_TOKENS,
                                      do_sample=False, eos_token_id=sorted(stop),
                                      pad_token_id=sorted(stop)[0])
        gen = [int(t) for t in out[0][len(ids):]]
        return gen[:next((i + 1 for i, t in enumerate(gen) if t in stop), len(gen))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", required=True, help="directory with llama-completion, llama-tokenize")
    args = ap.parse_args()
    model = Model(MODEL)
    hf = Transformers(MODEL)
    stop = {model.tokens.index("<|im_end|>"), model.tokens.index("<|endoftext|>")}
    goldens = []
    for k, question in enumerate(PROMPTS):
        prompt = ("<|im_start|>system\n%s<|im_end|>\n<|im_start|>user\n%s<|im_end|>\n"
                  "<|im_start|>assistant\n" % (SYSTEM, question))
        out = subprocess.run([os.path.join(args.llama_cpp, "llama-tokenize"), "-m", MODEL, "-p",
                              prompt, "--ids", "--log-disable"], capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]
        ids = json.loads(out)
        gen, margins = model.greedy(ids, stop)
        answer = model.text([t for t in gen if t not in stop])
        hf_gen = hf.greedy(ids, stop)
        hf_answer = model.text([t for t in hf_gen if t not in stop])
        if hf_gen != gen:
            raise SystemExit("transformers and numpy disagree on %r:\n%r\n%r"
                             % (question, hf_answer, answer))
        lcpp = subprocess.run([os.path.join(args.llama_cpp, "llama-completion"), "-m", MODEL,
                               "-p", prompt, "-n", str(MAX_TOKENS), "--temp", "0", "--top-k", "1",
                               "-no-cnv", "-t", "2", "--no-display-prompt", "--simple-io",
                               "--no-warmup"], capture_output=True, text=True, check=True).stdout
        lcpp = lcpp.strip()
        goldens.append({"question": question, "prompt_ids": ids, "numpy_ids": gen,
                        "numpy_text": answer, "transformers_ids": hf_gen,
                        "transformers_text": hf_answer, "transformers_agree": hf_gen == gen,
                        "llama_cpp_text": lcpp,
                        "agree": lcpp == answer.strip(),
                        "first_token_margin": margins[0], "smallest_margin": min(margins)})
        with open(os.path.join(HERE, "golden_%d.txt" % k), "w") as f:
            f.write(answer + "\n")
        print(json.dumps(goldens[-1]))
    with open(os.path.join(HERE, "goldens.json"), "w") as f:
        json.dump(goldens, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
