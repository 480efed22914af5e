"""The export side of text tokenisation: the checkpoint's transformers tokenizer -> the tokenizer
file and :class:`~imgbeddings.text.card.TokenizerSpec` that
:class:`~imgbeddings.text.tokenize.TextTokenizer` runs, and the check that both give the same ids.

* A fast tokenizer (CLIP's ``CLIPTokenizer``/``CLIPTokenizerFast``) is already a ``tokenizers``
  pipeline: its backend is written as ``tokenizer.json`` (truncation and padding settings
  cleared), library ``tokenizers``, ``clean`` ``none``.
* ``SiglipTokenizer`` (SigLIP) is SentencePiece with Python around it: the checkpoint's own
  SentencePiece model (the ``spiece.model`` it loads) is copied as is, library
  ``sentencepiece``, ``clean`` ``siglip`` (the Python part is in
  :mod:`imgbeddings.text.tokenize`). The export checks that the tokenizer is configured as that
  code assumes (its special tokens are the model's end and unknown pieces and its pad piece,
  split off with the whitespace beside them; no ``legacy=False``, no sampling options) and
  refuses anything else with an :class:`~imgbeddings.errors.ExportError`.

The SigLIP path needs ``sentencepiece`` and ``protobuf`` (transformers' ``SiglipTokenizer``
does); the CLIP path only transformers.
"""

from __future__ import annotations

import json
import shutil
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ExportError
from ..text.card import TokenizerSpec

TOKENIZER_FILE = "tokenizer.json"
SPIECE_FILE = "spiece.model"
CORPUS_FILE = "text_corpus.json"


def load_corpus() -> list[str]:
    """The committed corpus of varied strings (``text_corpus.json``) the tokenizer and the text
    model are checked on: prompts, accents, CJK, emoji, punctuation runs, HTML entities, odd
    whitespace, URLs, the empty string, strings longer than the context."""
    raw = resources.files("imgbeddings.export").joinpath(CORPUS_FILE).read_text(encoding="utf-8")
    corpus = json.loads(raw)
    if not isinstance(corpus, list) or not all(isinstance(s, str) for s in corpus):
        raise ExportError(f"{CORPUS_FILE} must be a JSON list of strings")
    return corpus


