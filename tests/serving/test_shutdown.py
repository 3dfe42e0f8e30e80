"""SIGTERM/SIGINT on rank 0: no new requests, in-flight ones finish within the grace period (or
are cancelled after it), and every rank exits 0."""

import os
import signal
import time
import unittest

import harness
from harness import ErrorCode, KvshardError, greedy, wait_for


class ShutdownTest(unittest.TestCase):
    def test_in_flight_request_finishes_within_grace(self):
        server = harness.Server(extra=["--shutdown-grace-s", "30"], step_delay_ms=10)
        c = server.client()
        rid = c.submit(greedy("Once upon a time", max_tokens=150))
        wait_for(lambda: len(c.poll(rid, 0, 100).token_ids) > 0)
        os.kill(server.rank0_pid, signal.SIGTERM)
        wait_for(lambda: not server.serving(), timeout=10)
        late = server.client()
        with self.assertRaises(KvshardError) as cm:
            late.generate(greedy("Once", max_tokens=2))
        late.close()
        self.assertEqual(cm.exception.code, ErrorCode.NOT_SERVING)
        p = wait_for(lambda: (lambda q: q if q.finished else None)(c.poll(rid, 0, 500)))
        self.assertEqual(p.result.finish_reason, "length")
        self.assertEqual(p.result.generated_tokens, 150)
        self.assertEqual(server.proc.wait(60), 0, server.read_log())

    def test_grace_over_cancels_and_exits_zero(self):
        server = harness.Server(extra=["--shutdown-grace-s", "0.5"], step_delay_ms=20)
        c = server.client()
        rid = c.submit(greedy("Once upon a time", max_tokens=400))
        wait_for(lambda: len(c.poll(rid, 0, 100).token_ids) > 0)
        start = time.time()
        os.kill(server.rank0_pid, signal.SIGINT)
        p = wait_for(lambda: (lambda q: q if q.finished else None)(c.poll(rid, 0, 500)))
        self.assertEqual(p.result.finish_reason, "cancelled")
        self.assertIn("shut down", p.result.error)
        self.assertEqual(server.proc.wait(60), 0, server.read_log())
        self.assertLess(time.time() - start, 20)

    def test_idle_server_stops_at_once(self):
        server = harness.Server()
        start = time.time()
        self.assertEqual(server.stop(), 0, server.read_log())
        self.assertLess(time.time() - start, 10)


if __name__ == "__main__":
    harness.main()
