#!/usr/bin/env python3
"""`kvshard perplexity` against an independent implementation and across layouts and KV dtypes.

- f32 cache: the perplexity of each case of reference.json (Hugging Face transformers over the
  same weights and windows; make_reference.py) within 1e-5, at 1 rank; the first case also at 2
  ranks (TP), on the 2x2 grid (2 head groups x 2 seq shards) and in chunks of 60 tokens (chunked
  prefill) within 1e-5 of the reference.
- bf16, int8 and fp8 caches on the first case: the same perplexity on 1 rank and on the 2x2 grid
  (1e-4: every layout rounds the same values, up to the last bit of their f32 sums), and within the stated cost of the f32 cache: bf16
  and int8 within 0.5%, fp8 within 3% (e4m3 keeps 3 mantissa bits; stories260K's heads of 8 are
  the hardest case: docs/performance.md has the long-text table).
- --sliding-window: as long as the context, the f32 perplexity; 64, another one, equal on the 2x2
  grid.
- --kv-budget (SnapKV eviction of each window's unscored prefix): a budget of the whole window
  evicts nothing; budgets of 64 and 16 of the (at least) 128-token prefixes evict every window, keep what
  they say, change the perplexity, and give the same one on the 1x2 and 2x2 grids (1e-4).

Usage: check.py KVSHARD MPIRUN MODEL_DIR TEXT REFERENCE_JSON
"""
import json
import shlex
import subprocess
import sys

kvshard, mpirun, model, text, ref_path = sys.argv[1:6]
ref = json.load(open(ref_path))


def ppl(case, np=1, kv="f32", extra=()):
    cmd = shlex.split(mpirun) + ["-np", str(np)] + [
        kvshard, "perplexity", "--model", model, "--text", text, "--json",
        "--limit-tokens", str(case["limit_tokens"]), "--context", str(case["context"]),
        "--stride", str(case["stride"]), "--kv-dtype", kv, *extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    j = json.loads(out.strip().splitlines()[-1])
    if j["kv_dtype"] != kv or j["tokens"] != case["tokens"]:
        sys.exit(f"FAIL: {j} (wanted kv_dtype {kv}, {case['tokens']} tokens)")
    print(f"np {np} {' '.join(extra)} kv {kv} context {case['context']} stride "
          f"{case['stride']}: perplexity {j['perplexity']:.6f} over {j['tokens']} tokens")
    return j["perplexity"]


failed = []


def near(got, want, rel, what):
    if abs(got / want - 1) > rel:
        failed.append(f"{what}: {got} vs {want} (tolerance {rel})")


for case in ref["cases"]:
    near(ppl(case), case["perplexity"], 1e-5, f"np 1 {case}")
first = ref["cases"][0]
near(ppl(first, 2), first["perplexity"], 1e-5, "np 2 (TP 2)")
# Chunked prefill: each window's prompt log-probabilities come from 5 steps of 60 tokens or less.
near(ppl(first, 1, extra=("--max-tokens-per-step", "60")), first["perplexity"], 1e-5,
     "chunked prefill")
grid = ("--seq-shards", "2", "--block-size", "8")
near(ppl(first, 4, extra=grid), first["perplexity"], 1e-5, "2x2 grid")
f32 = first["perplexity"]
for kv, cost in (("bf16", 0.005), ("int8", 0.005), ("fp8", 0.03)):
    one = ppl(first, 1, kv)
    # Each layout sums the hidden state in its own order (all-reduce, merged seq shards), 1e-7
    # apart; a K or V element that close to a rounding boundary may round the other way.
    near(ppl(first, 4, kv, grid), one, 1e-4, f"{kv} cache: 2x2 grid vs 1 rank")
    if not (f32 * (1 - cost) < one < f32 * (1 + cost)) or one == f32:
        failed.append(f"{kv} cache: perplexity {one} not within {cost:.1%} of f32's {f32} "
                      "(or equal: the cache was not used)")
    print(f"  {kv}: {one / f32 - 1:+.3%} against the f32 cache")
# Sliding windows: one as long as the context changes nothing; a shorter one changes the
# perplexity and is the same on the 2x2 grid.
near(ppl(first, extra=("--sliding-window", str(first["context"]))), f32, 1e-6,
     "a window as long as the context")
windowed = ppl(first, extra=("--sliding-window", "64"))
near(ppl(first, 4, extra=grid + ("--sliding-window", "64")), windowed, 1e-5, "window 64, 2x2 grid")
if abs(windowed / f32 - 1) < 1e-3:
    failed.append(f"window 64: perplexity {windowed} equals the full attention's {f32}")


def evicting(budget, np=1, extra=()):
    case = first
    cmd = shlex.split(mpirun) + ["-np", str(np)] + [
        kvshard, "perplexity", "--model", model, "--text", text, "--json",
        "--limit-tokens", str(case["limit_tokens"]), "--context", str(case["context"]),
        "--stride", str(case["stride"]), "--kv-budget", str(budget), *extra]
    j = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True)
                   .stdout.strip().splitlines()[-1])
    print(f"np {np} {' '.join(extra)} kv-budget {budget}: perplexity {j['perplexity']:.6f} over "
          f"{j['tokens']} tokens, {j['evicted_windows']} of {j['windows']} windows evicted, "
          f"at least {j['kv_positions_kept_min']} positions kept")
    return j


# Each window's prefix is 128 positions (BOS included), the last window's longer: a budget of the
# whole context evicts none.
full = evicting(first["context"])
if full["evicted_windows"] != 0:
    failed.append(f"kv-budget {first['context']}: a budget of the whole window evicted {full}")
for budget in (64, 16):
    one = evicting(budget)
    if one["evicted_windows"] != one["windows"] or one["kv_positions_kept_min"] != budget:
        failed.append(f"kv-budget {budget}: {one}")
    if one["tokens"] != full["tokens"]:
        failed.append(f"kv-budget {budget}: {one['tokens']} tokens scored, {full['tokens']} without")
    if abs(one["perplexity"] / full["perplexity"] - 1) < 1e-4:
        failed.append(f"kv-budget {budget}: the perplexity did not change ({one['perplexity']})")
    print(f"  kv-budget {budget}: {one['perplexity'] / full['perplexity'] - 1:+.3%} against "
          "keeping every position")
    for np, g in ((2, ("--seq-shards", "2", "--block-size", "8")), (4, grid)):
        near(evicting(budget, np, g)["perplexity"], one["perplexity"], 1e-4,
             f"kv-budget {budget}: np {np} {g}")
if failed:
    sys.exit("FAIL:\n  " + "\n  ".join(failed))
print("ok")
