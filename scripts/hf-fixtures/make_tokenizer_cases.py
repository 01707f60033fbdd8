#!/usr/bin/env python3
"""Reference token ids for kvpr's GGUF tokenizer, one set per llama.cpp pre-tokenizer.

Usage (from the repository root, with the venv of requirements.txt):

    /tmp/hfvenv/bin/python scripts/hf-fixtures/make_tokenizer_cases.py \\
        --out tests/fixtures/tokenizers/bpe_pre.json

llama.cpp chooses how a byte-level BPE vocabulary (`tokenizer.ggml.model = "gpt2"`) splits
text before the merges from `tokenizer.ggml.pre` (`src/llama-vocab.cpp`: the value names a
`LLAMA_VOCAB_PRE_TYPE_*`, which names a list of split regexes and, for some, `ignore_merges`
and a default `add_bos`). This script builds, with the Hugging Face `tokenizers` library
(not transformers, no hub), one tokenizer per split family kvpr implements, the way the
models' own `tokenizer.json` files spell it:

* `gpt2`    ByteLevel(add_prefix_space=false, use_regex=true): GPT-2's regex
            (`'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`).
* `llama3`  Split(Llama-3's regex, Isolated) + ByteLevel(use_regex=false), BPE with
            `ignore_merges` (Meta-Llama-3's tokenizer.json; llama.cpp sets ignore_merges for
            the LLAMA3 pre type).
* `llama3-merges`  the same split without ignore_merges (llama.cpp's DBRX and SMAUG types).
* `qwen2`   Split(Qwen2's regex: Llama-3's with `\\p{N}` for `\\p{N}{1,3}`) + ByteLevel.
* `smollm`  Digits(individual_digits=true) + ByteLevel(use_regex=true) (SmolLM2's
            tokenizer.json; llama.cpp: `\\p{N}` then GPT-2's regex).
* `default` llama.cpp's LLAMA_VOCAB_PRE_TYPE_DEFAULT, used when `tokenizer.ggml.pre` is
            absent or "default": Split `[\\p{P}\\$\\+<=>\\^~\\|]+`, GPT-2's regex, `\\p{N}+`,
            `[0-9][0-9][0-9]`, each Isolated, then ByteLevel (no tokenizer.json spells this one;
            it is llama.cpp's own fallback).

The vocabulary is trained here on a fixed text with NO pre-tokenization, so that its merges
cross every boundary a pre-tokenizer draws (digit runs, `'M`, `\\n\\n`, runs of spaces, ...): a
GGUF tokenizer that splits with the wrong regex gives different ids. The script asserts that
every pair of families differs on at least one string. One token (`Ġzyzzyva`) is added to the
vocabulary without the merges that build it, so only `ignore_merges` produces it.

The output JSON holds the vocabulary (`tokens`, `token_types`, `merges` as GGUF stores them),
the special ids, the strings, each family's ids (`encodings`, no BOS) and `pre_values`: each
`tokenizer.ggml.pre` value kvpr accepts with its family and llama.cpp's default `add_bos`
(`null` is the key absent). The script is deterministic.

`--check-llama-cpp DIR` also writes a vocab-only GGUF per `pre_values` entry and tokenizes
every string with the real llama.cpp through node-llama-cpp installed in DIR
(`npm install node-llama-cpp --ignore-scripts` there: its prebuilt libllama), asserting the
same ids, the same BOS default and that the EOT/EOM ids end generation.
"""

import argparse
import json
import os
import struct
import subprocess
import tempfile

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = ["<pad>", "<s>", "</s>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>"]
PAD, BOS, EOS, IM_END, EOT, EOM = range(6)
VOCAB_SIZE = 600
UNREACHABLE = "Ġzyzzyva"  # " zyzzyva": in the vocabulary, built by no merge

GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_RE = LLAMA3_RE.replace(r"\p{N}{1,3}", r"\p{N}")

