"""Two hosts x two ranks over the network-namespace test bed (ranks talk TCP between hosts):
greedy outputs equal single-host outputs, status() shows both hosts, and 200 ms of added latency
with 5% loss changes nothing but the speed. Then four hosts x one rank as the 2D grids 1x4 and 2x2
(seq shards across hosts): a 16K-token request gives the output of one rank on one host."""

import os
import subprocess
import tempfile
import time
import unittest

import testbed  # first: it puts tests/serving (harness) on the path
import harness
from harness import greedy

PROMPTS = ["Once upon a time", "The little dog", "One day, Lily went to the park and"]


def single_host(prompt, max_tokens):
    """What `kvshard generate` prints on one host at the same tensor-parallel size (4)."""
    out = subprocess.run(harness.MPIRUN + ["-np", "4", harness.BIN, "generate", "--model",
                                           harness.STORIES, "--prompt", prompt, "--max-tokens",
                                           str(max_tokens), "--temperature", "0", "--threads", "1"],
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout


@unittest.skipIf(testbed.can_run(), testbed.can_run())
class MultinodeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.bed = testbed.Testbed(2, "kvm", "10.215.0")
        try:
            # Generous deadlines: the latency test adds 200 ms per round trip and drops packets.
            cls.cluster = testbed.Cluster(cls.bed, slots=2, extra=[
                "--step-timeout-s", "60", "--heartbeat-timeout-s", "60"])
        except Exception:
            cls.bed.down()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            rc = cls.cluster.stop()
            assert rc == 0, "cluster exit code %s\n%s" % (rc, cls.cluster.read_log())
            assert not cls.cluster.rank_processes(), "rank processes left behind"
        finally:
            cls.bed.down()

    def test_status_shows_ranks_on_both_hosts(self):
        c = self.cluster.client()
        s = c.status()
        c.close()
        self.assertEqual(s.world_size, 4)
        self.assertEqual([r.host for r in s.ranks], ["kvm1", "kvm1", "kvm2", "kvm2"])
        self.assertEqual(s.layout, "tp=4")

    def test_outputs_equal_single_host(self):
        c = self.cluster.client()
        for prompt in PROMPTS:
            r = c.generate(greedy(prompt, max_tokens=40))
            self.assertEqual(r.prompt_text + r.text + "\n", single_host(prompt, 40), prompt)
        c.close()

    def test_latency_and_loss_change_only_speed(self):
        c = self.cluster.client(timeout_ms=300000)
        start = time.time()
        clean = c.generate(greedy("Once upon a time", max_tokens=6))
        clean_s = time.time() - start
        self.bed.netem(2, "delay 200ms loss 5%")
        try:
            start = time.time()
            slow = c.generate(greedy("Once upon a time", max_tokens=6))
            slow_s = time.time() - start
        finally:
            self.bed.netem(2, "off")
        c.close()
        self.assertEqual(slow.text, clean.text)
        self.assertEqual(list(slow.token_ids), list(clean.token_ids))
        self.assertGreater(slow_s, clean_s)
        print("\nLATENCY: 6 tokens in %.2f s clean, %.2f s with 200 ms + 5%% loss (%.1f ms/token "
              "vs %.1f)" % (clean_s, slow_s, slow.timings.per_token_ms,
                            clean.timings.per_token_ms))


LONG_PROMPT = 16384
LONG_CONTEXT = LONG_PROMPT + 16


def long_context_model():
    """1 layer, dim 64, 4 heads / 2 KV heads: a 16K-token prefill takes seconds on 2 cores."""
    out = os.path.join(tempfile.mkdtemp(prefix="kvshard-long-"), "long")
    subprocess.run([harness.BIN, "make-model", "--out", out, "--seed", "5", "--layers", "1",
                    "--dim", "64", "--heads", "4", "--kv-heads", "2", "--ffn", "128", "--vocab",
                    "320", "--max-seq-len", str(LONG_CONTEXT)], check=True, capture_output=True)
    return out


def long_request():
    ids = [(i * 7919 + i // 13) % 320 for i in range(LONG_PROMPT)]
    return greedy(prompt_ids=ids, max_tokens=12)


@unittest.skipIf(testbed.can_run(), testbed.can_run())
class SeqShardsMultinodeTest(unittest.TestCase):
    """Four hosts x one rank; every host holds a quarter of the request's KV positions (1x4) or
    half of them for half of the heads (2x2)."""

    @classmethod
    def setUpClass(cls):
        cls.model = long_context_model()
        one = harness.Server(model=cls.model, np=1,
                             extra=["--kv-blocks", str(LONG_CONTEXT // 16 + 1),
                                    "--max-tokens-per-step", "2048"])
        try:
            c = one.client(timeout_ms=600000)
            cls.reference = list(c.generate(long_request()).token_ids)
            c.close()
        finally:
            assert one.stop() == 0, one.read_log()
        cls.bed = testbed.Testbed(4, "kvq", "10.217.0")

    @classmethod
    def tearDownClass(cls):
        cls.bed.down()

    def check(self, shards):
        # Each rank's pool holds its shard of the one request, and no more.
        blocks = LONG_CONTEXT // (16 * shards) + 1
        cluster = testbed.Cluster(self.bed, slots=1, model=self.model,
                                  launch_args=["--seq-shards", str(shards)],
                                  extra=["--kv-blocks", str(blocks), "--max-tokens-per-step",
                                         "2048", "--step-timeout-s", "120"])
        try:
            c = cluster.client(timeout_ms=600000)
            s = c.status()
            self.assertEqual([r.host for r in s.ranks], ["kvq1", "kvq2", "kvq3", "kvq4"])
            self.assertEqual([(r.head_group, r.seq_shard) for r in s.ranks],
                             [(r // shards, r % shards) for r in range(4)])
            self.assertGreaterEqual(s.kv_capacity_tokens, LONG_CONTEXT)
            start = time.time()
            r = c.generate(long_request())
            seconds = time.time() - start
            self.assertEqual(list(r.token_ids), self.reference)
            self.assertEqual(r.prompt_tokens, LONG_PROMPT)
            harness.assert_all_blocks_free(self, c)
            c.close()
            print("\nLONG CONTEXT %dx%d over 4 hosts: %d-token prompt + 12 tokens in %.1f s "
                  "(TTFT %.0f ms, %.1f ms/token)" % (4 // shards, shards, LONG_PROMPT, seconds,
                                                     r.timings.ttft_ms, r.timings.per_token_ms))
        finally:
            rc = cluster.stop()
        self.assertEqual(rc, 0, cluster.read_log())
        log = cluster.read_log()
        self.assertIn("rank 3 -> ", log)
        self.assertIn("(head group %d, seq shard %d)" % (3 // shards, 3 % shards), log)
        self.assertFalse(cluster.rank_processes(), "rank processes left behind")

    def test_one_by_four_equals_one_host(self):
        self.check(4)

    def test_two_by_two_equals_one_host(self):
        self.check(2)


if __name__ == "__main__":
    harness.main()
