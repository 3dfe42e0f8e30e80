"""One request's KV capacity on a 2D grid (head groups x seq shards), through the server.

With the same --kv-memory per rank, a 2-KV-head model on 4 ranks as heads only (4x1) replicates
each KV head twice, so one request holds half what the cluster's memory could; the grids with seq
shards (2x2, 1x4) hold exactly (KV memory of the cluster) / (KV bytes per token of the model). A
request one token past the heads-only capacity is refused with TOO_LONG stating it, and served by
the seq-sharded grids with the output of a heads-only server that has room for it. status()
reports the grid and where every rank sits in it."""

import json
import os
import subprocess
import tempfile

import harness
from harness import ErrorCode, KvshardError, greedy

LAYERS, HEADS, KV_HEADS, DIM = 2, 8, 2, 128
HEAD_DIM = DIM // HEADS
KV_MEMORY = 16384  # bytes per rank
RANKS = 4
MODEL_BYTES_PER_TOKEN = 2 * LAYERS * KV_HEADS * HEAD_DIM * 4  # K and V, f32
CLUSTER_CAPACITY = RANKS * KV_MEMORY // MODEL_BYTES_PER_TOKEN  # 128 tokens
HEADS_ONLY_CAPACITY = CLUSTER_CAPACITY // 2  # each KV head on 2 of the 4 ranks


def make_model():
    out = os.path.join(tempfile.mkdtemp(prefix="kvshard-seq-"), "gqa")
    subprocess.run([harness.BIN, "make-model", "--out", out, "--seed", "11", "--layers",
                    str(LAYERS), "--dim", str(DIM), "--heads", str(HEADS), "--kv-heads",
                    str(KV_HEADS), "--ffn", "128", "--vocab", "320", "--max-seq-len", "512"],
                   check=True, capture_output=True)
    return out


class SeqShardsTest(harness.unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = make_model()
        # One token more than heads-only holds: prompt + max_tokens = 65.
        cls.request = greedy(prompt_ids=[(i * 37 + 5) % 320 for i in range(57)], max_tokens=8)
        # A longer one, whose prompt fills whole logical blocks (block_size x seq shards tokens:
        # the prefix cache's unit) on every grid, asked twice.
        cls.long_request = greedy(prompt_ids=[(i * 13 + 2) % 320 for i in range(110)],
                                  max_tokens=8)
        big = harness.Server(model=cls.model, np=RANKS, extra=["--kv-blocks", "64"])
        try:
            c = big.client()
            cls.reference = c.generate(cls.request).token_ids
            cls.long_reference = c.generate(cls.long_request).token_ids
            c.close()
        finally:
            assert big.stop() == 0, big.read_log()

    def serve(self, seq_shards):
        return harness.Server(model=self.model, np=RANKS,
                              extra=["--kv-memory", "16KiB", "--seq-shards", str(seq_shards)])

    def test_heads_only_refuses_one_token_past_its_capacity(self):
        server = self.serve(1)
        try:
            c = server.client()
            s = c.status()
            self.assertEqual(s.kv_capacity_tokens, HEADS_ONLY_CAPACITY)
            self.assertEqual((s.head_groups, s.seq_shards), (4, 1))
            with self.assertRaises(KvshardError) as cm:
                c.generate(self.request)
            e = cm.exception
            self.assertEqual(e.code, ErrorCode.TOO_LONG, e.message)
            self.assertEqual(e.limit, HEADS_ONLY_CAPACITY)
            self.assertIn("%d tokens for one request" % HEADS_ONLY_CAPACITY, e.message)
            self.assertTrue(c.health().serving)
            c.close()
        finally:
            self.assertEqual(server.stop(), 0, server.read_log())
        self.assertIn("KV capacity of one request: %d tokens" % HEADS_ONLY_CAPACITY,
                      server.read_log())

    def check_grid(self, groups, shards):
        server = self.serve(shards)
        try:
            c = server.client()
            s = c.status()
            # The formula: no replication left, up to block rounding (none here).
            self.assertEqual(s.kv_capacity_tokens, CLUSTER_CAPACITY)
            self.assertEqual((s.head_groups, s.seq_shards), (groups, shards))
            self.assertIn("%dx%d" % (groups, shards), s.layout)
            self.assertEqual([(r.head_group, r.seq_shard) for r in s.ranks],
                             [(r // shards, r % shards) for r in range(RANKS)])
            for r in s.ranks:
                self.assertEqual(r.kv_bytes, KV_MEMORY)
            # The request heads-only refused, with the output of a server that had room for it.
            self.assertEqual(c.generate(self.request).token_ids, self.reference)
            # Near the capacity, twice: the second time its full blocks come from the cache.
            first = c.generate(self.long_request)
            self.assertEqual(first.token_ids, self.long_reference)
            again = c.generate(self.long_request)
            self.assertEqual(again.token_ids, self.long_reference)
            self.assertEqual(again.cached_tokens, 110 // (16 * shards) * 16 * shards)
            harness.assert_all_blocks_free(self, c)
            c.close()
        finally:
            self.assertEqual(server.stop(), 0, server.read_log())
        log = server.read_log()
        self.assertIn("as %d head groups x %d seq shards" % (groups, shards), log)
        self.assertIn("KV capacity of one request: %d tokens" % CLUSTER_CAPACITY, log)
        self.assertIn("rank 3 on", log)
        self.assertIn("(head group %d, seq shard %d)" % (3 // shards, 3 % shards), log)

    def test_two_by_two_serves_it(self):
        self.check_grid(2, 2)

    def test_one_by_four_serves_it(self):
        self.check_grid(1, 4)

    def test_a_grid_the_model_cannot_split_is_refused_with_the_ones_that_work(self):
        out = subprocess.run(harness.MPIRUN + ["-np", str(RANKS), harness.BIN, "serve", "--model",
                                               self.model, "--seq-shards", "3", "--port", str(harness.free_port())],
                             capture_output=True, text=True, timeout=60)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("grids (head groups x seq shards) that work for 4 ranks: 1x4, 2x2, 4x1",
                      out.stdout + out.stderr)


if __name__ == "__main__":
    harness.main()
