"""One 2-rank server on stories260K: golden text through every client, 16 concurrent clients,
streaming, status/health/metrics, and the validation matrix."""

import os
import subprocess
import sys
import threading
import urllib.request

import harness
from harness import ErrorCode, GenerateRequest, KvshardError, SamplingParams, greedy

STORY = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the "
         "park. One day, she saw a big, red ball. She wanted to play with it, but it was too high. ")


class ApiTest(harness.ServerTestCase):
    @classmethod
    def server_options(cls):
        # Small prefill chunks, so long prompts are split and interleave with others' decoding.
        return {"extra": ["--max-tokens-per-step", "64"], "metrics": True}

    def golden(self):
        with open(harness.GOLDEN_ONCE) as f:
            return f.read()

    def test_generate_reproduces_golden_text(self):
        r = self.client.generate(greedy("Once upon a time", max_tokens=60))
        self.assertEqual(r.prompt_text + r.text + "\n", self.golden())
        self.assertEqual(r.finish_reason, "length")
        self.assertEqual(r.generated_tokens, 60)
        self.assertEqual(len(r.token_ids), 60)
        self.assertEqual(r.prompt_tokens, 5)
        self.assertGreater(r.timings.ttft_ms, 0)
        self.assertGreaterEqual(r.timings.total_ms, r.timings.ttft_ms)

    def test_cli_client_prints_what_generate_prints(self):
        out = subprocess.run(
            [harness.BIN, "client", "--port", str(self.server.port), "generate", "--prompt",
             "Once upon a time", "--max-tokens", "60", "--temperature", "0"],
            capture_output=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.decode(), self.golden())

    def test_python_example_prints_golden_text(self):
        example = os.path.join(harness.REPO, "examples", "python_client.py")
        out = subprocess.run(
            [sys.executable, example, "--port", str(self.server.port), "--prompt",
             "Once upon a time", "--max-tokens", "60"], capture_output=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.decode(), self.golden())

    def test_cli_status_and_health(self):
        out = subprocess.run([harness.BIN, "client", "--port", str(self.server.port), "health"],
                             capture_output=True, timeout=30)
        self.assertEqual((out.returncode, out.stdout), (0, b"serving\n"))
        out = subprocess.run([harness.BIN, "client", "--port", str(self.server.port), "status"],
                             capture_output=True, timeout=30)
        self.assertEqual(out.returncode, 0)
        self.assertIn(b'"layout": "tp=2"', out.stdout)

    def test_streaming_concatenation_equals_generate(self):
        prompt = STORY + "The next day"
        whole = self.client.generate(greedy(prompt, max_tokens=80))
        pieces, ids, result = self.client.stream(greedy(prompt, max_tokens=80), wait_ms=200)
        self.assertEqual("".join(pieces), whole.text)
        self.assertEqual(ids, list(whole.token_ids))
        self.assertEqual(result.text, whole.text)

    def test_sixteen_concurrent_clients_get_their_solo_text(self):
        prompts = []
        for i in range(16):
            if i % 3 == 0:  # long: ~300 tokens, prefilled in chunks of 64
                prompts.append((STORY * 4 + "Story %d:" % i, 40))
            else:
                prompts.append(("Once upon a time, number %d" % i, 30 + 5 * (i % 4)))
        solo = [self.client.generate(greedy(p, max_tokens=n)).text for p, n in prompts]
        results = [None] * len(prompts)
        barrier = threading.Barrier(len(prompts))

        def run(i):
            c = self.server.client()
            try:
                barrier.wait()
                p, n = prompts[i]
                if i % 2:
                    pieces, _, r = c.stream(greedy(p, max_tokens=n))
                    results[i] = ("".join(pieces), r)
                else:
                    r = c.generate(greedy(p, max_tokens=n))
                    results[i] = (r.text, r)
            finally:
                c.close()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for i, (p, n) in enumerate(prompts):
            self.assertIsNotNone(results[i], "client %d got no answer" % i)
            text, r = results[i]
            self.assertEqual(text, solo[i], "client %d" % i)
            self.assertEqual(r.finish_reason, "length")
        harness.assert_all_blocks_free(self, self.client)

    def test_status_reports_ranks_and_blocks(self):
        s = self.client.status()
        self.assertEqual(s.world_size, 2)
        self.assertEqual(s.layout, "tp=2")
        self.assertEqual([r.rank for r in s.ranks], [0, 1])
        for r in s.ranks:
            self.assertGreater(r.kv_blocks_total, 0)
            self.assertEqual(r.kv_heads, 2)
            self.assertTrue(r.host)
        self.assertEqual(s.max_context, 512)
        self.assertTrue(self.client.health().serving)

    def test_metrics_endpoint(self):
        self.client.generate(greedy("Once upon a time", max_tokens=8))
        url = "http://127.0.0.1:%d/metrics" % self.server.metrics_port
        body = urllib.request.urlopen(url, timeout=10).read().decode()
        for name in ["kvshard_queue_depth", 'kvshard_kv_blocks_used{rank="1"',
                     'kvshard_kv_blocks_free{rank="0"', "kvshard_tokens_per_second",
                     "kvshard_time_to_first_token_seconds_count", "kvshard_prefix_cache_hit_rate"]:
            self.assertIn(name, body)

    # --- validation: each is INVALID_REQUEST naming the field, and the server keeps serving ---

    def expect_invalid(self, request, field):
        with self.assertRaises(KvshardError) as cm:
            self.client.generate(request)
        e = cm.exception
        self.assertEqual(e.code, ErrorCode.INVALID_REQUEST, e.message)
        self.assertEqual(e.field, field, e.message)
        self.assertTrue(e.message)
        with self.assertRaises(KvshardError):  # submit refuses it the same way
            self.client.submit(request)
        self.assertTrue(self.client.health().serving)
        r = self.client.generate(greedy("Once upon a time", max_tokens=4))
        self.assertEqual(r.generated_tokens, 4)
        return e

    def test_invalid_empty_prompt(self):
        self.expect_invalid(greedy(""), "prompt")
        self.expect_invalid(GenerateRequest(max_tokens=4), "prompt")
        self.expect_invalid(greedy(prompt_ids=[]), "prompt_ids")

    def test_invalid_prompt_longer_than_context(self):
        e = self.expect_invalid(greedy(prompt_ids=[1] + [400] * 512, max_tokens=1), "prompt")
        self.assertIn("512", e.message)

    def test_invalid_max_tokens(self):
        self.expect_invalid(greedy("Once", max_tokens=0), "max_tokens")
        self.expect_invalid(greedy("Once", max_tokens=-5), "max_tokens")
        e = self.expect_invalid(greedy("Once", max_tokens=2**31 - 1), "max_tokens")
        self.assertIn("at most", e.message)

    def test_kv_budget_reports_the_positions_kept(self):
        # The 2-rank server's own text for the CLI golden's prompt with --kv-budget 16 of 43.
        prompt = ("Once upon a time, there was a little girl named Lily. She loved to play outside "
                  "in the park. One day, she saw a big red ball")
        with open(os.path.join(harness.REPO, "tests", "cli",
                               "stories260K_kv_budget16_n60.txt")) as f:
            golden = f.read()
        r = self.client.generate(greedy(prompt, max_tokens=60, kv_budget=16))
        self.assertEqual(r.prompt_text + r.text + "\n", golden)
        self.assertEqual((r.prompt_tokens, r.kv_positions_kept), (43, 16))
        r = self.client.generate(greedy(prompt, max_tokens=4, kv_budget=100))  # within: untouched
        self.assertEqual(r.kv_positions_kept, 43)
        r = self.client.generate(greedy(prompt, max_tokens=4))  # no budget: no field
        self.assertIsNone(r.kv_positions_kept)
        self.expect_invalid(greedy(prompt, kv_budget=-1), "kv_budget")

    def test_invalid_token_ids(self):
        self.expect_invalid(greedy(prompt_ids=[1, -1]), "prompt_ids")
        self.expect_invalid(greedy(prompt_ids=[1, 512]), "prompt_ids")

    def test_invalid_temperature(self):
        for t in [float("nan"), -0.5, float("inf")]:
            r = GenerateRequest(prompt="Once", max_tokens=4, sampling=SamplingParams(temperature=t))
            self.expect_invalid(r, "sampling.temperature")

    def test_invalid_top_p(self):
        for p in [0.0, -0.1, 1.5, float("nan")]:
            r = GenerateRequest(prompt="Once", max_tokens=4,
                                sampling=SamplingParams(temperature=1.0, top_p=p))
            self.expect_invalid(r, "sampling.top_p")

    def test_invalid_utf8_prompt(self):
        # python3-thrift only writes valid UTF-8 strings, so the bytes are patched into a frame.
        e = harness_invalid_utf8(self.server.port)
        self.assertEqual(e.code, ErrorCode.INVALID_REQUEST)
        self.assertEqual(e.field, "prompt")
        self.assertTrue(self.client.health().serving)

    def test_unknown_request_id(self):
        with self.assertRaises(KvshardError) as cm:
            self.client.poll(10**12, 0, 0)
        self.assertEqual(cm.exception.code, ErrorCode.NOT_FOUND)
        with self.assertRaises(KvshardError) as cm:
            self.client.cancel(10**12)
        self.assertEqual(cm.exception.code, ErrorCode.NOT_FOUND)


