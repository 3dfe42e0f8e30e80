"""Cancel while queued, during prefill, mid-decode and after finishing, and clients that
disconnect: each request ends with exactly one terminal status and no KV block leaks."""

import time

import harness
from harness import greedy, wait_for

LONG = "Once upon a time, there was a little girl named Lily. She loved to play outside. " * 5


class CancelTest(harness.ServerTestCase):
    @classmethod
    def server_options(cls):
        # One sequence at a time (so a second request stays queued), prefill in chunks of 8
        # tokens, and every step slowed to 15 ms so the test can act in each state.
        return {"extra": ["--max-seqs", "1", "--max-tokens-per-step", "8"], "step_delay_ms": 15}

    def state(self, rid):
        return self.client.poll(rid, 0, 0)

    def final(self, rid):
        p = wait_for(lambda: (lambda q: q if q.finished else None)(self.client.poll(rid, 0, 500)))
        return p.result

    def test_cancel_while_queued(self):
        running = self.client.submit(greedy("Once upon a time", max_tokens=60))
        queued = self.client.submit(greedy("Once upon a time", max_tokens=60))
        wait_for(lambda: self.state(running).state == "decode")
        self.assertEqual(self.state(queued).state, "queued")
        self.assertTrue(self.client.cancel(queued))
        r = self.final(queued)
        self.assertEqual(r.finish_reason, "cancelled")
        self.assertEqual(r.generated_tokens, 0)
        self.assertFalse(self.client.cancel(queued), "a second cancel finds it ended")
        self.assertEqual(self.final(running).finish_reason, "length")
        harness.assert_all_blocks_free(self, self.client)

    def test_cancel_during_prefill(self):
        rid = self.client.submit(greedy(LONG, max_tokens=20))
        wait_for(lambda: self.state(rid).state == "prefill")
        p = self.state(rid)
        self.assertLess(p.prefilled_tokens, p.prompt_tokens)
        self.assertTrue(self.client.cancel(rid))
        r = self.final(rid)
        self.assertEqual(r.finish_reason, "cancelled")
        self.assertEqual(r.generated_tokens, 0)
        harness.assert_all_blocks_free(self, self.client)

    def test_cancel_mid_decode(self):
        rid = self.client.submit(greedy("Once upon a time", max_tokens=200))
        wait_for(lambda: len(self.state(rid).token_ids) >= 5)
        self.assertTrue(self.client.cancel(rid))
        r = self.final(rid)
        self.assertEqual(r.finish_reason, "cancelled")
        self.assertGreaterEqual(r.generated_tokens, 5)
        self.assertLess(r.generated_tokens, 200)
        # The tokens it did produce are the greedy ones.
        full = self.client.generate(greedy("Once upon a time", max_tokens=r.generated_tokens))
        self.assertEqual(list(r.token_ids), list(full.token_ids))
        harness.assert_all_blocks_free(self, self.client)

    def test_cancel_after_finish(self):
        r = self.client.generate(greedy("Once upon a time", max_tokens=3))
        self.assertFalse(self.client.cancel(r.request_id))
        self.assertEqual(self.final(r.request_id).finish_reason, "length")

    def test_disconnect_mid_stream_frees_request(self):
        c = self.server.client()
        rid = c.submit(greedy("Once upon a time", max_tokens=300))
        c.poll(rid, 0, 1000)
        c.close()
        r = self.final(rid)
        self.assertEqual(r.finish_reason, "cancelled")
        self.assertLess(r.generated_tokens, 300)
        harness.assert_all_blocks_free(self, self.client)

    def test_disconnect_during_blocking_generate(self):
        before = self.client.status().requests_finished
        c = self.server.client()
        c.rpc.send_generate(greedy("Once upon a time", max_tokens=300))
        time.sleep(0.3)
        c.close()
        # Its id is unknown to us, but it must end (cancelled) well before 300 tokens' time.
        wait_for(lambda: self.client.status().requests_finished > before, timeout=3)
        harness.assert_all_blocks_free(self, self.client)


if __name__ == "__main__":
    harness.main()
