#!/usr/bin/python3
"""Multi-node decode cost (issue: cluster), on the network-namespace test bed (needs root).

Per-token decode time of one TP=2 job: both ranks on one host (shared memory), then one rank on
each of two hosts (TCP over veth), then with netem delay added to host 2's link. A cost model
explains the differences:

  t_token = t_compute + n_coll * (alpha + D_added) + bytes / beta

where n_coll = 2L + 3 collectives per step (2 all-reduces per layer, the logits gather, the
step plan's two broadcasts), alpha is the per-collective latency of the link, and D_added the
one-way delay added to host 2's link, paid once per collective (each is a synchronisation point
across the link). Tracing the critical path message by message gives 2L + 1 delays per step (the
all-reduces and the gather wait for host 2; rank 0's broadcasts do not); the measured slope is
closer to 2L + 3, which the per-collective model uses (docs/cluster.md shows both). bytes / beta is negligible at decode (one
[1, dim] f32 vector per all-reduce). alpha is fitted from the no-delay runs; the delayed runs are
predicted, then measured. Prints one JSON line per configuration.

    /usr/bin/python3 bench/multinode_bench.py [--work /tmp/kvshard-bench]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "cluster"))
import testbed  # noqa: E402
import harness  # noqa: E402
from harness import greedy  # noqa: E402

LAYERS = 4


def per_token_ms(client, tokens, repeats=3):
    client.generate(greedy(prompt_ids=[1, 300, 301], max_tokens=4))  # warm-up
    runs = [client.generate(greedy(prompt_ids=[1, 300 + i, 400 + i], max_tokens=tokens))
            for i in range(repeats)]
    return statistics.median(r.timings.per_token_ms for r in runs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=os.environ.get("WORK", "/tmp/kvshard-bench"))
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    reason = testbed.can_run()
    if reason:
        sys.exit("multinode_bench: " + reason)
    os.makedirs(args.work, exist_ok=True)
    model = os.path.join(args.work, "llama-60m")
    if not os.path.exists(os.path.join(model, "config.json")):
        subprocess.run([harness.BIN, "make-model", "--out", model, "--layers", str(LAYERS),
                        "--dim", "512", "--heads", "8", "--kv-heads", "2", "--ffn", "1408",
                        "--vocab", "4096", "--max-seq-len", "4096"], check=True,
                       capture_output=True)
    n_coll = 2 * LAYERS + 3  # see the docstring
    results = {}

    server = harness.Server(model=model)
    c = server.client()
    results["one_host"] = per_token_ms(c, args.tokens)
    c.close()
    assert server.stop() == 0
    print(json.dumps({"bench": "multinode_decode", "config": "1 host x 2 ranks (shared memory)",
                      "ms_per_token": round(results["one_host"], 3)}), flush=True)

    bed = testbed.Testbed(2, "kvb", "10.217.0")
    try:
        cluster = testbed.Cluster(bed, slots=1, model=model,
                                  extra=["--step-timeout-s", "60", "--heartbeat-timeout-s", "60"])
        c = cluster.client(timeout_ms=600000)
        base = per_token_ms(c, args.tokens)
        alpha_ms = (base - results["one_host"]) / n_coll
        print(json.dumps({"bench": "multinode_decode", "config": "2 hosts x 1 rank (TCP)",
                          "ms_per_token": round(base, 3), "collectives_per_token": n_coll,
                          "fitted_alpha_us_per_collective_over_shm": round(alpha_ms * 1e3, 1)}),
              flush=True)
        for delay in [1, 5, 20]:
            bed.netem(2, "delay %dms" % delay)
            try:
                measured = per_token_ms(c, min(args.tokens, 16), repeats=2)
            finally:
                bed.netem(2, "off")
            predicted = base + n_coll * delay
            print(json.dumps({"bench": "multinode_decode",
                              "config": "2 hosts x 1 rank + %d ms on host 2's link" % delay,
                              "ms_per_token": round(measured, 2),
                              "predicted_ms_per_token": round(predicted, 2),
                              "prediction_error": round(measured / predicted - 1, 3)}),
                  flush=True)
        c.close()
        assert cluster.stop() == 0
    finally:
        bed.down()


if __name__ == "__main__":
    main()