def harness_invalid_utf8(port):
    import socket
    import struct
    from thrift.protocol import TBinaryProtocol
    from thrift.transport import TTransport
    from kvshard_rpc import Kvshard

    marker = "MARKERMARKER"
    buf = TTransport.TMemoryBuffer()
    proto = TBinaryProtocol.TBinaryProtocol(buf)
    Kvshard.Client(proto).send_generate(greedy(marker, max_tokens=4))
    payload = buf.getvalue().replace(marker.encode(), b"Once \xff\xfe up")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(struct.pack(">i", len(payload)) + payload)
        head = b""
        while len(head) < 4:
            head += s.recv(4 - len(head))
        (n,) = struct.unpack(">i", head)
        body = b""
        while len(body) < n:
            body += s.recv(n - len(body))
    client = Kvshard.Client(TBinaryProtocol.TBinaryProtocol(TTransport.TMemoryBuffer(body)))
    try:
        client.recv_generate()
    except KvshardError as e:
        return e
    raise AssertionError("invalid UTF-8 was accepted")


class IncrementalStreamTest(harness.ServerTestCase):
    """Streamed text arrives as it is generated, not at the end. Each step sleeps 20 ms, so the
    check does not depend on how fast this machine decodes stories260K (80 tokens in a few ms
    can finish between two polls)."""

    @classmethod
    def server_options(cls):
        return {"step_delay_ms": 20}

    def test_tokens_arrive_incrementally(self):
        pieces, ids, result = self.client.stream(greedy(STORY + "The next day", max_tokens=40),
                                                 wait_ms=200)
        self.assertEqual("".join(pieces), result.text)
        self.assertEqual(len(ids), 40)
        self.assertGreater(len([p for p in pieces if p]), 5, "tokens arrive incrementally")


if __name__ == "__main__":
    harness.main()
