"""Prefix cache on a long-context random-weight model: the second question about the same
~2,000-token document reuses its KV, outputs with a hit equal outputs from a cold cache, salts
isolate tenants, and eviction under pressure never serves wrong KV."""

import os
import subprocess
import tempfile

import harness
from harness import document, greedy


def make_model(directory):
    # The synthetic vocabulary encodes text byte by byte: a 2,000-character document is 2,000
    # tokens.
    subprocess.run([harness.BIN, "make-model", "--out", directory, "--layers", "2", "--dim", "64",
                    "--heads", "4", "--kv-heads", "2", "--ffn", "128", "--vocab", "300",
                    "--max-seq-len", "4096", "--seed", "5"], check=True, capture_output=True)


def ask(doc, question, salt=None, max_tokens=24):
    r = greedy(doc + "\n\nQuestion: " + question + "\nAnswer:", max_tokens=max_tokens)
    if salt is not None:
        r.cache_salt = salt
    return r


class PrefixCacheTest(harness.ServerTestCase):
    @classmethod
    def server_options(cls):
        cls.dir = tempfile.mkdtemp(prefix="kvshard-prefix-")
        cls.model = os.path.join(cls.dir, "model")
        make_model(cls.model)
        # 320 blocks of 16 = 5,120 tokens: two documents fit, a third evicts.
        return {"model": cls.model, "extra": ["--kv-blocks", "320", "--max-tokens-per-step", "256"]}

    def test_second_question_reuses_the_document(self):
        doc = document(1)
        first = self.client.generate(ask(doc, "Who?", salt="t1"))
        self.assertEqual(first.cached_tokens, 0)
        self.assertGreaterEqual(first.prompt_tokens, 2000)
        second = self.client.generate(ask(doc, "Where?", salt="t1"))
        # Everything up to the last full block before the questions differ is shared.
        self.assertGreaterEqual(second.cached_tokens, 2000 - 16)
        self.assertLess(second.cached_tokens, second.prompt_tokens)
        # The same question with a hit gives what a cold cache gives.
        again = self.client.generate(ask(doc, "Who?", salt="t1"))
        self.assertGreater(again.cached_tokens, 2000 - 16)
        self.assertEqual(again.text, first.text)
        self.assertEqual(list(again.token_ids), list(first.token_ids))
        cold = self.client.generate(ask(doc, "Where?", salt="never-used-salt"))
        self.assertEqual(cold.cached_tokens, 0)
        self.assertEqual(cold.text, second.text)
        harness.assert_all_blocks_free(self, self.client)

    def test_salts_never_share_blocks(self):
        doc = document(2, n=600)
        a = self.client.generate(ask(doc, "Q", salt="tenant-a"))
        self.assertEqual(a.cached_tokens, 0)
        b = self.client.generate(ask(doc, "Q", salt="tenant-b"))
        self.assertEqual(b.cached_tokens, 0, "another tenant's blocks were shared")
        none = self.client.generate(ask(doc, "Q"))
        self.assertEqual(none.cached_tokens, 0)
        a2 = self.client.generate(ask(doc, "Q", salt="tenant-a"))
        self.assertGreater(a2.cached_tokens, 0)
        self.assertEqual(a.text, b.text)
        self.assertEqual(a.text, a2.text)

    def test_eviction_under_pressure_keeps_outputs(self):
        docs = [document(10 + i) for i in range(4)]
        first = [self.client.generate(ask(d, "What?", salt="ev")).text for d in docs]
        # Four documents of ~126 blocks cannot all stay cached in 320 blocks: the early ones are
        # evicted (least recently used first) while the late ones still hit.
        again = [self.client.generate(ask(d, "What?", salt="ev")) for d in docs]
        self.assertEqual([r.text for r in again], first)
        s = harness.assert_all_blocks_free(self, self.client)
        self.assertGreater(s.prefix_cache_hits, 0)
        self.assertLessEqual(s.kv_blocks_cached, 320)

    def test_concurrent_questions_share_one_document(self):
        import threading
        doc = document(3)
        solo = self.client.generate(ask(doc, "Alone?", salt="cc")).text
        results = [None] * 4

        def run(i):
            c = self.server.client()
            try:
                results[i] = c.generate(ask(doc, "Alone?", salt="cc"))
            finally:
                c.close()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for r in results:
            self.assertEqual(r.text, solo)
            self.assertGreater(r.cached_tokens, 0)
        harness.assert_all_blocks_free(self, self.client)


if __name__ == "__main__":
    harness.main()
