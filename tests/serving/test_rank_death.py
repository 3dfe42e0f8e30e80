"""The failure path with clients waiting: 8 clients blocked in the blocking `generate` call while
a shard rank is SIGKILLed. Every client gets the declared NOT_SERVING error naming the dead rank
within seconds (no client hangs), health says why, and the job ends non-zero with no process left.

Under the `tsan` label the same test runs against the ThreadSanitizer build: handler threads then
wake and report while the engine thread fails every request, which is where a lock-order
inversion between a request's lock and the engine's lock would deadlock the server."""

import os
import signal
import subprocess
import threading
import time
import unittest

import harness
from harness import ErrorCode, KvshardError, greedy, wait_for

CLIENTS = 8


def rank_pids(port, exclude):
    return [p for p in harness.rank_processes(port) if p != exclude]


class RankDeathWithBlockedClients(unittest.TestCase):

    def test_sigkill_of_a_shard_while_8_clients_wait_in_generate(self):
        # Slow steps keep every request decoding when the rank dies.
        server = harness.Server(step_delay_ms=20, extra=["--max-seqs", "16"])
        self.addCleanup(lambda: server.proc.poll() is not None or server.kill())
        outcomes = [None] * CLIENTS

        def run(i):
            c = server.client(timeout_ms=60000)
            try:
                r = c.generate(greedy("Once upon a time", max_tokens=400))
                outcomes[i] = ("result", r.finish_reason, r.error)
            except KvshardError as e:
                outcomes[i] = ("error", e.code, e.message)
            except Exception as e:  # a broken connection is a failure too, reported below
                outcomes[i] = ("exception", type(e).__name__, str(e))
            finally:
                c.close()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        watcher = server.client()
        wait_for(lambda: watcher.status().running == CLIENTS, timeout=60)
        time.sleep(0.3)  # a few decode steps in: every client is blocked inside generate
        shards = rank_pids(server.port, server.rank0_pid)
        self.assertEqual(len(shards), 1, "expected one shard rank besides rank 0")
        t0 = time.time()
        os.kill(shards[0], signal.SIGKILL)
        for t in threads:
            t.join(30)
        waited = time.time() - t0
        print("\nall %d blocked clients answered %.2f s after the SIGKILL" % (CLIENTS, waited),
              flush=True)
        self.assertFalse(any(t.is_alive() for t in threads), "a client still waits in generate")
        host = os.uname().nodename
        for i, o in enumerate(outcomes):
            self.assertIsNotNone(o, "client %d got nothing" % i)
            self.assertEqual(o[0], "error", "client %d: %s" % (i, o))
            self.assertEqual(o[1], ErrorCode.NOT_SERVING, "client %d: %s" % (i, o))
            self.assertIn("rank 1 on %s" % host, o[2])
        self.assertLess(waited, 20)
        watcher.close()
        try:
            rc = server.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.fail("the job did not end after a rank died:\n" + server.read_log())
        self.assertNotEqual(rc, 0)
        wait_for(lambda: not rank_pids(server.port, -1), timeout=10)
        server.log.close()


if __name__ == "__main__":
    harness.main()
