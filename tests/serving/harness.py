"""Shared pieces of the serving tests: start a real `kvshard serve` under mpirun, connect Thrift
clients to it, stop it cleanly. Tests run with Debian's python3 (python3-thrift) and the Python
API that the build generates into build/gen-py."""

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

BUILD = os.environ.get("KVSHARD_BUILD_DIR", os.path.join(os.path.dirname(__file__), "../../build"))
REPO = os.environ.get("KVSHARD_REPO_DIR", os.path.join(os.path.dirname(__file__), "../.."))
sys.path.insert(0, os.path.join(BUILD, "gen-py"))

from thrift.protocol import TBinaryProtocol  # noqa: E402
from thrift.transport import TSocket, TTransport  # noqa: E402
from kvshard_rpc import Kvshard  # noqa: E402
from kvshard_rpc.ttypes import (ErrorCode, GenerateRequest, KvshardError,  # noqa: E402,F401
                                SamplingParams)

BIN = os.environ.get("KVSHARD_BIN", os.path.join(BUILD, "kvshard"))
MPIRUN = os.environ.get("KVSHARD_MPIRUN", "mpirun --allow-run-as-root --oversubscribe "
                        "--mca mpi_yield_when_idle 1 --mca btl self,vader,tcp").split()
STORIES = os.path.join(REPO, "models", "stories260K")
GOLDEN_ONCE = os.path.join(STORIES, "golden_prompt_once_t0_n64.txt")


RANK_BINARIES = ("kvshard", "kvshard_tsan")  # the plain build and the ThreadSanitizer one


def rank_processes(port):
    """kvshard rank processes (not mpirun, not the launcher) serving on `port`, anywhere."""
    out = subprocess.run(["pgrep", "-f", "serve .*--port %d( |$)" % port],
                         capture_output=True, text=True).stdout
    pids = []
    for p in out.split():
        try:
            with open("/proc/%s/comm" % p) as f:
                if f.read().strip() in RANK_BINARIES:
                    pids.append(int(p))
        except OSError:
            pass
    return pids


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """What a started server (one host or a test-bed cluster) offers: a client, health, its log,
    a hard kill. Subclasses set port, host, proc (its own process group), log and log_path."""
    host = "127.0.0.1"

    def client(self, timeout_ms=60000):
        return Client(self.port, timeout_ms, host=self.host)

    def serving(self):
        try:
            c = self.client(timeout_ms=3000)
        except Exception:
            return False
        try:
            return c.health().serving
        except Exception:
            return False
        finally:
            c.close()

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()

    def read_log(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")


class Server(ServerProcess):
    """`mpirun -np N kvshard serve ...` on a free port; stop() asks rank 0 to shut down (SIGTERM)
    and returns mpirun's exit code."""

    def __init__(self, model=STORIES, np=2, extra=(), metrics=False, step_delay_ms=0):
        self.port = free_port()
        self.metrics_port = free_port() if metrics else 0
        self.dir = tempfile.mkdtemp(prefix="kvshard-serve-")
        self.pid_file = os.path.join(self.dir, "rank0.pid")
        self.log_path = os.path.join(self.dir, "serve.log")
        cmd = MPIRUN + ["-np", str(np), BIN, "serve", "--model", model, "--port", str(self.port),
                        "--pid-file", self.pid_file, "--threads", "1"] + list(extra)
        if metrics:
            cmd += ["--metrics-port", str(self.metrics_port)]
        self.log = open(self.log_path, "wb")
        env = dict(os.environ)
        if step_delay_ms:
            env["KVSHARD_DEBUG_STEP_DELAY_MS"] = str(step_delay_ms)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env)
        deadline = time.time() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited during start-up:\n" + self.read_log())
            if os.path.exists(self.pid_file) and self.serving():
                break
            if time.time() > deadline:
                self.kill()
                raise RuntimeError("server not serving after 60 s:\n" + self.read_log())
            time.sleep(0.1)
        with open(self.pid_file) as f:
            self.rank0_pid = int(f.read())

    def stop(self, timeout=60):
        """SIGTERM to rank 0: a clean shutdown; returns mpirun's exit code."""
        if self.proc.poll() is None:
            try:
                os.kill(self.rank0_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("server did not stop within %d s:\n%s" % (timeout, self.read_log()))
        finally:
            self.log.close()

    def rank0_rss_kib(self):
        with open("/proc/%d/status" % self.rank0_pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


class Client:
    """A Thrift client over its own connection (framed transport, binary protocol)."""

    def __init__(self, port, timeout_ms=60000, host="127.0.0.1"):
        sock = TSocket.TSocket(host, port)
        sock.setTimeout(timeout_ms)
        self.transport = TTransport.TFramedTransport(sock)
        self.protocol = TBinaryProtocol.TBinaryProtocol(self.transport)
        self.rpc = Kvshard.Client(self.protocol)
        self.transport.open()

    def __getattr__(self, name):
        return getattr(self.rpc, name)

    def close(self):
        self.transport.close()

    def stream(self, request, wait_ms=1000):
        """submit + poll until finished; returns (text pieces, token ids, final result)."""
        rid = self.rpc.submit(request)
        cursor, pieces, ids = 0, [], []
        while True:
            p = self.rpc.poll(rid, cursor, wait_ms)
            pieces.append(p.text)
            ids.extend(p.token_ids)
            cursor = p.next_cursor
            if p.finished:
                return pieces, ids, p.result


def document(seed, n=2000):
    """A reproducible text of n characters (one token per byte in the synthetic vocabulary)."""
    rng = random.Random(seed)
    words = ["river", "stone", "lamp", "garden", "north", "quiet", "ledger", "bridge", "amber"]
    text = ""
    while len(text) < n:
        text += rng.choice(words) + " "
    return text[:n]


def greedy(prompt=None, prompt_ids=None, max_tokens=32, **kw):
    r = GenerateRequest(max_tokens=max_tokens, sampling=SamplingParams(temperature=0.0), **kw)
    if prompt is not None:
        r.prompt = prompt
    if prompt_ids is not None:
        r.prompt_ids = prompt_ids
    return r


def wait_for(predicate, timeout=30, interval=0.005):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met within %s s" % timeout)


def assert_all_blocks_free(test, client, timeout=10):
    """Every rank's KV blocks are free once the server has drained (cached prefixes count as
    free: they are reclaimable)."""
    deadline = time.time() + timeout
    while True:
        s = client.status()
        if s.running == 0 and s.queue_depth == 0 and all(
                r.kv_blocks_free == r.kv_blocks_total for r in s.ranks):
            return s
        if time.time() > deadline:
            test.fail("KV blocks not all free after drain: %s" % s)
        time.sleep(0.05)


class ServerTestCase(unittest.TestCase):
    """One server for the whole class (server_options() says how), a client to it, and a
    clean stop at the end: every rank must exit 0."""

    @classmethod
    def server_options(cls):
        return {}

    @classmethod
    def setUpClass(cls):
        cls.server = Server(**cls.server_options())
        cls.client = cls.server.client()

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        rc = cls.server.stop()
        assert rc == 0, "server exit code %d\n%s" % (rc, cls.server.read_log())


def main():
    unittest.main(verbosity=2)
