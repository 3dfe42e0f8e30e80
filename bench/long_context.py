#!/usr/bin/python3
"""Long context on the 2D grid (issue: long context): capacity, decode vs context, a cost model.

  A. Capacity: one request's KV capacity (bench --json max_context_tokens) at 1, 2, 4 and 8
     ranks with the same --kv-memory per rank, on a 2-KV-head model, heads-only (N x 1) against
     the best seq-sharded grid, beside the formula (KV memory of the cluster) / (KV bytes per
     token of the model).
  B. Decode per-token time vs context for grids 1x1, 1x4 and 2x2 (one host), with the read
     ceiling and bandwidth_fraction bench measures in the same run.
  C. One request of --testbed-context tokens (default 128K) across the network-namespace test
     bed, 4 hosts x 1 rank, grids 1x4 and 2x2 (needs root; skipped otherwise or with
     --testbed-context 0).
  D. The cost model, t = (weights + KV of the shard) / read_bw + collectives x alpha, fitted on
     two points of B and checked against every other measured point (ratio printed), then its
     predictions for Llama-3-8B and -70B shapes at 128K and 1M tokens on NVLink, InfiniBand and
     Ethernet clusters, beside the heads-only cap (vLLM's decode context parallelism needs
     dcp <= tp / n_kv_heads).

    /usr/bin/python3 bench/long_context.py [--work /tmp/kvshard-bench] [--contexts 4096,16384,65536]

One JSON line per measurement; nothing here runs in CI."""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BIN = os.environ.get("KVSHARD_BIN", os.path.join(REPO, "build", "kvshard"))
# --bind-to none: mpirun would otherwise bind each rank to one core, and a 1x1 run's two
# threads would share it.
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "--mca",
          "mpi_yield_when_idle", "1", "--mca", "btl", "self,vader,tcp"]
# The model of part A and B: 1 layer, dim 512, 8 heads / 2 KV heads of 64 (GQA 8/2).
LAYERS, DIM, HEADS, KV_HEADS, HEAD_DIM = 1, 512, 8, 2, 64


def emit(obj):
    print(json.dumps(obj), flush=True)


def make_model(path, layers, dim, heads, kv_heads, ffn, vocab, max_len):
    if not os.path.exists(os.path.join(path, "config.json")):
        subprocess.run([BIN, "make-model", "--out", path, "--seed", "3", "--layers", str(layers),
                        "--dim", str(dim), "--heads", str(heads), "--kv-heads", str(kv_heads),
                        "--ffn", str(ffn), "--vocab", str(vocab), "--max-seq-len", str(max_len)],
                       check=True, capture_output=True)
    return path


