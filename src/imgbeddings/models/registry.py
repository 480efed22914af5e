"""Which model a name means, and where its ONNX file and card are.

:func:`resolve_model` is the one place that turns what a caller passes (name | repo | path |
folder, plus an explicit card and preprocessing overrides) into an ONNX file and its final
card. :func:`locate` finds the file; a name (``str`` or ``os.PathLike``, read as its string) is
read in this order:

1. ``hf-hub:org/name[/file.onnx][@revision]``: always the Hugging Face repo.
2. a built-in name (``list_models()``; case-insensitive; ``patch32`` = ``patch32_v1``): always
   the built-in model, even when a file or folder of that name is in the current directory (a
   warning then says how to pick the local one). An untrusted folder cannot shadow a built-in.
3. an existing local path: an ``.onnx`` file (card beside it as ``<stem>.card.json``, or none),
   a ``.card.json`` file (its ``file.filename`` names the ONNX file beside it), or a folder
   holding one ``*.card.json`` + its ``.onnx`` (what ``imgbeddings export`` writes). To use a
   local file or folder named like a built-in, write it as a path: ``./patch32_v1`` or an
   absolute path. ``pathlib`` drops a leading ``./`` (``Path("./patch32_v1")`` prints as
   ``patch32_v1``), so pass such a path as a string or ``Path(...).resolve()``.
4. a Hugging Face repo: ``org/name`` (card ``model.card.json`` in the repo),
   ``org/name/file.onnx`` (card ``file.card.json`` if the repo has one), optionally
   ``@revision`` at the end. A local path wins over a repo id of the same spelling (as in 3);
   names written as paths (starting with ``.``, ``/`` or ``~``) and two-part names ending in
   ``.onnx``/``.card.json`` are never repo ids (``hf-hub:`` forces the repo).

A card's ``file.filename`` must stay inside the card's folder (or repo): a plain relative path,
no ``..``, not absolute (:func:`~imgbeddings.models.cards.check_filename`); it is checked when
the card is read and again where it is joined to the folder. Symlinks inside the folder are
followed, as the Hugging Face cache and ``snapshot_download`` folders are made of them.

Built-in cards live in ``models/builtin/*.card.json``; no model facts are in this code.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .. import hub
from ..errors import CardError, ModelCorrupted, ModelError, ModelNotFound, ModelUnavailable
from .cards import CARD_SUFFIX, ModelCard, card_path_for, check_filename, infer_card

DEFAULT_MODEL = "patch32_v1"
HUB_PREFIX = "hf-hub:"
# org and name start and end with a letter or digit, as on the Hub (so ``./x`` and ``../x`` are not ids)
_REPO_PART = r"\w(?:[\w.\-]*\w)?"
_REPO_RE = re.compile(rf"^(?:hf-hub:)?({_REPO_PART}/{_REPO_PART})(/[\w.\-/]+\.onnx)?(?:@([\w.\-/]+))?$")
_PATH_SUFFIXES = (".onnx", CARD_SUFFIX)


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
            card = ModelCard.from_json(entry.read_text(encoding="utf-8"), origin=entry.name)
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


def join_inside(folder: Path, filename: str, origin: str) -> Path:
    """``folder / filename`` for a card's ``file.filename``, refusing any name that leaves
    ``folder`` (checked on the names, not through symlinks: see the module docstring)."""
    try:
        check_filename(filename)
    except CardError as exc:
        raise CardError(f"model card {origin}: {exc}") from exc
    base = os.path.normpath(os.path.abspath(folder))
    target = os.path.normpath(os.path.join(base, filename))
    if os.path.commonpath([base, target]) != base:  # unreachable after check_filename; kept as a guard
        raise CardError(f"model card {origin}: file.filename {filename!r} points outside {folder}")
    return folder / filename


def _card_and_file(card_file: Path) -> tuple[ModelCard, Path]:
    card = ModelCard.load(card_file)
    onnx_path = join_inside(card_file.parent, card.file.filename, str(card_file))
    if not onnx_path.is_file():
        raise ModelNotFound(
            f"model card {card_file} names the ONNX file {card.file.filename!r}, which is not in "
            f"{card_file.parent}: put the file there, or fix file.filename in the card"
        )
    return card, onnx_path


def _locate_local(path: Path) -> LocatedModel:
    if path.is_dir():
        cards = sorted(path.glob("*" + CARD_SUFFIX))
        if len(cards) > 1 and (path / ("model" + CARD_SUFFIX)).is_file():
            cards = [path / ("model" + CARD_SUFFIX)]  # an export folder: model.onnx is the one to use
        if len(cards) == 1:
            card, onnx_path = _card_and_file(cards[0])
        elif not cards and len(list(path.glob("*.onnx"))) == 1:
            onnx_path, card = next(path.glob("*.onnx")), None
        else:
            found = [p.name for p in cards] or [p.name for p in path.glob("*.onnx")]
            raise CardError(
                f"{path} is a folder with {len(found)} candidate models ({found}); pass the .onnx file"
            )
    elif path.name.endswith(CARD_SUFFIX):
        card, onnx_path = _card_and_file(path)
    else:
        onnx_path = path
        card_file = card_path_for(path)
        card = ModelCard.load(card_file) if card_file.is_file() else None
    if card is not None:
        verify_local(onnx_path, card)
    return LocatedModel(onnx_path, card)


def _written_as_path(name: str) -> bool:
    """True for a name that can only mean a local path (never a built-in name or a repo id)."""
    head = name.split("@", 1)[0]
    return (
        name.startswith((".", "~", "/", os.sep))
        or os.path.isabs(name)
        or (head.lower().endswith(_PATH_SUFFIXES) and head.count("/") <= 1)
    )


def _not_found(name: str) -> ModelNotFound:
    builtins = ", ".join(list_models())
    if _written_as_path(name) or os.sep in name or (os.altsep and os.altsep in name):
        where = os.path.abspath(os.path.expanduser(name))
        return ModelNotFound(
            f"no model file or folder {name!r} ({where} does not exist): check the path, or use a "
            f"built-in model ({builtins}) or a Hugging Face repo id ('org/name')"
        )
    return ModelNotFound(
        f"no model {name!r}: it is not a built-in model ({builtins}), not an existing local file "
        "or folder, and not a Hugging Face repo id ('org/name' or 'org/name/file.onnx'). Pass the "
        "path of a local .onnx file or export folder to use your own model."
    )


def _hub_file_name(name: str, onnx_name: str) -> str:
    try:
        return check_filename(onnx_name, f"the file path in {name!r}")
    except CardError as exc:
        raise ModelNotFound(str(exc)) from exc


def locate(
    model: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
    force_download: bool = False,
) -> LocatedModel:
    """Locate ``model`` (built-in name, local path or hub repo; see the module docstring for the
    order), downloading it if needed.

    Raises:
        ModelNotFound: the name is none of the accepted forms, or a local path does not exist.
        ModelUnavailable: a download was needed and failed (offline, unreachable, missing).
        ModelCorrupted: the file's checksum is wrong.
        CardError: the card is malformed, or its ``file.filename`` leaves its folder.
    """
    name = os.fsdecode(os.fspath(model))
    hub_kwargs = {"cache_dir": cache_dir, "offline": offline, "force_download": force_download}
    card = None if name.startswith(HUB_PREFIX) else _builtin(name)
    if card is not None:
        if os.path.lexists(name):
            warnings.warn(
                f"{name!r} means the built-in model {card.name}; the local {name!r} in "
                f"{os.getcwd()} is not used. To use it, pass it as a path: './{name}'",
                UserWarning,
                stacklevel=2,
            )
        if not (card.file.repo_id and card.file.filename):
            raise CardError(f"built-in card {card.name} has no download location")
        file = hub.download_model_file(
            card.file.repo_id,
            card.file.filename,
            revision=revision or card.file.revision or "main",
            sha256=card.file.sha256,
            **hub_kwargs,
        )
        return LocatedModel(file, card)
    if not name.startswith(HUB_PREFIX):
        path = Path(name).expanduser()
        if path.exists():
            return _locate_local(path)
        if _written_as_path(name):
            raise _not_found(name)
    match = _REPO_RE.match(name)
    if not match:
        raise _not_found(name)
    repo_id, onnx_name, rev = match.group(1), match.group(2), match.group(3)
    kwargs = {"revision": revision or rev or "main", **hub_kwargs}
    if onnx_name:
        onnx_name = _hub_file_name(name, onnx_name[1:])  # drop the "/" after the repo id
        try:
            card_file = hub.download_model_file(repo_id, Path(onnx_name).stem + CARD_SUFFIX, **kwargs)
            card = ModelCard.load(card_file)
        except ModelUnavailable:
            card = None  # a bare ONNX file in a repo: the card will be inferred from the graph
    else:
        card = ModelCard.load(hub.download_model_file(repo_id, "model" + CARD_SUFFIX, **kwargs))
        onnx_name = card.file.filename  # checked by the card: a relative path inside the repo
    file = hub.download_model_file(repo_id, onnx_name, sha256=card.file.sha256 if card else None, **kwargs)
    return LocatedModel(file, card)


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
