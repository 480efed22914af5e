"""The runtime text tokenizer (``tokenizers`` for CLIP, ``sentencepiece`` for SigLIP) against
transformers' own tokenizers, on real tokenizer files (CLIP's BPE vocabulary; a SentencePiece model
of SigLIP's kind; see tests/data/text/README.md): every expected id comes from running transformers
here."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import subprocess
import sys

import pytest

from text_assets import (
    CLIP_VOCAB_SIZE,
    SIGLIP_SPIECE,
    SIGLIP_VOCAB_SIZE,
    write_clip_tokenizer,
    write_siglip_tokenizer,
)

pytestmark = pytest.mark.export
transformers = pytest.importorskip(
    "transformers", reason="the tokenizer parity tests need the [export] extra"
)

from imgbeddings.errors import CardError, ExportError, MissingExtra, ModelCorrupted, OptionError  # noqa: E402
from imgbeddings.export.tokenizer import (  # noqa: E402
    check_token_parity,
    load_corpus,
    load_reference_tokenizer,
    reference_ids,
    save_tokenizer,
)
from imgbeddings.hub import sha256_file  # noqa: E402
from imgbeddings.text.card import TokenizerSpec  # noqa: E402
from imgbeddings.text.tokenize import TextTokenizer  # noqa: E402

CONTEXT = {"clip": 77, "siglip": 64}
FILES = {"clip": ("tokenizer.json", "tokenizers"), "siglip": ("spiece.model", "sentencepiece")}
WRITERS = {"clip": write_clip_tokenizer, "siglip": write_siglip_tokenizer}
LONG = " ".join(["a photo of a very small and very fluffy cat"] * 30)


def _requires(family: str) -> None:
    if family == "siglip":
        pytest.importorskip("sentencepiece", reason="transformers' SiglipTokenizer needs sentencepiece")


@pytest.fixture(scope="module", params=["clip", "siglip"])
def exported(request, tmp_path_factory):
    """(family, checkpoint folder, export folder, spec, transformers tokenizer)."""
    family = request.param
    _requires(family)
    root = tmp_path_factory.mktemp(family)
    checkpoint, out = root / "checkpoint", root / "export"
    WRITERS[family](checkpoint)
    spec = save_tokenizer(checkpoint, out, family, CONTEXT[family])
    return family, checkpoint, out, spec, load_reference_tokenizer(checkpoint)


def test_clip_asset_is_clips_vocabulary(tmp_path):
    write_clip_tokenizer(tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(tok) == CLIP_VOCAB_SIZE
    # the ids of OpenAI CLIP's tokenizer (its model card's example prompt)
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    fast = getattr(transformers, "CLIPTokenizerFast", transformers.CLIPTokenizer)
    assert fast.from_pretrained(str(tmp_path))("a photo of a cat")["input_ids"][-1] == 49407


def test_siglip_asset_loads_as_siglip_tokenizer(tmp_path):
    _requires("siglip")
    write_siglip_tokenizer(tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert type(tok).__name__ == "SiglipTokenizer"
    assert len(tok) == SIGLIP_VOCAB_SIZE
    assert (tok.pad_token, tok.eos_token, tok.unk_token) == ("</s>", "</s>", "<unk>")
    assert tok.convert_tokens_to_ids(["<pad>", "</s>", "<unk>"]) == [0, 1, 2]


def test_spec(exported):
    family, _, out, spec, tok = exported
    assert (spec.filename, spec.library) == FILES[family] and spec.context_length == CONTEXT[family]
    assert spec.sha256 == sha256_file(out / spec.filename)
    if family == "siglip":  # the checkpoint's own SentencePiece model, byte for byte
        assert (out / spec.filename).read_bytes() == SIGLIP_SPIECE.read_bytes()
    assert spec.pad_id == tok.pad_token_id
    assert spec.clean == ("siglip" if family == "siglip" else "none")
    assert spec.lowercase is True
    TokenizerSpec(**{**spec.__dict__})  # a valid card section


def test_corpus_parity(exported):
    _, checkpoint, out, spec, _ = exported
    corpus = load_corpus()
    assert len(corpus) >= 60 and "" in corpus and " " in corpus
    result = check_token_parity(checkpoint, out, spec, corpus)
    assert result == {"strings": len(corpus), "mismatches": []}


def test_random_strings_parity(exported):
    """Seeded random strings from characters the tokenizers treat specially: special tokens and
    look-alikes, whitespace of every kind, combining marks, joiners, compatibility forms."""
    _, checkpoint, out, spec, _ = exported
    rng = random.Random(20261130)
    ranges = [
        (0x20, 0x180),
        (0x300, 0x310),
        (0x2000, 0x2030),
        (0x2150, 0x2160),
        (0x3000, 0x3010),
        (0xFF01, 0xFF20),
    ]
    pool = [chr(c) for start, stop in ranges for c in range(start, stop)]
    pool += [
        "\u200d",
        "\u200b",
        "\ufeff",
        "\u00ad",
        "▁",
        "  ",
        "\t",
        "\n",
        "\x85",
        "😀",
        "🇯🇵",
        "e\u0301",
        "ｶﾞ",
    ]
    pool += [
        "</s>",
        "<unk>",
        "<pad>",
        "<|endoftext|>",
        "<|startoftext|>",
        " </s> ",
        "the ",
        "photo ",
        "ΟΔΟΣ",
        "İ",
    ]
    texts = ["".join(rng.choice(pool) for _ in range(rng.randint(0, 20))) for _ in range(300)]
    assert check_token_parity(checkpoint, out, spec, texts)["mismatches"] == []


def test_truncation_keeps_the_end_token(exported):
    family, _, out, spec, tok = exported
    texts = [LONG, "word " * (spec.context_length - 2), "word " * (spec.context_length - 1)]
    ids = TextTokenizer.from_spec(spec, out).encode(texts)
    assert ids.shape == (3, spec.context_length) and ids.dtype.name == "int64"
    assert ids.tolist() == reference_ids(tok, texts, spec.context_length)
    assert ids[0, -1] == tok.eos_token_id and ids[1, -1] == tok.eos_token_id
    if family == "clip":
        assert ids[0, 0] == tok.bos_token_id


def test_empty_string_and_empty_batch(exported):
    _, _, out, spec, tok = exported
    tokenizer = TextTokenizer.from_spec(spec, out)
    ids = tokenizer.encode(["", " "])
    assert ids.tolist() == reference_ids(tok, ["", " "], spec.context_length)
    assert tok.eos_token_id in ids[0].tolist()
    assert tokenizer.encode([]).shape == (0, spec.context_length)


def test_batch_independence(exported):
    _, _, out, spec, _ = exported
    tokenizer = TextTokenizer.from_spec(spec, out)
    corpus = load_corpus()
    together = tokenizer.encode(corpus)
    alone = [tokenizer.encode([text])[0].tolist() for text in corpus]
    assert together.tolist() == alone


def test_non_string_items(exported):
    _, _, out, spec, _ = exported
    tokenizer = TextTokenizer.from_spec(spec, out)
    with pytest.raises(OptionError, match="#1 is a int"):
        tokenizer.encode(["a cat", 3])
    with pytest.raises(OptionError, match="#2 is a bytes"):
        tokenizer.encode(["a", "b", b"bytes"])
    with pytest.raises(OptionError, match="#0 is a NoneType"):
        tokenizer.encode([None])
    with pytest.raises(OptionError, match="single string"):
        tokenizer.encode("a cat")


def test_tampered_missing_and_broken_files(exported, tmp_path):
    family, _, out, spec, _ = exported
    folder = tmp_path / "copy"
    folder.mkdir()
    raw = (out / spec.filename).read_bytes()
    (folder / spec.filename).write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    with pytest.raises(ModelCorrupted) as err:
        TextTokenizer.from_spec(spec, folder)
    assert err.value.expected == spec.sha256 and str(folder / spec.filename) in str(err.value)
    with pytest.raises(CardError, match="missing"):
        TextTokenizer.from_spec(spec, tmp_path / "nowhere")
    (folder / spec.filename).write_text("{not json")
    unchecked = dataclasses.replace(spec, sha256=None)
    kind = "SentencePiece model" if family == "siglip" else "tokenizers JSON file"
    with pytest.raises(CardError, match=f"{re.escape(str(folder / spec.filename))} is not a {kind}"):
        TextTokenizer.from_spec(unchecked, folder)


def test_library_and_clean_must_agree(exported):
    """A file read by the wrong library, or a ``clean`` that does not go with the library, is a
    CardError, not wrong ids."""
    family, _, out, spec, _ = exported
    other = "tokenizers" if spec.library == "sentencepiece" else "sentencepiece"
    with pytest.raises(CardError, match="does not go with library"):
        TextTokenizer.from_spec(dataclasses.replace(spec, library=other), out)
    swapped = dataclasses.replace(spec, library=other, clean="none" if family == "siglip" else "siglip")
    with pytest.raises(CardError, match="is not a"):
        TextTokenizer.from_spec(dataclasses.replace(swapped, sha256=None), out)


@pytest.mark.parametrize("exported", ["siglip"], indirect=True)
def test_missing_sentencepiece_is_missing_extra(exported, monkeypatch):
    _, _, out, spec, _ = exported
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import fails
    with pytest.raises(MissingExtra, match="pip install sentencepiece"):
        TextTokenizer.from_spec(spec, out)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"legacy": False}, "legacy=False"),
        ({"additional_special_tokens": ["<pad>"]}, "special/added tokens"),
        ({"sp_model_kwargs": {"enable_sampling": True, "alpha": 0.1}}, "sp_model_kwargs"),
    ],
)
def test_siglip_export_refuses_what_the_runtime_does_not_do(tmp_path, change, message):
    _requires("siglip")
    write_siglip_tokenizer(tmp_path / "ckpt")
    config_path = tmp_path / "ckpt" / "tokenizer_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **change}))
    with pytest.raises(ExportError, match=message):
        save_tokenizer(tmp_path / "ckpt", tmp_path / "out", "siglip", 64)


def test_runtime_imports_neither_transformers_nor_torch(exported):
    """Nor sentencepiece for CLIP (it is imported only for a SentencePiece file)."""
    family, _, out, spec, _ = exported
    code = (
        "import json, sys\n"
        "from imgbeddings.text.card import TokenizerSpec\n"
        "import imgbeddings.text.tokenize as t\n"
        "spec = TokenizerSpec(**json.loads(sys.argv[1]))\n"
        "ids = t.TextTokenizer.from_spec(spec, sys.argv[2]).encode(['a photo of a cat', ''])\n"
        "assert ids.shape == (2, spec.context_length), ids.shape\n"
        "heavy = [m for m in ('transformers', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert ('sentencepiece' in sys.modules) == (sys.argv[3] == 'siglip')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec.__dict__), str(out), family],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
