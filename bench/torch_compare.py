#!/usr/bin/env python3
"""PyTorch side of the GPU comparison: the same shapes on the same device as kvshard_gpu_bench.

  1. Decode attention through torch.nn.functional.scaled_dot_product_attention (one query token
     per sequence, 32 query / 8 KV heads of 128 with enable_gqa, bf16, contiguous KV) at the same
     contexts and batches as kvshard's paged attention.
  2. A plain PyTorch decode loop: a random-weight model of Llama-3-8B's shape (bf16, static KV
     cache, eager ops: F.linear, RMSNorm, RoPE, SDPA), batch 1 at the same context, time per token.
  3. The same model's prefill of the same prompt length, in TFLOP/s.

Ceilings measured in the same run: a device-to-device copy (GB/s, read + write) and a bf16
matmul at the prefill's shapes. With --kvshard-json (kvshard_gpu_bench --json output) it prints
kvshard's figures beside PyTorch's and their ratios. Timing: CUDA events, median of --repeats
after warm-up, fresh random inputs, KV copies rotated so L2 never serves a repeat.

Usage (on the GPU machine):
  build/kvshard_gpu_bench --json > gpu_bench.jsonl
  python3 bench/torch_compare.py --kvshard-json gpu_bench.jsonl
  python3 bench/torch_compare.py --device cpu --smoke   # checks the script itself, tiny sizes
"""
import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def timer(device, repeats, fn):
    """Median milliseconds of fn(i) over `repeats` runs after two warm-ups."""
    for i in range(2):
        fn(i)
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        for i in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            stop = torch.cuda.Event(enable_timing=True)
            start.record()
            fn(i + 2)
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
    else:
        for i in range(repeats):
            t0 = time.perf_counter()
            fn(i + 2)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def ceilings(args, device):
    n = (8 << 20) if args.smoke else (1 << 30)
    src = torch.randn(n // 4, device=device)
    dst = torch.empty_like(src)
    ms = timer(device, args.repeats, lambda i: dst.copy_(src))
    copy_gbs = 2 * n / (ms * 1e-3) / 1e9
    t = 64 if args.smoke else args.prefill_tokens
    best = 0.0
    for k, m in ((args.dim, args.ffn), (args.dim, args.dim), (args.ffn, args.dim)):
        x = torch.randn(t, k, device=device, dtype=torch.bfloat16)
        w = torch.randn(m, k, device=device, dtype=torch.bfloat16) * 0.05
        ms = timer(device, args.repeats, lambda i: F.linear(x, w))
        tflops = 2 * t * k * m / (ms * 1e-3) / 1e12
        print(f"  torch bf16 matmul {t} x {k} x {m}: {ms:.3f} ms  {tflops:.1f} TFLOP/s")
        best = max(best, tflops)
    print(f"  device copy: {copy_gbs:.1f} GB/s (read + write)")
    return copy_gbs, best


def sdpa_decode(args, device, copy_gbs):
    results = {}
    qh, kvh, hd = args.q_heads, args.kv_heads, args.head_dim
    for ctx in args.contexts:
        for batch in args.batches:
            kv_bytes = batch * ctx * kvh * hd * 2 * 2
            copies = 2 if args.smoke else max(2, (256 << 20) // kv_bytes + 1)
            ks = [torch.randn(batch, kvh, ctx, hd, device=device, dtype=torch.bfloat16)
                  for _ in range(copies)]
            vs = [torch.randn_like(k) for k in ks]
            q = torch.randn(batch, qh, 1, hd, device=device, dtype=torch.bfloat16)
            ms = timer(device, args.repeats, lambda i: F.scaled_dot_product_attention(
                q, ks[i % copies], vs[i % copies], enable_gqa=True))
            gbs = kv_bytes / (ms * 1e-3) / 1e9
            results[(ctx, batch)] = ms
            print(f"  torch SDPA decode ctx {ctx:7d} batch {batch:3d}: {ms:8.4f} ms  "
                  f"{gbs:7.1f} GB/s  {100 * gbs / copy_gbs:5.1f}% of copy")
            del ks, vs
    return results


class Model:
    """Llama with random bf16 weights; a static KV cache of max_len positions for batch 1."""

    def __init__(self, args, device, max_len):
        g = torch.Generator(device="cpu").manual_seed(0)

        def w(*shape):
            return (torch.randn(*shape, generator=g) * 0.02).to(device=device, dtype=torch.bfloat16)

        self.args = args
        d, q, kv, f = args.dim, args.q_heads * args.head_dim, args.kv_heads * args.head_dim, args.ffn
        self.embed = w(args.vocab, d)
        self.lm_head = w(args.vocab, d)
        self.layers = [dict(wq=w(q, d), wk=w(kv, d), wv=w(kv, d), wo=w(d, q),
                            gate=w(f, d), up=w(f, d), down=w(d, f)) for _ in range(args.layers)]
        self.k = [torch.zeros(1, args.kv_heads, max_len, args.head_dim, device=device,
                              dtype=torch.bfloat16) for _ in range(args.layers)]
        self.v = [torch.zeros_like(k) for k in self.k]
        inv = 1.0 / (500000.0 ** (torch.arange(0, args.head_dim, 2, device=device).float()
                                  / args.head_dim))
        pos = torch.arange(max_len, device=device).float()
        freqs = torch.outer(pos, inv)
        self.cos, self.sin = freqs.cos(), freqs.sin()

    def weight_bytes(self):
        n = self.lm_head.numel() + self.args.dim  # one embedding row
        for layer in self.layers:
            n += sum(t.numel() for t in layer.values())
        return 2 * n

    def rope(self, x, start):  # x [1, heads, T, hd], half pairing
        t = x.shape[2]
        cos, sin = self.cos[start:start + t], self.sin[start:start + t]
        x1, x2 = x[..., : x.shape[-1] // 2].float(), x[..., x.shape[-1] // 2:].float()
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)

    @staticmethod
    def norm(x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype)

    def forward(self, tokens, start):
        a = self.args
        t = tokens.shape[0]
        x = self.embed[tokens]  # [T, d]
        for i, layer in enumerate(self.layers):
            h = self.norm(x)
            q = F.linear(h, layer["wq"]).view(t, a.q_heads, a.head_dim).transpose(0, 1)[None]
            k = F.linear(h, layer["wk"]).view(t, a.kv_heads, a.head_dim).transpose(0, 1)[None]
            v = F.linear(h, layer["wv"]).view(t, a.kv_heads, a.head_dim).transpose(0, 1)[None]
            q, k = self.rope(q, start), self.rope(k, start)
            self.k[i][:, :, start:start + t] = k
            self.v[i][:, :, start:start + t] = v
            kk, vv = self.k[i][:, :, :start + t], self.v[i][:, :, :start + t]
            o = F.scaled_dot_product_attention(q, kk, vv, is_causal=(t > 1 and start == 0),
                                               enable_gqa=True)
            x = x + F.linear(o[0].transpose(0, 1).reshape(t, -1), layer["wo"])
            h = self.norm(x)
            x = x + F.linear(F.silu(F.linear(h, layer["gate"])) * F.linear(h, layer["up"]),
                             layer["down"])
        return F.linear(self.norm(x[-1:]), self.lm_head)


def model_bench(args, device, copy_gbs, gemm_tflops):
    prefill = 64 if args.smoke else args.prefill_tokens
    context = 32 if args.smoke else args.decode_context
    model = Model(args, device, max(prefill, context) + 8)
    with torch.inference_mode():
        tokens = torch.randint(0, args.vocab, (prefill,), device=device)
        ms_prefill = timer(device, max(3, args.repeats // 4), lambda i: model.forward(tokens, 0))
        q, kv = args.q_heads * args.head_dim, args.kv_heads * args.head_dim
        layer_params = args.dim * (2 * q + 2 * kv) + 3 * args.dim * args.ffn
        flops = (2.0 * prefill * layer_params * args.layers
                 + 4.0 * args.layers * args.q_heads * args.head_dim * prefill * (prefill + 1) / 2
                 + 2.0 * args.vocab * args.dim)
        tflops = flops / (ms_prefill * 1e-3) / 1e12
        print(f"  torch prefill {prefill} tokens: {ms_prefill:9.2f} ms  {tflops:7.1f} TFLOP/s  "
              f"{100 * tflops / gemm_tflops:5.1f}% of the matmul ceiling")
        model.forward(torch.randint(0, args.vocab, (context,), device=device), 0)
        one = torch.randint(0, args.vocab, (1,), device=device)
        ms_decode = timer(device, args.repeats, lambda i: model.forward(one, context))
        kv_bytes = 2 * args.layers * args.kv_heads * args.head_dim * 2 * (context + 1)
        gbs = (model.weight_bytes() + kv_bytes) / (ms_decode * 1e-3) / 1e9
        print(f"  torch decode batch 1 at context {context}: {ms_decode:7.3f} ms/token  "
              f"{gbs:7.1f} GB/s  {100 * gbs / copy_gbs:5.1f}% of copy")
    return ms_prefill, ms_decode


def load_kvshard(path):
    out = {"attention": {}, "decode": None, "prefill": None}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            if r.get("bench") == "paged_attention":
                out["attention"][(r["context"], r["batch"])] = r["ms"]
            elif r.get("bench") == "decode":
                out["decode"] = r["ms_per_token"]
            elif r.get("bench") == "prefill":
                out["prefill"] = r["ms"]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: check the script runs")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--decode-context", type=int, default=1024)
    p.add_argument("--prefill-tokens", type=int, default=8192)
    p.add_argument("--contexts", type=int, nargs="+", default=[4096, 32768, 131072])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--kvshard-json", help="kvshard_gpu_bench --json output, for the ratios")
    args = p.parse_args()
    args.dim, args.ffn, args.q_heads, args.kv_heads, args.head_dim, args.vocab = (
        4096, 14336, 32, 8, 128, 128256)
    if args.smoke:
        args.dim, args.ffn, args.q_heads, args.kv_heads, args.head_dim, args.vocab = (
            256, 512, 8, 2, 32, 1000)
        args.layers, args.contexts, args.batches, args.repeats = 2, [100], [1, 2], 3
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {name}")
    torch.manual_seed(0)
    copy_gbs, gemm_tflops = ceilings(args, device)
    attention = sdpa_decode(args, device, copy_gbs)
    ms_prefill, ms_decode = model_bench(args, device, copy_gbs, gemm_tflops)
    if not args.kvshard_json:
        return 0
    kv = load_kvshard(args.kvshard_json)
    print("\nside by side (ms; ratio = PyTorch time / kvshard time, > 1: kvshard faster)")
    print(f"  {'what':44s} {'kvshard':>10s} {'PyTorch':>10s} {'ratio':>7s}")
    rows = [(f"decode attention ctx {c} batch {b}", kv["attention"].get((c, b)), attention[(c, b)])
            for (c, b) in sorted(attention)]
    rows.append((f"decode step, batch 1, ctx {args.decode_context}", kv["decode"], ms_decode))
    rows.append((f"prefill {args.prefill_tokens} tokens", kv["prefill"], ms_prefill))
    for what, k, t in rows:
        ratio = f"{t / k:7.2f}" if k else "      -"
        kk = f"{k:10.4f}" if k else "         -"
        print(f"  {what:44s} {kk} {t:10.4f} {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
