#!/usr/bin/python3
"""Serving benchmarks (issue: serving), against a real `kvshard serve` under mpirun -np 2.

  1. Aggregate decode tokens/s with 1, 4 and 16 concurrent streams on a random-weight model:
     every step reads the weights once for the whole batch, so batching should multiply
     throughput; printed as the ratio to one stream measured in the same run.
  2. Time to first token for a long document, cold vs served from the prefix cache (the second
     question about the same document), median of several documents.

Prints one JSON line per measurement. Run after scripts/build.sh:
    /usr/bin/python3 bench/serving_bench.py [--work /tmp/kvshard-bench]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "serving"))
import harness  # noqa: E402
from harness import document, greedy  # noqa: E402


def make_model(path, args):
    if not os.path.exists(os.path.join(path, "config.json")):
        subprocess.run([harness.BIN, "make-model", "--out", path] + args, check=True,
                       capture_output=True)


def throughput(server, streams, max_tokens):
    results = [None] * streams
    barrier = threading.Barrier(streams + 1)

    def run(i):
        c = server.client()
        try:
            barrier.wait()
            results[i] = c.generate(greedy(prompt_ids=[1] + [300 + i, 400 + i, 500 + i],
                                           max_tokens=max_tokens))
        finally:
            c.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.time()
    for t in threads:
        t.join()
    wall = time.time() - start
    generated = sum(r.generated_tokens for r in results)
    return generated / wall, statistics.mean(r.timings.per_token_ms for r in results)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=os.environ.get("WORK", "/tmp/kvshard-bench"))
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--doc-chars", type=int, default=3000)
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)

    # 1. Batching: 4 layers, dim 512, 8 heads / 2 KV heads, ffn 1408, vocab 4096 (62 MB f32).
    model = os.path.join(args.work, "llama-60m")
    make_model(model, ["--layers", "4", "--dim", "512", "--heads", "8", "--kv-heads", "2",
                       "--ffn", "1408", "--vocab", "4096", "--max-seq-len", "4096"])
    server = harness.Server(model=model, extra=["--max-seqs", "64"])
    try:
        throughput(server, 1, 8)  # warm-up
        base = None
        for streams in [1, 4, 16]:
            tps, per_token_ms = throughput(server, streams, args.max_tokens)
            base = base or tps
            print(json.dumps({"bench": "serving_decode_throughput", "model": "llama-60m f32",
                              "layout": "tp=2 (2 ranks x 1 thread)", "streams": streams,
                              "max_tokens": args.max_tokens,
                              "aggregate_tokens_per_s": round(tps, 1),
                              "per_stream_ms_per_token": round(per_token_ms, 2),
                              "ratio_to_one_stream": round(tps / base, 2)}), flush=True)
    finally:
        assert server.stop() == 0

    # 2. Prefix cache: a long-context model whose synthetic vocabulary makes one token per byte.
    model = os.path.join(args.work, "long-context")
    make_model(model, ["--layers", "4", "--dim", "512", "--heads", "8", "--kv-heads", "2",
                       "--ffn", "1408", "--vocab", "4096", "--max-seq-len", "8192"])
    server = harness.Server(model=model, extra=["--kv-blocks", "2048"])
    try:
        c = server.client()
        cold, warm, cached, prompt = [], [], [], 0
        for i in range(5):
            doc = document(i, args.doc_chars)
            salt = "bench-%d" % i
            q1 = greedy(doc + "\n\nQuestion: who?\nAnswer:", max_tokens=8)
            q1.cache_salt = salt
            q2 = greedy(doc + "\n\nQuestion: where?\nAnswer:", max_tokens=8)
            q2.cache_salt = salt
            r1 = c.generate(q1)
            r2 = c.generate(q2)
            cold.append(r1.timings.ttft_ms)
            warm.append(r2.timings.ttft_ms)
            cached.append(r2.cached_tokens)
            prompt = r2.prompt_tokens
        c.close()
        print(json.dumps({"bench": "prefix_cache_ttft", "model": "long-context f32",
                          "layout": "tp=2 (2 ranks x 1 thread)", "prompt_tokens": prompt,
                          "cached_tokens": int(statistics.median(cached)),
                          "ttft_cold_ms": round(statistics.median(cold), 1),
                          "ttft_cached_ms": round(statistics.median(warm), 1),
                          "ttft_speedup": round(statistics.median(cold) /
                                                statistics.median(warm), 1)}), flush=True)
    finally:
        assert server.stop() == 0


if __name__ == "__main__":
    main()
