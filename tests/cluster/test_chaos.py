"""Chaos: a rank that dies, stops, loses its network or cannot start. Each case must end with a
clear error to the clients (NOT_SERVING naming the rank and its host), every rank exiting
non-zero within seconds, and no process left behind. Each case prints its detection time."""

import os
import signal
import subprocess
import time
import unittest

import testbed  # first: it puts tests/serving (harness) on the path
import harness
from harness import greedy, wait_for

STEP_DELAY_MS = 20  # keeps a 400-token request decoding for seconds


def shard_pids(server):
    return [p for p in testbed.rank_processes(server.port) if p != server.rank0_pid]


def start_long_request(client):
    rid = client.submit(greedy("Once upon a time", max_tokens=400))
    wait_for(lambda: len(client.poll(rid, 0, 100).token_ids) >= 3)
    return rid


def final(client, rid, timeout=30):
    return wait_for(lambda: (lambda p: p if p.finished else None)(client.poll(rid, 0, 500)),
                    timeout=timeout, interval=0.01).result


def report(case, seconds):
    print("\nDETECTION %s: %.2f s" % (case, seconds), flush=True)


class LocalChaosTest(unittest.TestCase):
    """One host, mpirun -np 2 (rank 0 + one shard)."""

    def start(self):
        server = harness.Server(step_delay_ms=STEP_DELAY_MS)
        self.addCleanup(lambda: server.proc.poll() is not None or server.kill())
        return server

    def assert_job_ends(self, server, timeout=20):
        start = time.time()
        try:
            rc = server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.fail("the job did not end within %d s:\n%s" % (timeout, server.read_log()))
        self.assertNotEqual(rc, 0, "a failed job must exit non-zero (so it gets restarted)")
        wait_for(lambda: not testbed.rank_processes(server.port), timeout=10)
        return time.time() - start

    def assert_not_serving_error(self, result, rank):
        self.assertEqual(result.finish_reason, "error")
        self.assertIn("not serving", result.error)
        self.assertIn("rank %d on %s" % (rank, os.uname().nodename), result.error)

    def test_sigkill_of_a_shard_mid_decode(self):
        server = self.start()
        c = server.client()
        rid = start_long_request(c)
        t0 = time.time()
        os.kill(shard_pids(server)[0], signal.SIGKILL)
        r = final(c, rid)
        report("shard SIGKILL mid-decode", time.time() - t0)
        self.assertLess(r.generated_tokens, 400)
        self.assert_not_serving_error(r, 1)
        self.assert_job_ends(server)

    def test_sigstop_of_a_shard_inside_an_all_reduce(self):
        server = self.start()
        c = server.client()
        rid = start_long_request(c)
        shard = shard_pids(server)[0]
        t0 = time.time()
        os.kill(shard, signal.SIGSTOP)  # mid-decode: rank 0 is waiting in an all-reduce for it
        try:
            r = final(c, rid)
            report("shard SIGSTOP in an all-reduce", time.time() - t0)
            self.assert_not_serving_error(r, 1)
            # While the job winds down, whoever still reaches rank 0 hears it is not serving.
            try:
                late = harness.Client(server.port, 5000)
            except Exception:
                late = None  # already gone: also an answer
            if late:
                try:
                    self.assertFalse(late.health().serving)
                except AssertionError:
                    raise
                except Exception:
                    pass  # the connection closed under us: the job ended
                finally:
                    late.close()
            self.assert_job_ends(server)
        finally:
            try:
                os.kill(shard, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def test_sigkill_of_rank_0(self):
        server = self.start()
        c = server.client()
        start_long_request(c)
        t0 = time.time()
        os.kill(server.rank0_pid, signal.SIGKILL)
        ended = self.assert_job_ends(server)
        report("rank 0 SIGKILL (shards gone)", time.time() - t0)
        self.assertLess(ended, 20)

    def test_shard_that_cannot_open_the_model(self):
        port = harness.free_port()
        cmd = harness.MPIRUN + ["-np", "1", harness.BIN, "serve", "--model", harness.STORIES,
                                "--port", str(port), ":", "-np", "1", harness.BIN, "serve",
                                "--model", "/nonexistent/model", "--port", str(port)]
        t0 = time.time()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        report("shard cannot open the model at start-up", time.time() - t0)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("rank 1", out.stderr)
        self.assertIn("/nonexistent/model", out.stderr)
        self.assertNotIn("ready:", out.stderr, "it must never report ready")
        self.assertFalse(testbed.rank_processes(port))


@unittest.skipIf(testbed.can_run(), testbed.can_run())
class LinkDownTest(unittest.TestCase):
    """Two hosts x one rank over the test bed; host 2's link goes down mid-request."""

    def test_link_down_mid_request(self):
        bed = testbed.Testbed(2, "kvc", "10.216.0")
        self.addCleanup(bed.down)
        cluster = testbed.Cluster(bed, slots=1, step_delay_ms=STEP_DELAY_MS)
        self.addCleanup(lambda: cluster.proc.poll() is not None or cluster.kill())
        c = cluster.client()
        rid = start_long_request(c)
        t0 = time.time()
        bed.link(2, "down")
        r = final(c, rid)
        report("host link down mid-request", time.time() - t0)
        self.assertEqual(r.finish_reason, "error")
        self.assertIn("rank 1 on kvc2", r.error)
        c.close()
        # Rank 0 ends the job; kvshard-launch ends an mpirun that cannot reach the cut host.
        self.assert_cluster_ends(cluster)
        report("host link down: every rank gone", time.time() - t0)

    def assert_cluster_ends(self, cluster):
        """kvshard-launch exits non-zero within 60 s and no rank is left on any host."""
        try:
            rc = cluster.wait(60)
        except subprocess.TimeoutExpired:
            self.fail("the job did not end within 60 s:\n" + cluster.read_log())
        self.assertNotEqual(rc, 0, cluster.read_log())
        wait_for(lambda: not cluster.rank_processes(), timeout=20)

    def test_sigkill_of_a_seq_shard_rank_over_four_hosts(self):
        # 1x4: every rank holds a quarter of each sequence's KV; killing one mid-decode leaves
        # the others waiting in the attention all-gather, which must fail in time.
        bed = testbed.Testbed(4, "kvx", "10.218.0")
        self.addCleanup(bed.down)
        cluster = testbed.Cluster(bed, slots=1, step_delay_ms=STEP_DELAY_MS,
                                  launch_args=["--seq-shards", "4"])
        self.addCleanup(lambda: cluster.proc.poll() is not None or cluster.kill())
        c = cluster.client()
        self.assertEqual(c.status().seq_shards, 4)
        rid = start_long_request(c)
        victim = [p for p in shard_pids(cluster) if world_rank(p) == 2]
        self.assertEqual(len(victim), 1)
        t0 = time.time()
        os.kill(victim[0], signal.SIGKILL)
        try:
            r = final(c, rid)
        except Exception as e:
            self.fail("no answer after the kill (%s):\n%s" % (e, cluster.read_log()))
        report("seq-shard rank SIGKILL mid-decode (1x4, 4 hosts)", time.time() - t0)
        self.assertLess(time.time() - t0, 15)
        self.assertEqual(r.finish_reason, "error")
        self.assertIn("not serving", r.error)
        self.assertIn("rank 2 on kvx3", r.error)
        c.close()
        self.assert_cluster_ends(cluster)
        report("seq-shard rank SIGKILL: every rank gone", time.time() - t0)


def world_rank(pid):
    with open("/proc/%d/environ" % pid, "rb") as f:
        for item in f.read().split(b"\0"):
            if item.startswith(b"OMPI_COMM_WORLD_RANK="):
                return int(item.split(b"=", 1)[1])
    return -1


if __name__ == "__main__":
    harness.main()
