"""Real tokenizer files for the text tests, built from committed data (no Hugging Face Hub).

* :func:`write_clip_tokenizer`: OpenAI CLIP's own BPE tokenizer (49408 ids), in the files
  transformers' ``CLIPTokenizer`` reads (``vocab.json``, ``merges.txt``, configs), derived from
  ``data/text/bpe_simple_vocab_16e6.txt.gz`` (the merges file CLIP and open_clip ship) the way
  CLIP's ``SimpleTokenizer`` derives its vocabulary.
* :func:`write_siglip_tokenizer`: ``SiglipTokenizer``'s files around
  ``data/text/siglip_test_spiece.model``, a small SentencePiece model of SigLIP's kind (unigram,
  ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2) trained by ``scripts/make_text_assets.py``; not SigLIP's
  own vocabulary.

Both write only tokenizer files: a checkpoint fixture adds its ``config.json`` and weights (its
``text_config.vocab_size`` must be at least :data:`CLIP_VOCAB_SIZE` / :data:`SIGLIP_VOCAB_SIZE`).
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

TEXT_DATA = Path(__file__).parent / "data" / "text"
CLIP_BPE = TEXT_DATA / "bpe_simple_vocab_16e6.txt.gz"
SIGLIP_SPIECE = TEXT_DATA / "siglip_test_spiece.model"

CLIP_VOCAB_SIZE = 49408
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_BOS_ID, CLIP_EOS_ID = 49406, 49407
CLIP_CONTEXT = 77
#: CLIP keeps the first 48894 merges of the file (49152 - 256 byte symbols - 2 specials).
CLIP_MERGES = 49152 - 256 - 2

SIGLIP_VOCAB_SIZE = 768
SIGLIP_PAD_ID, SIGLIP_EOS_ID, SIGLIP_UNK_ID = 0, 1, 2  # pieces <pad>, </s>, <unk>
SIGLIP_CONTEXT = 64


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable character table, in byte order of the symbols:
    the printable Latin-1 bytes map to themselves; the other 68 bytes, in increasing order, to
    U+0100 onwards. The list order (printable bytes first) is CLIP's vocabulary order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    rest = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(rest))]


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary (token -> id) and merge lines: 256 byte symbols, the same with the
    end-of-word mark ``</w>``, one token per merge (the pair joined), then the two specials."""
    lines = gzip.decompress(CLIP_BPE.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : 1 + CLIP_MERGES]  # line 0 is the "#version" header
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(line.split(" ")) for line in merges]
    tokens += [CLIP_BOS, CLIP_EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE or vocab[CLIP_EOS] != CLIP_EOS_ID:
        raise AssertionError(f"CLIP vocabulary has {len(vocab)} distinct tokens, expected {CLIP_VOCAB_SIZE}")
    return vocab, merges


def write_clip_tokenizer(folder: Path) -> None:
    """OpenAI CLIP's tokenizer files (as in ``openai/clip-vit-base-patch32``) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    specials = {"bos_token": CLIP_BOS, "eos_token": CLIP_EOS, "unk_token": CLIP_EOS, "pad_token": CLIP_EOS}
    config = {
        **specials,
        "add_prefix_space": False,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": CLIP_CONTEXT,
        "tokenizer_class": "CLIPTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")


def write_siglip_tokenizer(folder: Path) -> None:
    """``SiglipTokenizer``'s files (``spiece.model`` and its configs, as in
    ``google/siglip-base-patch16-224`` but with the small test vocabulary) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SIGLIP_SPIECE, folder / "spiece.model")

    def added(content: str) -> dict:
        return {"content": content, "lstrip": True, "normalized": False, "rstrip": True,
                "single_word": False, "special": True}  # fmt: skip

    config = {
        "added_tokens_decoder": {str(SIGLIP_EOS_ID): added("</s>"), str(SIGLIP_UNK_ID): added("<unk>")},
        "additional_special_tokens": [],
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": "</s>",
        "model_input_names": ["input_ids"],
        "model_max_length": SIGLIP_CONTEXT,
        "pad_token": "</s>",
        "processor_class": "SiglipProcessor",
        "sp_model_kwargs": {},
        "tokenizer_class": "SiglipTokenizer",
        "unk_token": "<unk>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    specials = {"eos_token": added("</s>"), "pad_token": added("</s>"), "unk_token": added("<unk>")}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")
