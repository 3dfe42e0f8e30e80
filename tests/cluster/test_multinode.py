"""Two hosts x two ranks over the network-namespace test bed (ranks talk TCP between hosts):
greedy outputs equal single-host outputs, status() shows both hosts, and 200 ms of added latency
with 5% loss changes nothing but the speed."""

import subprocess
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


if __name__ == "__main__":
    harness.main()
