#!/usr/bin/python3
"""Makes the tokenizer corpus and the reference ids that tests/unit/hf_tokenizer_test.cc checks.

  corpus.jsonl: one string per line, {"text": ...} or {"hex": ...} for bytes that are not valid
      UTF-8, drawn (seeded) from English prose (Debian's licence texts), code (Python's standard
      library), whitespace runs, digits, CJK, emoji, other scripts, invalid
      UTF-8 and special-token text.
  <name>.ids.jsonl: the ids of each corpus line from the Python `tokenizers` library (no special
      tokens added), for each tokenizer.json given as NAME=PATH, or NAME=gguf:PATH for the
      tokenizer a GGUF file stores (read with llama.cpp's gguf-py and built as a `tokenizers`
      BPE: its vocabulary and merges, control and user-defined tokens as added tokens, and the
      pre-tokenizer of SmolLM2's tokenizer.json, Digits(individual) + ByteLevel; only the
      "smollm" pre-tokenizer family is built here).

Bytes that are not UTF-8 are given to `tokenizers` as bytes.decode("utf-8", errors="replace"),
which is what kvshard does with them. Run by hand (needs `pip install tokenizers`); CI only reads
the committed outputs:

    /usr/bin/python3 tests/tokenizer/make_reference.py llama3.2=assets/llama3.2/tokenizer.json \
        smollm2=gguf:assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
"""

import glob
import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def prose(rng, n):
    paras = []
    for path in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                paras += [p.strip() for p in f.read().split("\n\n") if len(p.strip()) > 20]
    out = rng.sample(paras, min(n // 2, len(paras)))
    words = " ".join(paras).split()
    while len(out) < n:  # sentences cut at random points, with their spaces and punctuation
        i = rng.randrange(len(words) - 30)
        out.append(" ".join(words[i:i + rng.randint(1, 30)]))
    return out


def code(rng, n):
    files = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))
    out = []
    while len(out) < n:
        with open(rng.choice(files), encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")
        i = rng.randrange(max(1, len(lines) - 12))
        out.append("\n".join(lines[i:i + rng.randint(1, 12)]))
    return out


def whitespace(rng, n):
    pieces = [" ", "  ", "\t", "\n", "\r\n", "\n\n", "   ", "\u00a0", "\u3000", "\u2009", "\f", "\v"]
    out = []
    for _ in range(n):
        s = "".join(rng.choice(pieces) * rng.randint(1, 6) for _ in range(rng.randint(1, 6)))
        if rng.random() < 0.6:  # between words
            s = rng.choice(["a", "word", "x=1", "fn(", "Hello", "!"]) + s + rng.choice(["b", "end", ")", "Z", ""])
        out.append(s)
    out.append(" " * 1000)
    out.append("\n" * 300 + "x")
    return out


def digits(rng, n):
    out = []
    for _ in range(n):
        k = rng.randrange(6)
        if k == 0:
            s = str(rng.randrange(10 ** rng.randint(1, 25)))
        elif k == 1:
            s = "%.*f" % (rng.randint(1, 8), rng.uniform(-1e6, 1e6))
        elif k == 2:
            s = "%d-%03d-%04d" % (rng.randrange(1000), rng.randrange(1000), rng.randrange(10000))
        elif k == 3:
            s = "abc%ddef%d" % (rng.randrange(10 ** 6), rng.randrange(100))
        elif k == 4:
            s = "".join(rng.choice("0123456789٠١٢٣٤٥٦٧٨٩०१२३४५６７８９²³½") for _ in range(rng.randint(1, 12)))
        else:
            s = "In %d, %d%% of %s cost $%d,%03d.%02d" % (rng.randint(1900, 2100), rng.randrange(100),
                                                       "items", rng.randrange(1000), rng.randrange(1000),
                                                       rng.randrange(100))
        out.append(s)
    return out


def cjk(rng, n):
    fixed = ["东京是日本的首都。", "我爱自然语言处理！", "こんにちは、世界。カタカナとひらがな。",
             "한국어 문장입니다. 안녕하세요?", "漢字、かな、カナ、ＡＢＣ全角",
             "北京欢迎你 Beijing 2008", "「引用」『二重』【括弧】"]
    ranges = [(0x4E00, 0x9FFF), (0x3040, 0x309F), (0x30A0, 0x30FF), (0xAC00, 0xD7A3),
              (0x3000, 0x303F), (0xFF00, 0xFFEF), (0x20000, 0x2A6DF)]
    out = list(fixed)
    while len(out) < n:
        lo, hi = rng.choice(ranges)
        s = "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 20)))
        if rng.random() < 0.3:
            s += rng.choice([" ", "，", "。", " and ", "\n"]) + "".join(
                chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(rng.randint(1, 8)))
        out.append(s)
    return out


def emoji(rng, n):
    singles = [chr(c) for c in list(range(0x1F600, 0x1F64F)) + list(range(0x1F300, 0x1F5FF)) +
               list(range(0x1F900, 0x1F9FF)) + list(range(0x2600, 0x26FF))]
    seqs = ["👨‍👩‍👧‍👦", "👍🏽", "🏳️‍🌈", "🇫🇷🇯🇵", "❤️", "1️⃣", "🧑🏿‍💻", "👩‍❤️‍💋‍👨"]
    out = []
    for _ in range(n):
        s = "".join(rng.choice(singles + seqs) for _ in range(rng.randint(1, 6)))
        if rng.random() < 0.5:
            s = rng.choice(["Great job ", "ok", "lol", "", "Party time: "]) + s + rng.choice(["", "!", " yes", "\n"])
        out.append(s)
    return out


def scripts(rng, n):
    fixed = ["Привет, мир! Как дела?", "مرحبا بالعالم", "नमस्ते दुनिया", "Γειά σου Κόσμε",
             "שלום עולם", "ça, naïve café, façade, déjà vu", "Zürich Straße über", "e\u0301 n\u0303 a\u0308",
             "Ǆ ǅ ǆ ﬁ ﬂ", "İstanbul ıi", "ՀԱՅԱՍՏԱՆ", "ทดสอบภาษาไทย", "Tiếng Việt có dấu"]
    ranges = [(0x0400, 0x04FF), (0x0600, 0x06FF), (0x0900, 0x097F), (0x0370, 0x03FF),
              (0x00C0, 0x024F), (0x0E00, 0x0E7F), (0x0300, 0x036F), (0x2000, 0x206F), (0x2190, 0x22FF)]
    out = list(fixed)
    while len(out) < n:
        lo, hi = rng.choice(ranges)
        out.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 15))))
    return out


