"""Zero-shot labels: each image's most likely label among words you give, with no training.

>>> text = TextEmbedder("clip-export/")
>>> pred = zero_shot(VectorSet.from_output("out/"), ["cat", "dog", "car"], text)
>>> pred.labels[:3], pred.probabilities[:3]      # the classify.Prediction of a trained probe

Each label becomes prompts from templates (``"a photo of a {}."`` ...); the label's vector is the
mean of its prompts' unit vectors, normalised again (CLIP's prompt ensembling). An image's
logits are ``logit_scale * cosine`` with each label (``+ logit_bias`` for SigLIP), from the text
card; probabilities are their softmax over the labels for CLIP (they sum to 1), and each
label's sigmoid for SigLIP (independent yes/no scores, as SigLIP was trained; they need not sum
to 1). The top label is the highest either way.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import OptionError
from .classify import Prediction
from .vectors import VectorSet, l2_rows

#: The default prompt ensemble: short, generic photo prompts of the kind CLIP's authors used
#: for ImageNet (``{}`` stands for the label).
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a blurry photo of a {}.",
    "a drawing of a {}.",
)


def read_templates(spec: str | os.PathLike[str] | Sequence[str] | None) -> tuple[str, ...]:
    """Templates from ``"default"`` (:data:`DEFAULT_TEMPLATES`), ``"none"`` (the label alone),
    a file (one template per line, each with ``{}``; blank lines and ``#`` comments skipped) or
    a list of templates."""
    if spec is None or (isinstance(spec, str) and spec == "default"):
        return DEFAULT_TEMPLATES
    if isinstance(spec, str) and spec == "none":
        return ("{}",)
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        if not path.is_file():
            raise OptionError(
                f"templates must be 'default', 'none' or a file of templates; {spec} is not a file"
            )
        lines = path.read_text(encoding="utf-8").splitlines()
        templates = tuple(t.strip() for t in lines if t.strip() and not t.lstrip().startswith("#"))
        origin = str(path)
    else:
        templates, origin = tuple(spec), "the templates"
    if not templates:
        raise OptionError(f"{origin} holds no templates")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise OptionError(
                f"each template needs exactly one {{}} where the label goes; got {t!r} in {origin}"
            )
    return templates


def clean_labels(labels: Sequence[str] | str) -> list[str]:
    """Labels from a list or a comma-separated string: stripped, non-empty, unique."""
    items = labels.split(",") if isinstance(labels, str) else list(labels)
    cleaned = [str(x).strip() for x in items]
    if not cleaned or not all(cleaned):
        raise OptionError(f"labels must be non-empty words or phrases, got {list(items)!r}")
    dupes = sorted(x for x, n in Counter(cleaned).items() if n > 1)
    if dupes:
        raise OptionError(f"labels must be distinct; repeated: {', '.join(dupes)}")
    return cleaned


def label_vectors(labels: Sequence[str], text_model: object, templates: Sequence[str]) -> np.ndarray:
    """One unit vector per label: the normalised mean of its prompts' unit vectors."""
    prompts = [t.format(label) for label in labels for t in templates]
    vectors = text_model.embed(prompts).reshape(len(labels), len(templates), -1)  # type: ignore[attr-defined]
    return l2_rows(vectors.mean(axis=1))


def zero_shot(
    vectors: VectorSet | np.ndarray,
    labels: Sequence[str] | str,
    text_model: object,
    *,
    templates: str | os.PathLike[str] | Sequence[str] | None = "default",
) -> Prediction:
    """The most likely of ``labels`` for each image vector, with probabilities (module doc).

    Args:
        vectors: an output's :class:`VectorSet` (checked to pair with ``text_model``) or an (N, D)
            array of image vectors from the text model's paired image model.
        labels: a list, or a comma-separated string.
        text_model: a :class:`~imgbeddings.text.embedder.TextEmbedder`.
        templates: ``"default"``, ``"none"``, a file, or a list (:func:`read_templates`).

    Raises:
        OptionError: no labels, empty or repeated labels, bad templates, a width that differs.
        ModelMismatch: the output's vectors are not from the text model's image side.
    """
    names = clean_labels(labels)
    prompts = read_templates(templates)
    vs = vectors if isinstance(vectors, VectorSet) else VectorSet.from_arrays(vectors)
    card = text_model.card  # type: ignore[attr-defined]
    if vs.manifest:
        text_model.check_pair(vs.manifest, vs.origin or "the output")  # type: ignore[attr-defined]
    if vs.dim != card.output.dim:
        raise OptionError(f"the image vectors are {vs.dim}-d, the text model's {card.output.dim}-d")
    classes = label_vectors(names, text_model, prompts)
    logits = card.similarity.logit_scale * (l2_rows(np.asarray(vs.vectors, dtype=np.float32)) @ classes.T)
    if card.similarity.activation == "sigmoid":
        probabilities = 1.0 / (1.0 + np.exp(-(logits + (card.similarity.logit_bias or 0.0))))
    else:
        logits = logits - logits.max(axis=1, keepdims=True) if len(logits) else logits
        e = np.exp(logits)
        probabilities = e / e.sum(axis=1, keepdims=True) if len(e) else e
    probabilities = np.asarray(probabilities, dtype=np.float32).reshape(len(vs), len(names))
    best = probabilities.argmax(axis=1) if len(vs) else np.empty(0, np.int64)
    return Prediction(list(vs.paths), [names[i] for i in best], probabilities, names)
