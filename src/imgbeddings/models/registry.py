"""Which model a name means, and where its ONNX file and card are.

:func:`resolve_model` is the one place that turns what a caller passes (name | repo | path |
folder, plus an explicit card and preprocessing overrides) into an ONNX file and its final
card. :func:`locate` finds the file; names are read in this order:

1. a local path: an ``.onnx`` file (card beside it as ``<stem>.card.json``, or none), or a
   folder holding one ``*.card.json`` + its ``.onnx`` (what ``imgbeddings export`` writes);
2. a built-in name (``list_models()``; case-insensitive; ``patch32`` = ``patch32_v1``);
3. a Hugging Face repo: ``org/name`` (card ``model.card.json`` in the repo),
   ``org/name/file.onnx`` (card ``file.card.json`` if the repo has one), optionally
   ``@revision`` at the end; ``hf-hub:`` may prefix either.

Built-in cards live in ``models/builtin/*.card.json``; no model facts are in this code.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .. import hub
from ..errors import CardError, ModelCorrupted, ModelError, ModelNotFound, ModelUnavailable
from .cards import CARD_SUFFIX, ModelCard, card_path_for, infer_card

DEFAULT_MODEL = "patch32_v1"
_REPO_RE = re.compile(r"^(?:hf-hub:)?([\w.\-]+/[\w.\-]+)(/[\w.\-/]+\.onnx)?(?:@([\w.\-/]+))?$")


@dataclass(frozen=True)
class LocatedModel:
    """A model file on disk and the card found with it (None for a bare ONNX file)."""

    path: Path
    card: ModelCard | None


@dataclass(frozen=True)
class ResolvedModel:
    """A model file on disk and its final card (overrides applied, inferred if it had none)."""

    path: Path
    card: ModelCard


@lru_cache(maxsize=1)
def builtin_cards() -> dict[str, ModelCard]:
    """The built-in model cards by name."""
    folder = resources.files("imgbeddings.models") / "builtin"
    cards = {}
    for entry in folder.iterdir():
        if entry.name.endswith(CARD_SUFFIX):
            card = ModelCard.from_dict(json.loads(entry.read_text()), origin=entry.name)
            cards[card.name] = card
    return dict(sorted(cards.items()))


def list_models() -> list[str]:
    """Names of the built-in models."""
    return list(builtin_cards())


def _builtin(name: str) -> ModelCard | None:
    key = name.strip().lower()
    for card_name, card in builtin_cards().items():
        if key in (card_name.lower(), card_name.lower().rsplit("_v", 1)[0]):
            return card
    return None


def verify_local(path: Path, card: ModelCard) -> None:
    """Check a local file against its card's SHA-256, if the card has one."""
    if card.file.sha256:
        actual = hub.sha256_file(path)
        if actual != card.file.sha256:
            raise ModelCorrupted(str(path), card.file.sha256, actual)


def _locate_local(path: Path) -> LocatedModel:
    if path.is_dir():
        cards = sorted(path.glob("*" + CARD_SUFFIX))
        if len(cards) > 1 and (path / ("model" + CARD_SUFFIX)).is_file():
            cards = [path / ("model" + CARD_SUFFIX)]  # an export folder: model.onnx is the one to use
        if len(cards) == 1:
            card = ModelCard.load(cards[0])
            onnx_path = path / card.file.filename
        elif not cards and len(list(path.glob("*.onnx"))) == 1:
            onnx_path, card = next(path.glob("*.onnx")), None
        else:
            found = [p.name for p in cards] or [p.name for p in path.glob("*.onnx")]
            raise CardError(
                f"{path} is a folder with {len(found)} candidate models ({found}); pass the .onnx file"
            )
        if not onnx_path.is_file():
            raise ModelNotFound(f"card in {path} names {onnx_path.name}, which is not there")
    else:
        onnx_path = path
        card_file = card_path_for(path)
        card = ModelCard.load(card_file) if card_file.is_file() else None
    if card is not None:
        verify_local(onnx_path, card)
    return LocatedModel(onnx_path, card)