# Every `tokenizer.ggml.pre` value kvpr reads: (family, llama.cpp's add_bos default).
# From llama-vocab.cpp: the values mapped to LLAMA_VOCAB_PRE_TYPE_{DEFAULT, GPT2, MPT, OLMO,
# JAIS, TRILLION, GRANITE_DOCLING, LLAMA3, DBRX, SMAUG, QWEN2, STABLELM2, HUNYUAN,
# SOLAR_OPEN, STARCODER, REFACT, COMMAND_R, SMOLLM, CODESHELL, EXAONE, MINERVA, MELLUM2}
# whose only other settings are clean_spaces (detokenizing) and, for LLAMA3, ignore_merges
# and add_bos. Left out on purpose: values that also set add_sep or per-token attributes
# (jina-v1-en, jina-v2-code, roberta-bpe, jina-v2-de, jina-v2-es, modern-bert) or a null BOS
# (glm4, chatglm-bpe).
PRE_VALUES = {
    None: ("default", False),
    "default": ("default", False),
    # GPT-2's regex
    "gpt-2": ("gpt2", False),
    "phi-2": ("gpt2", False),
    "jina-es": ("gpt2", False),
    "jina-de": ("gpt2", False),
    "gigachat": ("gpt2", False),
    "a.x-4.0": ("gpt2", False),
    "mellum": ("gpt2", False),
    "exaone4": ("gpt2", False),
    "mpt": ("gpt2", False),
    "olmo": ("gpt2", False),
    "jais": ("gpt2", False),
    "trillion": ("gpt2", False),
    "granite-docling": ("gpt2", False),
    # Llama-3's regex, ignore_merges, BOS by default
    "llama3": ("llama3", True),
    "llama-v3": ("llama3", True),
    "llama-bpe": ("llama3", True),
    "falcon3": ("llama3", True),
    "falcon-h1": ("llama3", True),
    "pixtral": ("llama3", True),
    "midm-2.0": ("llama3", True),
    "lfm2": ("llama3", True),
    "jina-v5-nano": ("llama3", True),
    # Llama-3's regex without ignore_merges
    "dbrx": ("llama3-merges", False),
    "smaug-bpe": ("llama3-merges", False),
    # Qwen2's regex
    "qwen2": ("qwen2", False),
    "deepseek-r1-qwen": ("qwen2", False),
    "kormo": ("qwen2", False),
    "f2llmv2": ("qwen2", False),
    "megrez": ("qwen2", False),
    "stablelm2": ("qwen2", False),
    "hunyuan": ("qwen2", False),
    "solar-open": ("qwen2", False),
    # single digits, then GPT-2's regex
    "smollm": ("smollm", False),
    "starcoder": ("smollm", False),
    "refact": ("smollm", False),
    "command-r": ("smollm", False),
    "codeshell": ("smollm", False),
    "exaone": ("smollm", False),
    "minerva-7b": ("smollm", False),
    "mellum2": ("smollm", False),
}

CORPUS = """\
In 2026 the 12345 tokens and 2025 runs cost $100.00 + 7% (3.14159 of 1234567890).
I'M HERE, YOU'RE THERE; WE'LL SEE. THEY'VE GONE, SHE'S OUT, HE'D KNOW, IT'S 42!
don't won't they'll I'd we've you're it's can't shouldn't I'm we'll he's
a

b  c
line one


  line two...
\tTabbed\tline
   leading spaces and trailing space    
x=1+2; y<3|4 ~z ^w $5 `code` a.b.c <tag> {json: [1, 22, 333]}
café déjà vu, Ærøskøbing naïve résumé smile 😀 ok 👍🏽 日本語のテキスト 123
Hello, world! Every layer reads the cache. 99 bottles, 1000000 steps, 0.5 and 10:30.
"""