def load_reference_tokenizer(checkpoint: str | Path, family: str | None = None) -> Any:
    """The checkpoint's own transformers tokenizer, as ``AutoTokenizer`` (and so CLIPProcessor /
    SiglipProcessor) loads it from the folder."""
    try:
        import transformers
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise ExportError(
            "exporting a text tower needs transformers: pip install 'imgbeddings[export]'"
        ) from exc
    if family == "siglip" or _tokenizer_class(checkpoint) == "SiglipTokenizer":
        from transformers.utils import is_protobuf_available, is_sentencepiece_available

        if not (is_sentencepiece_available() and is_protobuf_available()):
            raise ExportError(
                "SigLIP's tokenizer (transformers' SiglipTokenizer) needs sentencepiece and "
                "protobuf: pip install sentencepiece protobuf"
            )
    from .checkpoint import _transformers_quiet

    try:
        with _transformers_quiet():
            return AutoTokenizer.from_pretrained(str(checkpoint))
    except Exception as exc:
        raise ExportError(
            f"cannot load the tokenizer of {checkpoint} with transformers {transformers.__version__}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def save_tokenizer(checkpoint: Path, out_dir: Path, family: str, context_length: int) -> TokenizerSpec:
    """Write the tokenizer file (``tokenizer.json`` or ``spiece.model``, module docstring) from the
    checkpoint's transformers tokenizer into ``out_dir`` and return its spec (sha256, ``pad_id`` =
    the id transformers pads with, ``library``, ``clean``, ``lowercase``).

    Raises:
        ExportError: transformers (or, for SigLIP, sentencepiece/protobuf) is missing, the
            tokenizer cannot be loaded, has no pad token, pads or truncates on the left, or is
            of a kind or configuration this module cannot express.
    """
    from ..hub import sha256_file

    tok = load_reference_tokenizer(checkpoint, family)
    where = f"{checkpoint} ({type(tok).__name__})"
    if tok.pad_token_id is None:
        raise ExportError(f"the tokenizer of {where} has no pad token")
    for side in ("padding_side", "truncation_side"):
        if getattr(tok, side, "right") != "right":
            raise ExportError(
                f"the tokenizer of {where} has {side}={getattr(tok, side)!r}; only 'right' is handled"
            )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if _is_siglip(tok):
        _check_siglip(tok, where)
        path = out / SPIECE_FILE
        shutil.copyfile(tok.vocab_file, path)
        library, clean, lowercase = "sentencepiece", "siglip", bool(tok.do_lower_case)
    elif getattr(tok, "backend_tokenizer", None) is not None:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
        backend.no_truncation()
        backend.no_padding()
        path = out / TOKENIZER_FILE
        backend.save(str(path))
        library, clean = "tokenizers", "none"
        lowercase = _lowercases(json.loads(backend.to_str()).get("normalizer"))
    else:
        raise ExportError(
            f"the tokenizer of {where} is neither a fast (tokenizers) tokenizer nor SiglipTokenizer; "
            f"{family} text towers with it cannot be exported"
        )
    return TokenizerSpec(
        filename=path.name,
        context_length=int(context_length),
        pad_id=int(tok.pad_token_id),
        sha256=sha256_file(path),
        clean=clean,
        lowercase=lowercase,
        library=library,
    )


def reference_ids(tok: Any, texts: list[str], context_length: int) -> list[list[int]]:
    """transformers' ids, as the processors make them for these models (SigLIP was trained on
    ``padding="max_length"``; CLIP pads with its end token and pools at the first one)."""
    with warnings.catch_warnings():  # SiglipTokenizer warns about strings that end with "</s>"
        warnings.simplefilter("ignore", UserWarning)
        enc = tok(list(texts), padding="max_length", max_length=context_length, truncation=True)
    return [list(map(int, row)) for row in enc["input_ids"]]


def check_token_parity(
    checkpoint: Path, out_dir: Path, spec: TokenizerSpec, texts: list[str]
) -> dict[str, Any]:
    """Tokenise ``texts`` with the checkpoint's transformers tokenizer and with
    :class:`~imgbeddings.text.tokenize.TextTokenizer` on ``out_dir``'s file; returns
    ``{"strings": n, "mismatches": [the strings whose ids differ]}``."""
    from ..text.tokenize import TextTokenizer

    texts = list(texts)
    tok = load_reference_tokenizer(checkpoint)
    expected = reference_ids(tok, texts, spec.context_length)
    got = TextTokenizer.from_spec(spec, out_dir).encode(texts)
    mismatches = [text for text, want, row in zip(texts, expected, got, strict=True) if want != row.tolist()]
    return {"strings": len(texts), "mismatches": mismatches}


# --- SigLIP ----------------------------------------------------------------------------


def _is_siglip(tok: Any) -> bool:
    return hasattr(tok, "sp_model") and hasattr(tok, "canonicalize_text")


def _tokenizer_class(checkpoint: str | Path) -> str | None:
    try:
        config = json.loads((Path(checkpoint) / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config.get("tokenizer_class") if isinstance(config, dict) else None


def _check_siglip(tok: Any, where: str) -> None:
    """That ``tok`` is a ``SiglipTokenizer`` as :mod:`imgbeddings.text.tokenize` runs it: its
    model file is the one it loaded, its special tokens are the model's end and unknown pieces
    and the pad piece (split off, whitespace beside them stripped), nothing else changes it."""
    import sentencepiece

    vocab_file = getattr(tok, "vocab_file", None)
    if not vocab_file or not Path(vocab_file).is_file():
        raise ExportError(f"{where}: its SentencePiece model file ({vocab_file}) is not on disk")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(vocab_file))
    if sp.serialized_model_proto() != tok.sp_model.serialized_model_proto():
        raise ExportError(f"{where}: transformers changed the SentencePiece model it loaded (legacy=False?)")
    if tok.sp_model_kwargs or getattr(tok, "split_special_tokens", False):
        raise ExportError(f"{where}: sp_model_kwargs / split_special_tokens are not handled")
    if (
        sp.eos_id() < 0
        or tok.eos_token_id != sp.eos_id()
        or str(tok.unk_token) != sp.id_to_piece(sp.unk_id())
    ):
        raise ExportError(f"{where}: its end/unknown tokens are not the SentencePiece model's")
    expected = {sp.id_to_piece(i): i for i in (sp.eos_id(), sp.unk_id(), int(tok.pad_token_id))}
    added = {str(t): (i, t) for i, t in tok.added_tokens_decoder.items()}
    if not set(added) == set(map(str, tok.all_special_tokens)) == set(expected):
        raise ExportError(
            f"{where}: special/added tokens {sorted(set(added) | set(map(str, tok.all_special_tokens)))} "
            f"are not the model's end, unknown and pad pieces {sorted(expected)}"
        )
    for content, (token_id, token) in added.items():
        if token_id != expected[content] or not token.lstrip or not token.rstrip or token.single_word:
            raise ExportError(
                f"{where}: special token {content!r} (id {token_id}) is not split off as SiglipTokenizer's "
                "defaults do (lstrip, rstrip, not single_word, the model's own id)"
            )


def _lowercases(normalizer: Any) -> bool:
    """Whether a ``tokenizers`` normaliser (as JSON) lowercases."""
    if not isinstance(normalizer, dict):
        return False
    kind = normalizer.get("type")
    if kind == "Lowercase":
        return True
    if kind == "BertNormalizer":
        return bool(normalizer.get("lowercase"))
    if kind == "Sequence":
        return any(_lowercases(n) for n in normalizer.get("normalizers", []))
    return False
