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
  D. The cost model, t = c + (bytes every rank of a host reads, the first C of them from the
     cache at one rate, the rest from memory at another), fitted on six points of B and checked
     against the nine others (ratio printed; --from FILE re-reads part B's lines from an earlier
     run's output), then its
     predictions for Llama-3-8B and -70B shapes at 128K and 1M tokens on NVLink, InfiniBand and
     Ethernet clusters, beside the heads-only cap (vLLM's decode context parallelism needs
     dcp <= tp / n_kv_heads).
  E. The read ceiling by buffer size (bench's probe, 8 MiB to 1 GiB): where the cache ends and
     the two rates beside part D's fitted ones.

    /usr/bin/python3 bench/long_context.py [--work /tmp/kvshard-bench] [--contexts 4096,16384,65536]
        [--rounds N] [--parts A,B,C,D,E] [--from OUTPUT_OF_AN_EARLIER_RUN]

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


def bench(model, np, shards, context, gen, threads, extra=(), read_mib=256):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_WAIT_POLICY="PASSIVE")
    cmd = MPIRUN + ["-np", str(np), BIN, "bench", "--model", model, "--context", str(context),
                    "--gen", str(gen), "--threads", str(threads), "--seq-shards", str(shards),
                    "--max-tokens-per-step", "2048", "--read-buffer-mib", str(read_mib), "--json"]
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


def decode_vs_context(model, contexts, gen, rounds):
    """host_bandwidth_fraction: what all the host's ranks read per token (decode_bytes_per_token
    sums the ranks) per step time, against the 1x1 run's ceiling at the same context (one
    process, both cores). A multi-rank run's own bandwidth_fraction divides by probes that ran on
    the same two cores at once and sum to more than the memory delivers."""
    points = []
    for rnd, context in ((r, c) for r in range(rounds) for c in contexts):
        host_gbs = None
        for groups, shards, threads in ((1, 1, 2), (1, 4, 1), (2, 2, 1)):
            t0 = time.time()
            j = bench(model, groups * shards, shards, context, gen, threads)
            p = {"part": "decode", "round": rnd, "grid": "%dx%d" % (groups, shards),
                 "context": context,
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


def read_ceiling_sweep(model, sizes_mib):
    """The host's streaming read rate (bench's probe, one rank of two threads) by buffer size: an
    independent look at the cache size and the two rates part D fits."""
    for mib in sizes_mib:
        j = bench(model, 1, 1, 64, 2, 2, ["--warmup-tokens", "0"], read_mib=mib)
        emit({"part": "read_ceiling", "buffer_mib": mib, "mem_read_gbs": j["mem_read_gbs"]})


def lstsq(rows, y):
    """Least squares by the normal equations (a handful of unknowns; no numpy here)."""
    n = len(rows[0])
    m = [[sum(r[i] * r[j] for r in rows) for j in range(n)] +
         [sum(r[i] * t for r, t in zip(rows, y))] for i in range(n)]
    for i in range(n):
        pivot = max(range(i, n), key=lambda r: abs(m[r][i]))
        m[i], m[pivot] = m[pivot], m[i]
        if m[i][i] == 0:
            raise ZeroDivisionError("singular")
        for r in range(n):
            if r != i:
                f = m[r][i] / m[i][i]
                m[r] = [a - f * b for a, b in zip(m[r], m[i])]
    return [m[i][n] / m[i][i] for i in range(n)]


def cost_model(points):
    """t = c_cfg + min(S, C) / bw_cache + max(0, S - C) / bw_mem.

    S: the bytes every rank of the host reads for one decode token (bench's
    decode_bytes_per_token: all ranks' weights and the KV of the mean context). A host's ranks
    share its memory, caches and cores, so S is per host; on a GPU cluster, one rank per GPU, it
    is one rank's bytes. The first C bytes of a step's working set come from the last-level cache
    at bw_cache, the rest from memory at bw_mem. c_cfg: the step's fixed cost in one execution
    configuration, "team" (one rank with an OpenMP team of two threads, woken for every op) or
    "ranks" (four one-thread ranks on the two cores: the collectives and their scheduling).
    Fitted on 1x1 at every context and 1x4 at the smallest (C by a scan, the other four by least
    squares of the relative error); 1x4 at the other contexts and 2x2 at all are predictions,
    checked against their measurements. Each point is the best of the rounds."""
    by = {}
    for p in points:
        by.setdefault((p["grid"], p["context"]), []).append(p)
    best = {key: min(ps, key=lambda p: p["decode_ms_per_token"]) for key, ps in by.items()}
    ctxs = sorted({c for _, c in best})
    train = [("1x1", c) for c in ctxs if ("1x1", c) in best] + [("1x4", ctxs[0])]

    def row(p, cache):
        team = 1.0 if p["grid"] == "1x1" else 0.0
        s = p["decode_bytes_per_token"]
        return [team, 1.0 - team, min(s, cache), max(0.0, s - cache)]

    fit = None
    for cache_mb in range(8, 1025, 2):
        cache = cache_mb * 1e6
        ts = [best[k]["decode_ms_per_token"] / 1e3 for k in train]
        try:
            x = lstsq([[a / t for a in row(best[k], cache)] for k, t in zip(train, ts)],
                      [1.0] * len(train))
        except ZeroDivisionError:
            continue
        if x[2] <= 0 or x[3] <= 0:
            continue
        err = max(abs(sum(a * b for a, b in zip(row(best[k], cache), x)) / t - 1)
                  for k, t in zip(train, ts))
        if fit is None or err < fit[0]:
            fit = (err, cache, x)
    _, cache, x = fit
    emit({"part": "cost_model_fit", "cache_mb": cache / 1e6, "cache_gbs": 1 / x[2] / 1e9,
          "memory_gbs": 1 / x[3] / 1e9, "fixed_ms_team": x[0] * 1e3, "fixed_ms_ranks": x[1] * 1e3,
          "fitted_on": ["%s %d" % k for k in train]})
    worst = 0.0
    for key in sorted(best):
        p = best[key]
        pred = sum(a * b for a, b in zip(row(p, cache), x))
        ratio = pred * 1e3 / p["decode_ms_per_token"]
        if key not in train:
            worst = max(worst, abs(ratio - 1))
        emit({"part": "cost_model_check", "grid": key[0], "context": key[1],
              "predicted_ms": round(pred * 1e3, 4), "measured_ms": p["decode_ms_per_token"],
              "rounds": [round(q["decode_ms_per_token"], 4) for q in by[key]],
              "ratio": round(ratio, 3), "fitted": key in train})
    emit({"part": "cost_model_worst_prediction", "max_abs_error": round(worst, 3)})


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
    ap.add_argument("--rounds", type=int, default=1, help="part B's rounds (D takes the best)")
    ap.add_argument("--kv-memory", default="64MiB")
    ap.add_argument("--testbed-context", type=int, default=131072)
    ap.add_argument("--testbed-grids", default="4,2", help="seq shards of the 4-host runs")
    ap.add_argument("--parts", default="A,B,C,D,E")
    ap.add_argument("--from", dest="from_file", help="part B's JSON lines from an earlier run")
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
    if args.from_file:
        with open(args.from_file) as f:
            points = [p for p in map(json.loads, f) if p.get("part") == "decode"]
    if "B" in parts:
        points = decode_vs_context(model, [int(c) for c in args.contexts.split(",")], args.gen,
                                   args.rounds)
    if "C" in parts and args.testbed_context > 0:
        testbed_run(args.testbed_context, [int(s) for s in args.testbed_grids.split(",")])
    if "E" in parts:
        read_ceiling_sweep(model, [8, 16, 32, 48, 64, 96, 128, 256, 1024])
    if "D" in parts:
        if points:
            cost_model(points)
        predictions()


if __name__ == "__main__":
    main()
