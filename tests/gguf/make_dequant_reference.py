#!/usr/bin/python3
"""Random ggml blocks and their values as the `gguf` Python package (gguf-py, llama.cpp's own)
dequantizes them, for tests/unit/gguf_test.cc. Run by hand (`pip install gguf`); CI reads the
committed dequant_reference.json.

    /usr/bin/python3 tests/gguf/make_dequant_reference.py
"""
import json
import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

HERE = os.path.dirname(os.path.abspath(__file__))
# type -> (block bytes, offsets of the f16 scale fields to set to sane values)
LAYOUT = {T.Q8_0: (34, [0]), T.Q4_0: (18, [0]), T.Q4_1: (20, [0, 2]), T.Q4_K: (144, [0, 2]),
          T.Q6_K: (210, [208]), T.F16: (2, []), T.BF16: (2, [])}


def main():
    rng = np.random.default_rng(20261201)
    out = {}
    for t, (size, scales) in LAYOUT.items():
        blocks = 3 if size > 2 else 96
        raw = rng.integers(0, 256, size=blocks * size, dtype=np.uint8)
        for b in range(blocks):
            for off in scales:
                v = np.float16(rng.uniform(-0.05, 0.05) if off == 2 and t == T.Q4_1 else
                               rng.uniform(0.001, 0.05))
                raw[b * size + off:b * size + off + 2] = np.frombuffer(v.tobytes(), dtype=np.uint8)
        if t == T.F16:
            raw = rng.standard_normal(blocks).astype(np.float16).view(np.uint8)
        if t == T.BF16:
            raw = (rng.standard_normal(blocks).astype(np.float32).view(np.uint32) >> 16).astype(
                np.uint16).view(np.uint8)
        values = quants.dequantize(raw, t).astype(np.float32).ravel()
        out[t.name] = {"type": int(t), "hex": raw.tobytes().hex(), "values": values.tolist()}
    with open(os.path.join(HERE, "dequant_reference.json"), "w") as f:
        json.dump(out, f)
    print({k: len(v["values"]) for k, v in out.items()})


if __name__ == "__main__":
    main()