def invalid(rng, n):
    out = []
    for _ in range(n):
        k = rng.randrange(4)
        if k == 0:
            b = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif k == 1:  # valid text with a stray byte
            t = rng.choice(["hello world", "naïve", "日本語", "emoji 😀 here"]).encode()
            i = rng.randrange(len(t) + 1)
            b = t[:i] + bytes([rng.choice([0x80, 0xBF, 0xC0, 0xC1, 0xF5, 0xFF, 0xFE])]) + t[i:]
        elif k == 2:  # truncated and overlong sequences, surrogates
            b = rng.choice([b"\xe6\x97", b"\xf0\x9f\x98", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80",
                            b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80"]) + rng.choice([b"", b"abc", b" x"])
        else:
            t = "text 日本 ".encode()
            b = t[:rng.randrange(len(t))] + b"\x00" + t
        try:
            b.decode("utf-8")
            b = b + b"\xff"
        except UnicodeDecodeError:
            pass
        out.append(b)
    return out


def special(rng, n):
    names = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
             "<|end_header_id|>", "<|reserved_special_token_5|>", "<|python_tag|>",
             "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>", "</s>", "[INST]", "[/INST]"]
    partial = ["<|eot_id", "<|", "|>", "<|begin_of_text|", "<||>", "< |eot_id|>"]
    out = ["<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
           "<|start_header_id|>assistant<|end_header_id|>\n\n",
           "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"]
    while len(out) < n:
        parts = []
        for _ in range(rng.randint(1, 5)):
            parts.append(rng.choice(names + partial + ["hello", " world", "\n", " ", "x"]))
        out.append("".join(parts))
    return out


def gguf_tokenizer(path):
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    r = GGUFReader(path)
    pre = r.fields["tokenizer.ggml.pre"].contents()
    assert pre == "smollm", "only the smollm pre-tokenizer family is built here, not " + pre
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in r.fields["tokenizer.ggml.merges"].contents()]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])
    tok.add_tokens([AddedToken(t, normalized=False) for t, ty in zip(tokens, types) if ty == 4])
    return tok


def main():
    rng = random.Random(20261201)
    corpus = (prose(rng, 450) + code(rng, 400) + whitespace(rng, 200) + digits(rng, 200) +
              cjk(rng, 200) + emoji(rng, 150) + scripts(rng, 150) + invalid(rng, 150) +
              special(rng, 150))
    with open(os.path.join(HERE, "corpus.jsonl"), "w", encoding="utf-8") as f:
        for s in corpus:
            if isinstance(s, bytes):
                f.write(json.dumps({"hex": s.hex()}) + "\n")
            else:
                f.write(json.dumps({"text": s}, ensure_ascii=False) + "\n")
    from tokenizers import Tokenizer
    import tokenizers
    for arg in sys.argv[1:]:
        name, path = arg.split("=", 1)
        tok = gguf_tokenizer(path[5:]) if path.startswith("gguf:") else Tokenizer.from_file(path)
        with open(os.path.join(HERE, name + ".ids.jsonl"), "w") as f:
            for s in corpus:
                text = s.decode("utf-8", errors="replace") if isinstance(s, bytes) else s
                f.write(json.dumps(tok.encode(text, add_special_tokens=False).ids) + "\n")
        print("%s: %d strings, tokenizers %s" % (name, len(corpus), tokenizers.__version__))


if __name__ == "__main__":
    main()