STRINGS = [
    "12345 and 2026",
    "I'M HERE, YOU'RE",
    "DON'T WON'T THEY'LL WE'VE",
    "don't won't they'll I'd we've",
    "a\n\nb  c\r\n",
    "line one\n\n\n  line two...\n",
    "\tTabbed\tline\n",
    "   leading spaces",
    "trailing space   ",
    "smile 😀 ok 👍🏽",
    "café déjà vu, Ærøskøbing",
    "日本語のテキスト 123",
    "x=1+2; y<3|4 ~z ^w $5 `code`",
    "Hello, world! 3.14159",
    "$100.00 + 7% of 1234567890",
    "a.b.c <tag> {json: [1, 22, 333]}",
    "a zyzzyva",
    "<|im_end|> after 42<|eot_id|>",
    "",
]


def byte_level(use_regex):
    return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=use_regex)


def isolated(pattern):
    return pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False)


FAMILIES = {
    "gpt2": (byte_level(True), False),
    "llama3": (pre_tokenizers.Sequence([isolated(LLAMA3_RE), byte_level(False)]), True),
    "llama3-merges": (pre_tokenizers.Sequence([isolated(LLAMA3_RE), byte_level(False)]), False),
    "qwen2": (pre_tokenizers.Sequence([isolated(QWEN2_RE), byte_level(False)]), False),
    "smollm": (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level(True)]),
        False,
    ),
    "default": (
        pre_tokenizers.Sequence(
            [
                isolated(r"[\p{P}\$\+<=>\^~\|]+"),
                isolated(GPT2_RE),
                isolated(r"\p{N}+"),
                isolated(r"[0-9][0-9][0-9]"),
                byte_level(False),
            ]
        ),
        False,
    ),
}


