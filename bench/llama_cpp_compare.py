#!/usr/bin/env python3
"""kvshard beside llama.cpp on the same GGUF files, same threads, in one interleaved run.

Not part of CI. Needs build/kvshard (scripts/build.sh), numpy and gguf-py (pip install gguf
numpy), and llama.cpp's llama-bench: built here from the source vendored in the
llama-cpp-python 0.3.36 sdist (downloaded from PyPI once, cached under --work) unless
--llama-bench names one.

A random-weight Llama model (make-model, about 310 MB in f32 by default) is written once in f32
and converted to GGUF in F32, F16 and BF16 (rounded to nearest even, Q/K rows in llama.cpp's
order); both engines then read the same file. --smollm2 adds SmolLM2-135M-Instruct's Q4_1 GGUF
(scripts/fetch-assets.sh), which kvshard dequantizes to f32.

Per file, thread count and prompt length, each round runs kvshard's `bench --json` (prefill of
the prompt, then --gen decode steps after it, and the memory-read ceiling measured in the same
process) and llama-bench's pp<prompt> and tg<gen> at depth <prompt> with flash attention off and
on. Rounds are interleaved; each figure is the best of the rounds, with its spread (max - min) /
best. Prints one JSON line per measurement and a markdown table of the ratios.
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
KVSHARD = REPO / "build" / "kvshard"
SDIST = "llama-cpp-python==0.3.36"


def log(msg):
    print(f"# {msg}", file=sys.stderr, flush=True)


def build_llama_bench(work: Path) -> Path:
    src_root = work / "llama_cpp_python-0.3.36"
    llama = src_root / "vendor" / "llama.cpp"
    binary = llama / "build" / "bin" / "llama-bench"
    if binary.exists():
        return binary
    if not llama.exists():
        log(f"downloading the {SDIST} sdist from PyPI")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:",
                        "--no-deps", "-d", str(work), SDIST], check=True)
        with tarfile.open(work / "llama_cpp_python-0.3.36.tar.gz") as tar:
            tar.extractall(work)
    log("building llama-bench (a few minutes)")
    subprocess.run(["cmake", "-S", str(llama), "-B", str(llama / "build"),
                    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(llama / "build"), "-j2", "--target", "llama-bench"],
                   check=True, stdout=subprocess.DEVNULL)
    return binary


def read_safetensors(path: Path):
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", f"{name}: the master copy is written in f32"
        begin, end = info["data_offsets"]
        out[name] = np.frombuffer(data, dtype=np.float32, count=(end - begin) // 4,
                                  offset=8 + n + begin).reshape(info["shape"])
    return out


def read_llama2c_tokenizer(path: Path, vocab: int):
    data = path.read_bytes()
    pos = 4  # max_token_length
    tokens, scores = [], []
    for _ in range(vocab):
        score, length = struct.unpack_from("<fi", data, pos)
        pos += 8
        tokens.append(data[pos:pos + length].decode("utf-8", errors="replace"))
        pos += length
        scores.append(score)
    return tokens, scores


def to_bf16_bits(a: np.ndarray) -> np.ndarray:
    bits = a.astype(np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def gguf_order(w: np.ndarray, heads: int) -> np.ndarray:
    """Q/K rows from the rotate-half order into llama.cpp's interleaved RoPE pairs."""
    rows, cols = w.shape
    hd = rows // heads
    return w.reshape(heads, 2, hd // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def write_gguf(model_dir: Path, out: Path, dtype: str):
    import gguf

    cfg = json.loads((model_dir / "config.json").read_text())
    t = read_safetensors(model_dir / "model.safetensors")
    tokens, scores = read_llama2c_tokenizer(model_dir / "tokenizer.bin", cfg["vocab_size"])
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_dimension_count(cfg["head_dim"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    types = []
    for i, tok in enumerate(tokens):
        if i < 3:
            types.append(2 if i == 0 else 3)  # <unk>, <s>, </s>
        elif tok.startswith("<0x") and tok.endswith(">") and len(tok) == 6:
            types.append(6)  # byte
        else:
            types.append(1)
    w.add_token_types(types)
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])

    def add(name, a, matrix=True):
        if not matrix or dtype == "f32":
            w.add_tensor(name, np.ascontiguousarray(a, dtype=np.float32))
        elif dtype == "f16":
            w.add_tensor(name, np.ascontiguousarray(a, dtype=np.float16))
        else:
            w.add_tensor(name, np.ascontiguousarray(to_bf16_bits(a)),
                         raw_dtype=gguf.GGMLQuantizationType.BF16)

    add("token_embd.weight", t["model.embed_tokens.weight"])
    add("output_norm.weight", t["model.norm.weight"], matrix=False)
    add("output.weight", t["lm_head.weight"])
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        add(f"blk.{i}.attn_norm.weight", t[p + "input_layernorm.weight"], matrix=False)
        add(f"blk.{i}.attn_q.weight",
            gguf_order(t[p + "self_attn.q_proj.weight"], cfg["num_attention_heads"]))
        add(f"blk.{i}.attn_k.weight",
            gguf_order(t[p + "self_attn.k_proj.weight"], cfg["num_key_value_heads"]))
        add(f"blk.{i}.attn_v.weight", t[p + "self_attn.v_proj.weight"])
        add(f"blk.{i}.attn_output.weight", t[p + "self_attn.o_proj.weight"])
        add(f"blk.{i}.ffn_norm.weight", t[p + "post_attention_layernorm.weight"], matrix=False)
        add(f"blk.{i}.ffn_gate.weight", t[p + "mlp.gate_proj.weight"])
        add(f"blk.{i}.ffn_up.weight", t[p + "mlp.up_proj.weight"])
        add(f"blk.{i}.ffn_down.weight", t[p + "mlp.down_proj.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def run_kvshard(model: Path, threads: int, prompt: int, gen: int, extra=()):
    cmd = [str(KVSHARD), "bench", "--model", str(model), "--context", str(prompt), "--gen",
           str(gen), "--threads", str(threads), "--max-tokens-per-step", "512", "--json",
           *extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_llama(binary: Path, model: Path, threads: int, prompt: int, gen: int, fa: int):
    env = dict(os.environ, LD_LIBRARY_PATH=str(binary.parent))
    out = {}
    for kind, args in (("prefill", ["-p", str(prompt), "-n", "0"]),
                       ("decode", ["-p", "0", "-n", str(gen), "-d", str(prompt)])):
        cmd = [str(binary), "-m", str(model), "-t", str(threads), "-fa", str(fa), "-r", "1",
               "-ub", "512", "-b", "512", "-o", "json"] + args
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stderr[-2000:]}")
        out[kind] = json.loads(r.stdout)[0]["avg_ts"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/kvshard-bench")
    ap.add_argument("--llama-bench", help="an existing llama-bench binary")
    ap.add_argument("--dtypes", default="f32,bf16,f16")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--prompts", default="512", help="prompt lengths, e.g. 512,8192,32768")
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model-flags", default="--layers 4 --dim 1024 --heads 16 --kv-heads 4 "
                    "--ffn 4096 --vocab 8192", help="make-model flags of the random model")
    ap.add_argument("--bf16-gemm", action="store_true",
                    help="run kvshard with --gemm-dtype bf16 on the BF16 file (bf16 inputs on AMX "
                    "tiles or AVX512-BF16 dot products, as llama.cpp computes a BF16 file)")
    ap.add_argument("--bf16-gemm-f16", action="store_true",
                    help="also on the F16 file (each f16 weight split exactly into two bf16 "
                    "parts: the tile unit's rate where the CPU has AMX)")
    ap.add_argument("--smollm2", action="store_true",
                    help="also SmolLM2-135M-Instruct's Q4_1 GGUF (assets/smollm2)")
    args = ap.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    bench = Path(args.llama_bench) if args.llama_bench else build_llama_bench(work)
    prompts = [int(p) for p in args.prompts.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    master = work / "compare-f32"
    if not (master / "config.json").exists():
        ctx = max(prompts) + args.gen + 16
        subprocess.run([str(KVSHARD), "make-model", "--out", str(master), "--seed", "7",
                        "--max-seq-len", str(ctx)] + args.model_flags.split(), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    files = []
    for dtype in args.dtypes.split(","):
        path = work / f"compare-{dtype}.gguf"
        if not path.exists():
            log(f"writing {path}")
            write_gguf(master, path, dtype)
        files.append((f"random {dtype.upper()}", path))
    if args.smollm2:
        files.append(("SmolLM2 Q4_1", REPO / "assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))

    results = {}  # (file, threads, prompt) -> lists of figures
    for rnd in range(args.rounds):
        for label, path in files:
            for t in threads:
                for p in prompts:
                    key = (label, t, p)
                    r = results.setdefault(key, {"kv_prefill": [], "kv_decode": [], "fraction": [],
                                                 "ceiling": [], "ll_prefill": [], "ll_decode": [],
                                                 "weights": 0, "weight_dtype": ""})
                    bf16_inputs = ((args.bf16_gemm and label == "random BF16") or
                                   (args.bf16_gemm_f16 and label == "random F16"))
                    extra = ["--gemm-dtype", "bf16"] if bf16_inputs else []
                    k = run_kvshard(path, t, p, args.gen, extra)
                    r["kv_prefill"].append(k["prefill_tokens_per_s"])
                    r["kv_decode"].append(k["decode_tokens_per_s"])
                    r["fraction"].append(k["bandwidth_fraction"])
                    r["ceiling"].append(k["mem_read_gbs"])
                    r["weights"] = k["weights_bytes"]
                    r["weight_dtype"] = k["weight_dtype"] + (
                        " (bf16 GEMM inputs)" if k.get("gemm_dtype") == "bf16" else "")
                    best_p, best_d = 0.0, 0.0
                    for fa in (0, 1):
                        ll = run_llama(bench, path, t, p, args.gen, fa)
                        best_p, best_d = max(best_p, ll["prefill"]), max(best_d, ll["decode"])
                    r["ll_prefill"].append(best_p)
                    r["ll_decode"].append(best_d)
                    log(f"round {rnd + 1}: {label}, {t} threads, prompt {p}: kvshard prefill "
                        f"{k['prefill_tokens_per_s']:.1f} decode {k['decode_tokens_per_s']:.1f} "
                        f"tok/s (fraction {k['bandwidth_fraction']:.2f}); llama.cpp prefill "
                        f"{best_p:.1f} decode {best_d:.1f}")

    def best(v):
        return max(v), (max(v) - min(v)) / max(v)

    print("| model | threads | prompt | kvshard weights | prefill tok/s kvshard / llama.cpp | "
          "ratio | decode tok/s kvshard / llama.cpp | ratio | kvshard decode bandwidth_fraction |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (label, t, p), r in results.items():
        kp, kps = best(r["kv_prefill"])
        kd, kds = best(r["kv_decode"])
        lp, lps = best(r["ll_prefill"])
        ld, lds = best(r["ll_decode"])
        frac = r["fraction"][r["kv_decode"].index(kd)]  # of the best decode round
        line = {"model": label, "threads": t, "prompt": p, "kvshard_weight_dtype": r["weight_dtype"],
                "kvshard_weights_bytes": r["weights"], "kvshard_prefill_tok_s": kp,
                "kvshard_prefill_spread": kps, "llama_cpp_prefill_tok_s": lp,
                "llama_cpp_prefill_spread": lps, "prefill_ratio": kp / lp,
                "kvshard_decode_tok_s": kd, "kvshard_decode_spread": kds,
                "llama_cpp_decode_tok_s": ld, "llama_cpp_decode_spread": lds,
                "decode_ratio": kd / ld, "kvshard_bandwidth_fraction": frac,
                "mem_read_gbs": r["ceiling"]}
        print(json.dumps(line), file=sys.stderr)
        print(f"| {label} | {t} | {p} | {r['weights'] / 1e6:.0f} MB {r['weight_dtype']} | "
              f"{kp:.1f} (±{kps:.0%}) / {lp:.1f} (±{lps:.0%}) | {kp / lp:.2f} | "
              f"{kd:.1f} (±{kds:.0%}) / {ld:.1f} (±{lds:.0%}) | {kd / ld:.2f} | {frac:.2f} |")


if __name__ == "__main__":
    main()