def locate(
    model: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
    force_download: bool = False,
) -> LocatedModel:
    """Locate ``model`` (path, built-in name or hub repo), downloading it if needed.

    Raises:
        ModelNotFound: the name is none of the accepted forms.
        ModelUnavailable: a download was needed and failed (offline, unreachable, missing).
        ModelCorrupted: the file's checksum is wrong.
        CardError: the card is malformed.
    """
    path = Path(model).expanduser()
    if path.exists():
        return _locate_local(path)
    name = str(model)
    card = _builtin(name)
    if card is not None:
        if not (card.file.repo_id and card.file.filename):
            raise CardError(f"built-in card {card.name} has no download location")
        file = hub.download_model_file(
            card.file.repo_id,
            card.file.filename,
            revision=revision or card.file.revision or "main",
            sha256=card.file.sha256,
            cache_dir=cache_dir,
            offline=offline,
            force_download=force_download,
        )
        return LocatedModel(file, card)
    match = _REPO_RE.match(name)
    if match:
        repo_id, onnx_name, rev = match.group(1), match.group(2), match.group(3)
        rev = revision or rev or "main"
        kwargs = {
            "revision": rev,
            "cache_dir": cache_dir,
            "offline": offline,
            "force_download": force_download,
        }
        if onnx_name:
            onnx_name = onnx_name.lstrip("/")
            try:
                card_file = hub.download_model_file(repo_id, Path(onnx_name).stem + CARD_SUFFIX, **kwargs)
                card = ModelCard.load(card_file)
            except ModelUnavailable:
                card = None  # a bare ONNX file in a repo: the card will be inferred from the graph
        else:
            card = ModelCard.load(hub.download_model_file(repo_id, "model" + CARD_SUFFIX, **kwargs))
            onnx_name = card.file.filename
        file = hub.download_model_file(
            repo_id, onnx_name, sha256=card.file.sha256 if card else None, **kwargs
        )
        return LocatedModel(file, card)
    raise ModelNotFound(
        f"no model {name!r}: it is not a local file or folder, not a built-in model "
        f"({', '.join(list_models())}), and not a Hugging Face repo id ('org/name' or "
        "'org/name/file.onnx'). Pass the path of a local .onnx file to use your own model."
    )


def graph_signature(path: str | Path) -> tuple[list[tuple[str, list[Any]]], list[tuple[str, list[Any]]]]:
    """The (name, shape) inputs and outputs of an ONNX file's graph (symbolic dims are strings),
    read with the ``onnx`` package: no ONNX Runtime session needed."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError, OSError...
        raise ModelError(f"{path} is not a readable ONNX model: {exc}") from exc

    def dims(value: Any) -> list[Any]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    weights = {t.name for t in proto.graph.initializer}
    inputs = [(v.name, dims(v)) for v in proto.graph.input if v.name not in weights]
    outputs = [(v.name, dims(v)) for v in proto.graph.output]
    if any(isinstance(d, str) for _, shape in outputs for d in shape[1:]):
        # The exporter left a width symbolic (a ReduceSum's output, say): infer it, as ONNX
        # Runtime would when loading the file.
        try:
            proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
            outputs = [(v.name, dims(v)) for v in proto.graph.output]
        except Exception:  # inference is best effort; the card check reports what stays unknown
            pass
    return inputs, outputs


def resolve_model(
    model: str | Path,
    *,
    card: ModelCard | str | Path | None = None,
    preprocess: dict[str, Any] | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
    force_download: bool = False,
) -> ResolvedModel:
    """``model`` (+ an explicit ``card`` and ``preprocess`` overrides) -> ONNX file + final card.

    The card is, in order: ``card`` if given (a :class:`ModelCard` or a card file), the card found
    with the model (beside the file, in its folder, built in, or in its hub repo), or inferred from
    the graph of a bare file in the original layout (:func:`~imgbeddings.models.cards.infer_card`).
    ``preprocess`` overrides then win over the card. Raises as :func:`locate`, and
    :class:`CardError` for a bad card or override.
    """
    located = locate(
        model, revision=revision, cache_dir=cache_dir, offline=offline, force_download=force_download
    )
    if card is not None:
        final = card if isinstance(card, ModelCard) else ModelCard.load(card)
    elif located.card is not None:
        final = located.card
    else:
        final = infer_card(located.path, *graph_signature(located.path))
    if preprocess:
        final = final.with_preprocess(**preprocess)
    return ResolvedModel(located.path, final)