def train():
    """A byte-level BPE whose merges cross every pre-tokenizer boundary."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = byte_level(False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator([CORPUS] * 4, trainer=trainer)
    model = json.loads(tk.to_str())["model"]
    vocab = model["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    assert UNREACHABLE not in vocab
    tokens.append(UNREACHABLE)
    assert tokens[: len(SPECIALS)] == SPECIALS
    return tokens, merges


def family_tokenizer(tokens, merges, family):
    pre, ignore_merges = FAMILIES[family]
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ")) for m in merges]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges))
    tk.pre_tokenizer = pre
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(SPECIALS)
    return tk


def gguf_bytes(tokens, types, merges, pre, add_bos):
    """A vocab-only GGUF (v3, no tensors) that llama.cpp loads with vocab_only."""

    def s(x):
        b = x.encode("utf-8")
        return struct.pack("<Q", len(b)) + b

    kvs = [
        ("general.architecture", 8, s("llama")),
        ("llama.context_length", 4, struct.pack("<I", 256)),
        ("llama.embedding_length", 4, struct.pack("<I", 32)),
        ("llama.block_count", 4, struct.pack("<I", 1)),
        ("llama.feed_forward_length", 4, struct.pack("<I", 64)),
        ("llama.attention.head_count", 4, struct.pack("<I", 4)),
        ("llama.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 1e-5)),
        ("tokenizer.ggml.model", 8, s("gpt2")),
        ("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, len(tokens)) + b"".join(map(s, tokens))),
        ("tokenizer.ggml.token_type", 9, struct.pack("<IQ", 5, len(types)) + struct.pack(f"<{len(types)}i", *types)),
        ("tokenizer.ggml.merges", 9, struct.pack("<IQ", 8, len(merges)) + b"".join(map(s, merges))),
        ("tokenizer.ggml.bos_token_id", 4, struct.pack("<I", BOS)),
        ("tokenizer.ggml.eos_token_id", 4, struct.pack("<I", EOS)),
        ("tokenizer.ggml.eot_token_id", 4, struct.pack("<I", EOT)),
        ("tokenizer.ggml.eom_token_id", 4, struct.pack("<I", EOM)),
    ]
    if pre is not None:
        kvs.append(("tokenizer.ggml.pre", 8, s(pre)))
    if add_bos is not None:
        kvs.append(("tokenizer.ggml.add_bos_token", 7, struct.pack("<?", add_bos)))
    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs))
    for k, ty, v in kvs:
        out += s(k) + struct.pack("<I", ty) + v
    return out


NODE_SCRIPT = r"""
import fs from "fs";
const {getLlama} = await import(process.env.NLC_URL);
const job = JSON.parse(fs.readFileSync(0, "utf8"));
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const out = [];
for (const f of job.files) {
    const m = await llama.loadModel({modelPath: f, vocabOnly: true});
    out.push({
        ids: job.strings.map((s) => Array.from(m.tokenize(s, true))),
        add_bos: m.tokens.shouldPrependBosToken,
        eog: job.eog.map((t) => m.isEogToken(t)),
    });
    await m.dispose();
}
console.log(JSON.stringify(out));
"""


def check_llama_cpp(node_dir, tokens, types, merges, strings, encodings):
    """Every pre value through the real llama.cpp: the same ids and BOS default, and the
    EOS, EOT and EOM ids (not PAD) end generation."""
    index = os.path.join(os.path.abspath(node_dir), "node_modules", "node-llama-cpp", "dist", "index.js")
    values = list(PRE_VALUES)
    with tempfile.TemporaryDirectory() as d:
        files = []
        for i, pre in enumerate(values):
            p = os.path.join(d, f"{i}.gguf")
            with open(p, "wb") as f:
                f.write(gguf_bytes(tokens, types, merges, pre, None))
            files.append(p)
        script = os.path.join(d, "check.mjs")
        with open(script, "w") as f:
            f.write(NODE_SCRIPT)
        job = {"files": files, "strings": strings, "eog": [EOS, EOT, EOM, PAD]}
        res = subprocess.run(
            ["node", script],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            env={**os.environ, "NLC_URL": "file://" + index},
            check=True,
        )
        results = json.loads(res.stdout.strip().splitlines()[-1])
    for pre, r in zip(values, results):
        family, add_bos = PRE_VALUES[pre]
        for s, got, want in zip(strings, r["ids"], encodings[family]):
            assert got == want, f"llama.cpp, pre {pre!r}, {s!r}: {got} != {family} {want}"
        assert r["add_bos"] == add_bos, (pre, r["add_bos"])
        assert r["eog"] == [True, True, True, False], (pre, r["eog"])
    print(f"llama.cpp agrees on {len(values)} pre values x {len(strings)} strings")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--check-llama-cpp", metavar="DIR")
    args = ap.parse_args()

    tokens, merges = train()
    types = [3 if t in SPECIALS else 1 for t in tokens]
    encodings = {}
    for family in FAMILIES:
        tk = family_tokenizer(tokens, merges, family)
        encodings[family] = [tk.encode(s, add_special_tokens=False).ids for s in STRINGS]
        for s, ids in zip(STRINGS, encodings[family]):
            assert tk.decode(ids, skip_special_tokens=False) == s, (family, s)
    # Every family is told apart by some string, ignore_merges by " zyzzyva".
    names = list(FAMILIES)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert encodings[a] != encodings[b], f"{a} and {b} give the same ids"
    zyz = STRINGS.index("a zyzzyva")
    assert len(tokens) - 1 in encodings["llama3"][zyz]
    assert len(tokens) - 1 not in encodings["llama3-merges"][zyz]
    if args.check_llama_cpp:
        check_llama_cpp(args.check_llama_cpp, tokens, types, merges, STRINGS, encodings)

    out = {
        "about": "made by scripts/hf-fixtures/make_tokenizer_cases.py; ids from the tokenizers library",
        "tokens": tokens,
        "token_types": types,
        "merges": merges,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "eot_token_id": EOT,
        "eom_token_id": EOM,
        "strings": STRINGS,
        "encodings": encodings,
        "pre_values": [
            {"pre": pre, "family": fam, "add_bos": add_bos} for pre, (fam, add_bos) in PRE_VALUES.items()
        ],
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.out}: {len(tokens)} tokens, {len(merges)} merges, {len(STRINGS)} strings")


if __name__ == "__main__":
    main()
