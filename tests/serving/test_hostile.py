"""Hostile frames: each is refused or dropped with bounded memory, and a well-behaved client
running alongside keeps getting the right answers."""

import os
import random
import socket
import struct
import threading
import time
import unittest

import harness
from harness import greedy

# Binary protocol, strict: version word | method name | seqid, then the args struct.
VERSION_CALL = 0x80010001
T_STOP, T_I32, T_STRING, T_STRUCT, T_LIST = 0, 8, 11, 12, 15


def call_header(name, seqid=1):
    return struct.pack(">I", VERSION_CALL) + struct.pack(">i", len(name)) + name + \
        struct.pack(">i", seqid)


def frame(payload):
    return struct.pack(">i", len(payload)) + payload


def field(ftype, fid):
    return struct.pack(">bh", ftype, fid)


class HostileTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = harness.Server(extra=["--idle-timeout-ms", "1500"])
        with open(harness.GOLDEN_ONCE) as f:
            cls.golden = f.read()
        # A well-behaved client generating all along; every answer must be the golden text.
        cls.stop_bystander = threading.Event()
        cls.bystander_results = []
        cls.bystander = threading.Thread(target=cls.run_bystander, daemon=True)
        cls.bystander.start()

    @classmethod
    def run_bystander(cls):
        c = cls.server.client()
        while not cls.stop_bystander.is_set():
            r = c.generate(greedy("Once upon a time", max_tokens=60))
            cls.bystander_results.append(r.prompt_text + r.text + "\n")
        c.close()

    @classmethod
    def tearDownClass(cls):
        cls.stop_bystander.set()
        cls.bystander.join(60)
        rc = cls.server.stop()
        assert rc == 0, "server exit code %d\n%s" % (rc, cls.server.read_log())
        assert cls.bystander_results, "the bystander got no answer"
        assert all(t == cls.golden for t in cls.bystander_results), "a bystander answer changed"

    def send_and_expect_drop(self, data, timeout=10):
        """Sends `data`; the server must close the connection (or answer an exception) within
        `timeout` s, and rank 0's memory must not balloon."""
        rss_before = self.server.rank0_rss_kib()
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=timeout) as s:
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass
            start = time.time()
            received = b""
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    received += chunk
            except ConnectionResetError:
                pass
            except socket.timeout:
                self.fail("the server held a hostile connection for over %d s" % timeout)
            elapsed = time.time() - start
        rss_growth_mib = (self.server.rank0_rss_kib() - rss_before) / 1024
        self.assertLess(rss_growth_mib, 80, "rank 0 grew by %.0f MiB" % rss_growth_mib)
        self.assertTrue(self.server.serving())
        return received, elapsed

    def test_frame_over_the_limit(self):
        self.send_and_expect_drop(struct.pack(">i", 1 << 30) + b"\x00" * 64)

    def test_negative_frame_size(self):
        self.send_and_expect_drop(struct.pack(">i", -5) + b"\x00" * 64)

    def test_string_declaring_two_gigabytes(self):
        body = call_header(b"generate") + field(T_STRUCT, 1) + field(T_STRING, 1) + \
            struct.pack(">i", 2**31 - 1) + b"abc"
        self.send_and_expect_drop(frame(body))

    def test_list_declaring_two_billion_items(self):
        body = call_header(b"generate") + field(T_STRUCT, 1) + field(T_LIST, 2) + \
            struct.pack(">bi", T_I32, 2**31 - 1) + b"\x00" * 16
        self.send_and_expect_drop(frame(body))

    def test_deeply_nested_structs(self):
        depth = 5000  # unknown struct fields nested far beyond the recursion limit
        body = call_header(b"generate") + field(T_STRUCT, 1) + \
            (field(T_STRUCT, 99) * depth) + bytes([T_STOP]) * (depth + 2)
        self.send_and_expect_drop(frame(body))

    def test_random_bytes(self):
        rng = random.Random(1234)
        for n in [3, 4, 17, 1000, 65536]:
            self.send_and_expect_drop(bytes(rng.getrandbits(8) for _ in range(n)))
        for _ in range(5):  # random payloads in a well-formed frame
            self.send_and_expect_drop(frame(os.urandom(rng.randint(1, 4096))))

    def test_half_a_frame_then_silence(self):
        body = call_header(b"generate") + field(T_STRUCT, 1)
        data = struct.pack(">i", 1000) + body  # declares 1000 bytes, sends a few dozen
        _, elapsed = self.send_and_expect_drop(data, timeout=20)
        self.assertLess(elapsed, 15, "a stalled connection is dropped after the idle timeout")

    def test_unknown_method(self):
        received, _ = self.send_and_expect_drop(
            frame(call_header(b"no_such_method") + bytes([T_STOP])))
        self.assertIn(b"no_such_method", received, "answered with an application exception")


if __name__ == "__main__":
    harness.main()
