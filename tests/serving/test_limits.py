"""A small KV pool and a short queue: too-long requests are refused with the limit, a full queue
answers OVERLOADED at once, and preemption under KV pressure never changes an output."""

import threading

import harness
from harness import ErrorCode, KvshardError, greedy

BLOCKS, BLOCK_SIZE = 24, 16


class LimitsTest(harness.ServerTestCase):
    @classmethod
    def server_options(cls):
        return {"extra": ["--kv-blocks", str(BLOCKS), "--max-queue", "8", "--max-seqs", "8"],
                "step_delay_ms": 5}

    def test_too_long_for_the_kv_cache(self):
        with self.assertRaises(KvshardError) as cm:
            self.client.generate(greedy(prompt_ids=[1] + [300] * 99, max_tokens=300))
        e = cm.exception
        self.assertEqual(e.code, ErrorCode.TOO_LONG, e.message)
        self.assertEqual(e.limit, BLOCKS * BLOCK_SIZE)
        self.assertIn(str(BLOCKS * BLOCK_SIZE), e.message)
        self.assertTrue(self.client.health().serving)

    def test_preemption_keeps_outputs(self):
        # Each request needs up to 11 blocks; six at once need 66 of 24: the youngest are
        # preempted and recomputed.
        prompts = ["Once upon a time, %s" % w for w in
                   ["Lily", "Tom", "a cat", "the sun", "a dog", "Ben"]]
        solo = [self.client.generate(greedy(p, max_tokens=160)) for p in prompts]
        before = self.client.status().preemptions
        results = [None] * len(prompts)

        def run(i):
            c = self.server.client()
            try:
                results[i] = c.generate(greedy(prompts[i], max_tokens=160))
            finally:
                c.close()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        for i in range(len(prompts)):
            self.assertEqual(results[i].text, solo[i].text, "request %d" % i)
            self.assertEqual(list(results[i].token_ids), list(solo[i].token_ids))
        s = harness.assert_all_blocks_free(self, self.client)
        self.assertGreater(s.preemptions, before, "the pool was too small: someone was preempted")
        self.assertGreater(sum(r.preemptions for r in results), 0)

    def test_overload_answers_at_once_and_admitted_requests_finish(self):
        n = 80  # 10x the queue bound
        outcome = [None] * n
        barrier = threading.Barrier(n)

        def run(i):
            c = self.server.client()
            try:
                barrier.wait()
                try:
                    outcome[i] = ("ok", c.generate(greedy("Once upon a time", max_tokens=20)))
                except KvshardError as e:
                    outcome[i] = ("error", e)
            finally:
                c.close()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        ok = [r for kind, r in outcome if kind == "ok"]
        errors = [e for kind, e in outcome if kind == "error"]
        self.assertEqual(len(ok) + len(errors), n)
        self.assertGreater(len(errors), 0, "80 at once must overflow a queue of 8")
        self.assertGreater(len(ok), 0)
        for e in errors:
            self.assertEqual(e.code, ErrorCode.OVERLOADED, e.message)
        expected = self.client.generate(greedy("Once upon a time", max_tokens=20)).text
        for r in ok:
            self.assertEqual((r.finish_reason, r.text), ("length", expected))
        harness.assert_all_blocks_free(self, self.client)


if __name__ == "__main__":
    harness.main()
