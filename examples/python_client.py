#!/usr/bin/env python3
"""Stream a completion from a kvshard server with Debian's python3-thrift.

    python3 examples/python_client.py --port 9090 --prompt "Once upon a time" [--max-tokens 60]

Prints the prompt and the completion as `kvshard generate` does. The Python API is generated
from proto/kvshard.thrift by the build (build/gen-py); without a build, the thrift compiler is
run into a temporary folder."""

import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

try:
    import thrift  # noqa: F401
except ImportError:  # a python3 other than Debian's (pyenv, venv): use Debian's python3-thrift
    sys.path.append("/usr/lib/python3/dist-packages")


def import_api():
    gen = os.environ.get("KVSHARD_GEN_PY", os.path.join(REPO, "build", "gen-py"))
    if not os.path.isdir(os.path.join(gen, "kvshard_rpc")):
        gen = tempfile.mkdtemp(prefix="kvshard-gen-py-")
        subprocess.run(["thrift", "--gen", "py", "-out", gen,
                        os.path.join(REPO, "proto", "kvshard.thrift")], check=True)
    sys.path.insert(0, gen)


import_api()
from thrift.protocol import TBinaryProtocol  # noqa: E402
from thrift.transport import TSocket, TTransport  # noqa: E402
from kvshard_rpc import Kvshard  # noqa: E402
from kvshard_rpc.ttypes import GenerateRequest, KvshardError, SamplingParams  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9090)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--max-tokens", type=int, default=60)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    sock = TSocket.TSocket(args.host, args.port)
    sock.setTimeout(60000)
    transport = TTransport.TFramedTransport(sock)
    client = Kvshard.Client(TBinaryProtocol.TBinaryProtocol(transport))
    transport.open()
    request = GenerateRequest(
        prompt=args.prompt, max_tokens=args.max_tokens,
        sampling=SamplingParams(temperature=args.temperature, top_p=args.top_p, seed=args.seed))
    try:
        rid = client.submit(request)
        cursor = 0
        while True:  # Thrift has no server push: long-poll for the tokens past our cursor
            p = client.poll(rid, cursor, 1000)
            if cursor == 0:
                sys.stdout.write(p.prompt_text)
            sys.stdout.write(p.text)
            sys.stdout.flush()
            cursor = p.next_cursor
            if p.finished:
                break
    except KvshardError as e:
        print("error: %s" % e.message, file=sys.stderr)
        return 2
    finally:
        transport.close()
    sys.stdout.write("\n")
    r = p.result
    print("%d prompt tokens (%d cached) + %d generated (%s), first token after %.1f ms"
          % (r.prompt_tokens, r.cached_tokens, r.generated_tokens, r.finish_reason,
             r.timings.ttft_ms), file=sys.stderr)
    return 1 if r.finish_reason == "error" else 0


if __name__ == "__main__":
    sys.exit(main())
