#!/usr/bin/env python3
"""`kvshard bench --json` on the CPU: both ceilings measured in the same run (the read ceiling
for decode, the f32 FMA probe and, where the build has one, the bf16 dot-product probe for
prefill), the fractions taken against them, and the FLOP count behind prefill_gflops equal to an
independent count from config.json; weights_bytes equal to what the config says is held, in f32
and with --weight-dtype bf16; the KV bytes per token and the context --kv-memory holds for every
--kv-dtype, scales included.

Usage: bench_json.py KVSHARD MODEL_DIR
"""
import json
import subprocess
import sys
from pathlib import Path

kvshard, model = sys.argv[1], Path(sys.argv[2])
CONTEXT = 48


def bench(model_dir, *extra):
    out = subprocess.run([kvshard, "bench", "--model", str(model_dir), "--context", str(CONTEXT),
                          "--gen", "6", "--threads", "1", "--json", *extra],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def check(cond, what):
    if not cond:
        sys.exit(f"FAIL: {what}")


cfg = json.loads((model / "config.json").read_text())
j = bench(model)
print(json.dumps(j))
for key in ("mem_read_gbs", "bandwidth_fraction", "peak_gflops", "prefill_gflops",
            "prefill_fraction", "bf16_peak_gflops", "amx_bf16_peak_gflops", "weight_dtype", "weights_bytes"):
    check(key in j, f"{key} missing")
check(j["peak_gflops"] > 0 and j["mem_read_gbs"] > 0, "ceilings must be measured")
check(0 < j["prefill_fraction"] < 1.5, f"prefill_fraction {j['prefill_fraction']}")
check(abs(j["prefill_fraction"] - j["prefill_gflops"] / j["peak_gflops"]) < 1e-9,
      "prefill_fraction = prefill_gflops / peak_gflops")
check(j["bf16_peak_gflops"] is None or j["bf16_peak_gflops"] > 0, "bf16 probe")
check(j["amx_bf16_peak_gflops"] is None or j["amx_bf16_peak_gflops"] > 0, "AMX probe")
check(j["weight_dtype"] == "F32", f"weight_dtype {j['weight_dtype']}")

# The FLOP of the prefill, counted from the config.
L, d, f = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"]
hd = cfg.get("head_dim", d // cfg["num_attention_heads"])
q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
flop = CONTEXT * 2 * L * (d * q + 2 * d * kv + q * d + 3 * d * f)
flop += sum(4 * L * q * (p + 1) for p in range(CONTEXT))
flop += 2 * cfg["vocab_size"] * d
got = j["prefill_gflops"] * 1e9 * CONTEXT / j["prefill_tokens_per_s"]
check(abs(got / flop - 1) < 1e-6, f"prefill FLOP {got} != {flop}")

# What is held, counted from the config: the layers' matrices, the embedding, the f32 norms, and
# the output head: with tied embeddings in f32 it is a view of the embedding (held once, read
# whole by every decode step); a 16-bit one is packed for decode, its own copy.
V = cfg["vocab_size"]
layer_matrices = L * (d * q + 2 * d * kv + q * d + 3 * d * f)
norms = 4 * d * (2 * L + 1)
tied = cfg.get("tie_word_embeddings", False)
held_f32 = 4 * (layer_matrices + V * d + (0 if tied else V * d)) + norms
check(j["weights_bytes"] == held_f32, f"f32 weights_bytes {j['weights_bytes']} != {held_f32}")
read_f32 = held_f32 - 4 * V * d + 4 * d + (4 * V * d if tied else 0)
check(j["decode_bytes_per_token"] >= read_f32, "decode reads the head and every layer")

# The same weights held as bf16: half the matrix bytes, read by decode as such.
b = bench(model, "--weight-dtype", "bf16")
print(json.dumps(b))
check(b["weight_dtype"] == "BF16", f"weight_dtype {b['weight_dtype']}")
held_bf16 = 2 * (layer_matrices + 2 * V * d) + norms  # V rows: whole tiles of 4 here
check(V % 4 == 0 and b["weights_bytes"] == held_bf16,
      f"bf16 weights_bytes {b['weights_bytes']} != {held_bf16}")
check(b["decode_bytes_per_token"] < 0.6 * j["decode_bytes_per_token"], "bf16 decode bytes")
check(j["gemm_dtype"] == "f32" and b["gemm_dtype"] == "f32", "gemm_dtype defaults to f32")
check((j["bf16_peak_gflops"] is None) == ("prefill_bf16_fraction" not in j),
      "prefill_bf16_fraction where the bf16 probe ran")
if j["bf16_peak_gflops"] is not None:
    check(abs(j["prefill_bf16_fraction"] - j["prefill_gflops"] / j["bf16_peak_gflops"]) < 1e-9,
          "prefill_bf16_fraction = prefill_gflops / bf16_peak_gflops")

# bf16 GEMM inputs (--gemm-dtype bf16) with those bf16 weights: the same FLOP, reported as such.
g = bench(model, "--weight-dtype", "bf16", "--gemm-dtype", "bf16")
print(json.dumps(g))
check(g["gemm_dtype"] == "bf16", f"gemm_dtype {g['gemm_dtype']}")
check(abs(g["prefill_gflops"] / g["prefill_tokens_per_s"] -
          b["prefill_gflops"] / b["prefill_tokens_per_s"]) < 1e-9, "the same FLOP per token")

# The KV cache at fixed memory: a token costs 2 * layers * kv_heads * head_dim * dtype bytes, and
# a quantized dtype adds one f32 scale per KV head for each of K and V; max_context_tokens is what
# --kv-memory holds of them in whole blocks.
KV_MEMORY, BLOCK = 1 << 20, 16
for dtype, size, scales in (("f32", 4, 0), ("bf16", 2, 0), ("int8", 1, 4), ("fp8", 1, 4)):
    k = bench(model, "--kv-dtype", dtype, "--kv-memory", "1MiB")
    per_token = 2 * L * cfg["num_key_value_heads"] * (hd * size + scales)
    check(k["kv_dtype"] == dtype, f"kv_dtype {k['kv_dtype']} != {dtype}")
    check(k["kv_bytes_per_token"] == per_token,
          f"{dtype}: kv_bytes_per_token {k['kv_bytes_per_token']} != {per_token}")
    want = KV_MEMORY // (per_token * BLOCK) * BLOCK
    check(k["max_context_tokens"] == want,
          f"{dtype}: max_context_tokens {k['max_context_tokens']} != {want}")
    print(dtype, "max_context_tokens", k["max_context_tokens"], "at 1 MiB")
print("ok")
