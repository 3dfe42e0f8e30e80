#!/usr/bin/env python3
"""Writes broken copies of a good model directory, one defect each, for the CLI error tests.

usage: make_bad_models.py GOOD_MODEL_DIR OUT_DIR
"""
import json
import os
import shutil
import struct
import sys


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def write_safetensors(path, header, body):
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + body)


def clone(good, out, name):
    d = os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(good, d)
    return d


def main():
    good, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    st = os.path.join(good, "model.safetensors")
    header, body = read_safetensors(st)
    with open(st, "rb") as f:
        raw = f.read()
    names = [k for k in header if k != "__metadata__"]
    big = max(names, key=lambda k: header[k]["data_offsets"][1] - header[k]["data_offsets"][0])

    d = clone(good, out, "truncated")
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(raw[: len(raw) // 2])

    d = clone(good, out, "absurd_header_length")
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", 1 << 62) + raw[8:])

    d = clone(good, out, "offsets_out_of_range")
    h = json.loads(json.dumps(header))
    b, e = h[big]["data_offsets"]
    h[big]["data_offsets"] = [b + len(body), e + len(body)]
    write_safetensors(os.path.join(d, "model.safetensors"), h, body)

    d = clone(good, out, "overlapping")
    h = json.loads(json.dumps(header))
    others = sorted(names, key=lambda k: h[k]["data_offsets"][0])
    first, second = others[0], others[1]
    span = h[second]["data_offsets"][1] - h[second]["data_offsets"][0]
    start = h[first]["data_offsets"][0]
    h[second]["data_offsets"] = [start, start + span]
    write_safetensors(os.path.join(d, "model.safetensors"), h, body)

    d = clone(good, out, "missing_tensor")
    h = json.loads(json.dumps(header))
    del h["model.norm.weight"]
    write_safetensors(os.path.join(d, "model.safetensors"), h, body)

    d = clone(good, out, "shape_mismatch")
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    cfg["intermediate_size"] = cfg["intermediate_size"] * 2
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)

    d = clone(good, out, "impossible_config")
    cfg2 = dict(cfg)
    cfg2["intermediate_size"] = cfg["intermediate_size"] // 2
    cfg2["num_key_value_heads"] = 3
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg2, f)

    d = clone(good, out, "not_json_config")
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write("{ this is not json")

    d = clone(good, out, "no_weights")
    os.remove(os.path.join(d, "model.safetensors"))


if __name__ == "__main__":
    main()