def bench(model, np, shards, context, gen, threads, extra=()):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_WAIT_POLICY="PASSIVE")
    cmd = MPIRUN + ["-np", str(np), BIN, "bench", "--model", model, "--context", str(context),
                    "--gen", str(gen), "--threads", str(threads), "--seq-shards", str(shards),
                    "--max-tokens-per-step", "2048", "--read-buffer-mib", "256", "--json"]
    out = subprocess.run(cmd + list(extra), capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def capacity(model, kv_memory):
    bpt = 2 * LAYERS * KV_HEADS * HEAD_DIM * 4  # K and V, f32
    for np in (1, 2, 4, 8):
        grids = [(np, 1)] + ([(1, np)] if np > 1 else []) + ([(2, np // 2)] if np >= 4 else [])
        for groups, shards in grids:
            j = bench(model, np, shards, 64, 2, 1, ["--kv-memory", kv_memory])
            emit({"part": "capacity", "ranks": np, "grid": "%dx%d" % (groups, shards),
                  "kv_memory_per_rank": j["kv_bytes_per_rank"],
                  "max_context_tokens": j["max_context_tokens"],
                  "formula_tokens": int(np * j["kv_bytes_per_rank"] // bpt),
                  "weights_bytes_per_rank": j["weights_bytes_per_rank"],
                  "kv_replicas": j["kv_replicas"]})


def decode_vs_context(model, contexts, gen):
    """host_bandwidth_fraction: what all the host's ranks read per token (decode_bytes_per_token
    sums the ranks) per step time, against the 1x1 run's ceiling at the same context (one
    process, both cores). A multi-rank run's own bandwidth_fraction divides by probes that ran on
    the same two cores at once and sum to more than the memory delivers."""
    points = []
    for context in contexts:
        host_gbs = None
        for groups, shards, threads in ((1, 1, 2), (1, 4, 1), (2, 2, 1)):
            t0 = time.time()
            j = bench(model, groups * shards, shards, context, gen, threads)
            p = {"part": "decode", "grid": "%dx%d" % (groups, shards), "context": context,
                 "decode_ms_per_token": j["decode_ms_per_token"],
                 "bandwidth_fraction": j["bandwidth_fraction"],
                 "mem_read_gbs": j["mem_read_gbs"],
                 "decode_bytes_per_token": j["decode_bytes_per_token"],
                 "weights_bytes": j["weights_bytes"], "kv_bytes_per_token": j["kv_bytes_per_token"],
                 "prefill_tokens_per_s": j["prefill_tokens_per_s"],
                 "wall_s": round(time.time() - t0, 1)}
            if shards == 1 and groups == 1:
                host_gbs = j["mem_read_gbs"]
            p["host_bandwidth_fraction"] = (j["decode_bytes_per_token"] /
                                            (j["decode_ms_per_token"] / 1e3) / (host_gbs * 1e9))
            emit(p)
            points.append(p)
    return points


def testbed_run(context, shards_list):
    sys.path.insert(0, os.path.join(REPO, "tests", "cluster"))
    import testbed  # noqa: E402
    import harness  # noqa: E402
    from harness import greedy  # noqa: E402
    if testbed.can_run():
        emit({"part": "testbed", "skipped": testbed.can_run()})
        return
    work = os.environ.get("WORK", "/tmp/kvshard-bench")
    model = make_model(os.path.join(work, "tiny128"), 1, 128, 8, 2, 256, 512, 140000)
    bed = testbed.Testbed(4, "kvb", "10.219.0")
    try:
        for shards in shards_list:
            blocks = context // (16 * shards) + 64
            cluster = testbed.Cluster(bed, slots=1, model=model,
                                      launch_args=["--seq-shards", str(shards)],
                                      extra=["--kv-blocks", str(blocks), "--max-tokens-per-step",
                                             "4096", "--step-timeout-s", "600",
                                             "--heartbeat-timeout-s", "600"])
            try:
                c = cluster.client(timeout_ms=3600 * 1000)
                ids = [(i * 7919 + i // 13) % 509 + 3 for i in range(context)]
                t0 = time.time()
                r = c.generate(greedy(prompt_ids=ids, max_tokens=16))
                emit({"part": "testbed", "hosts": 4, "grid": "%dx%d" % (4 // shards, shards),
                      "context": context, "prompt_tokens": r.prompt_tokens,
                      "ttft_s": r.timings.ttft_ms / 1e3, "decode_ms_per_token":
                      r.timings.per_token_ms, "wall_s": round(time.time() - t0, 1),
                      "kv_capacity_tokens": c.status().kv_capacity_tokens})
                c.close()
            finally:
                cluster.stop()
    finally:
        bed.down()


def cost_model(points):
    """t = (W_rank + ctx * kv_rank_per_token) / bw + n_coll * alpha, per grid. bw: the attention
    and weight read rate of one rank (fitted on 1x1: two contexts give bw and the constant);
    alpha: per collective (fitted on the 1x4 point at the smallest context)."""
    by = {(p["grid"], p["context"]): p for p in points}
    ctxs = sorted({p["context"] for p in points})
    lo, hi = ctxs[0], ctxs[-1]
    a, b = by[("1x1", lo)], by[("1x1", hi)]
    # Bytes one rank reads per token: weights / ranks-ish + its share of the KV.
    def rank_bytes(p, ranks, shards):
        return p["weights_bytes"] / ranks + p["context"] * p["kv_bytes_per_token"] / ranks
    ba, bb = rank_bytes(a, 1, 1), rank_bytes(b, 1, 1)
    bw = (bb - ba) / ((b["decode_ms_per_token"] - a["decode_ms_per_token"]) / 1e3)  # bytes/s
    c0 = a["decode_ms_per_token"] / 1e3 - ba / bw
    # Four ranks on two cores: each rank reads at half the rate of the 2-thread 1x1 run.
    q = by[("1x4", lo)]
    n_coll = 3 * LAYERS + 3  # all-gather + 2 all-reduces per layer, the gather, two broadcasts
    alpha = max(0.0, (q["decode_ms_per_token"] / 1e3 - c0 - 2 * rank_bytes(q, 4, 4) / bw) / n_coll)
    emit({"part": "cost_model_fit", "rank_read_gbs": bw / 1e9, "constant_ms": c0 * 1e3,
          "alpha_us": alpha * 1e6})
    for p in points:
        g, s = map(int, p["grid"].split("x"))
        ranks = g * s
        share = 2.0 if ranks > 2 else 1.0  # ranks beyond the 2 cores share them
        coll = (3 * LAYERS + 3) if s > 1 else (2 * LAYERS + 3 if ranks > 1 else 0)
        pred = c0 + share * rank_bytes(p, ranks, s) / bw + coll * alpha
        emit({"part": "cost_model_check", "grid": p["grid"], "context": p["context"],
              "predicted_ms": pred * 1e3, "measured_ms": p["decode_ms_per_token"],
              "ratio": pred * 1e3 / p["decode_ms_per_token"]})


def predictions():
    """Per-token decode time of one 128K / 1M request, per-GPU numbers from public spec sheets
    (assumptions, not measurements): H100 HBM3 3.35 TB/s at 80% = 2.7 TB/s, 80 GB with 60 GB for
    KV; bf16 weights and KV. Links: NVLink 4 (alpha 3 us, 450 GB/s), InfiniBand NDR (alpha 5 us,
    50 GB/s), 100 GbE (alpha 20 us, 12.5 GB/s)."""
    shapes = {"llama3-8b": dict(layers=32, dim=4096, heads=32, kv=8, hd=128, ffn=14336,
                                vocab=128256),
              "llama3-70b": dict(layers=80, dim=8192, heads=64, kv=8, hd=128, ffn=28672,
                                 vocab=128256)}
    links = {"nvlink": (3e-6, 450e9), "infiniband": (5e-6, 50e9), "ethernet": (20e-6, 12.5e9)}
    hbm, kv_mem = 2.7e12, 60e9
    for name, m in shapes.items():
        params = m["layers"] * (m["dim"] * (m["heads"] + 2 * m["kv"]) * m["hd"] + m["heads"] *
                                m["hd"] * m["dim"] + 3 * m["dim"] * m["ffn"]) + m["vocab"] * m["dim"]
        kv_per_token = 2 * m["layers"] * m["kv"] * m["hd"] * 2
        for context in (131072, 1048576):
            for link, (alpha, beta) in links.items():
                for groups, shards in ((8, 1), (8, 2), (8, 8), (8, 16)):
                    ranks = groups * shards
                    heads_only_cap = int(kv_mem * min(ranks, m["kv"]) / kv_per_token)
                    cap = int(kv_mem * ranks / kv_per_token) if groups <= m["kv"] else None
                    if context > (cap if shards > 1 else heads_only_cap):
                        fits = False
                    else:
                        fits = True
                    qkv = m["dim"] * (m["heads"] + 2 * m["kv"]) * m["hd"] / groups
                    rest = (params - m["layers"] * m["dim"] * (m["heads"] + 2 * m["kv"]) *
                            m["hd"]) / ranks
                    w_bytes = 2 * (m["layers"] * qkv + rest)
                    kv_bytes = context * kv_per_token / (groups * shards) * (groups / min(groups, m["kv"]))
                    colls = (3 if shards > 1 else 2) * m["layers"] + 3
                    coll_bytes = 2 * m["layers"] * m["dim"] * 4 + (
                        m["layers"] * shards * m["heads"] / groups * (m["hd"] + 1) * 4
                        if shards > 1 else 0)
                    t = (w_bytes + kv_bytes) / hbm + colls * alpha + coll_bytes / beta
                    emit({"part": "prediction", "model": name, "context": context, "link": link,
                          "grid": "%dx%d" % (groups, shards), "gpus": ranks, "fits": fits,
                          "ms_per_token": round(t * 1e3, 3) if fits else None,
                          "heads_only_cap_tokens": heads_only_cap,
                          "grid_cap_tokens": cap if shards > 1 else heads_only_cap})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=os.environ.get("WORK", "/tmp/kvshard-bench"))
    ap.add_argument("--contexts", default="4096,16384,65536")
    ap.add_argument("--gen", type=int, default=24)
    ap.add_argument("--kv-memory", default="64MiB")
    ap.add_argument("--testbed-context", type=int, default=131072)
    ap.add_argument("--testbed-grids", default="4,2", help="seq shards of the 4-host runs")
    ap.add_argument("--parts", default="A,B,C,D")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    model = make_model(os.path.join(args.work, "lc1"), LAYERS, DIM, HEADS, KV_HEADS, 1408, 4096,
                       140000)
    parts = args.parts.split(",")
    emit({"date": time.strftime("%Y-%m-%d"), "machine": os.uname().nodename,
          "cores": os.cpu_count(), "model": model})
    if "A" in parts:
        capacity(model, args.kv_memory)
    points = []
    if "B" in parts:
        points = decode_vs_context(model, [int(c) for c in args.contexts.split(",")], args.gen)
    if "C" in parts and args.testbed_context > 0:
        testbed_run(args.testbed_context, [int(s) for s in args.testbed_grids.split(",")])
    if "D" in parts:
        if points:
            cost_model(points)
        predictions()


if __name__ == "__main__":
    main()
