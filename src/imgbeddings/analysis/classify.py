"""A linear probe: logistic regression on embeddings, trained from a folder of labelled images.

>>> probe = train_probe("train/", embedder=Embedder())    # train/<class>/*.jpg, one folder per class
>>> probe.cv_accuracy, probe.confusion                    # cross-validated, at the chosen C
>>> probe.save("probe.json")
>>> pred = Probe.load("probe.json").predict(VectorSet.from_output("out/"))
>>> pred.labels[:3], pred.probabilities.shape            # ['cat', 'dog', 'cat'], (N, n_classes)

Vectors are L2-normalised, then standardised (each dimension's mean and scale from the
training set), then fed to a multinomial logistic regression. ``C`` (inverse regularisation)
is chosen from ``Cs`` by stratified k-fold cross-validation (5 folds, fewer when a class has
fewer images); the accuracy and confusion matrix reported are those cross-validated
predictions at the chosen C (choosing C on the same folds makes them slightly optimistic).
The final model is fitted on all the training vectors.

A probe is saved as plain JSON: classes, coefficients, intercepts, C, the standardisation,
the cross-validation results, and the identity of the embedder whose vectors it was trained
on (``Embedder.identity()``: model card, mode, normalisation, PCA) with its fingerprint.
Predicting on vectors made any other way raises :class:`~imgbeddings.errors.ModelMismatch`.
No pickle: a probe file cannot run code, and it loads without scikit-learn.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import Failure, ModelMismatch, OptionError
from ..inputs import walk_folder
from .reduce import require_vectors
from .vectors import VectorSet, l2_rows

if TYPE_CHECKING:
    from ..embedder import Embedder

FORMAT = "imgbeddings-probe"
FORMAT_VERSION = 1
#: Inverse regularisation strengths tried by cross-validation.
DEFAULT_CS = (0.01, 0.1, 1.0, 10.0, 100.0)


@dataclass
class Prediction:
    """``labels[i]`` (the most probable class) and ``probabilities[i]`` (float32, one column
    per class in ``classes`` order) for ``paths[i]``."""

    paths: list[str]
    labels: list[str]
    probabilities: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def confidence(self) -> np.ndarray:
        """Probability of each predicted label, float32 (N,)."""
        return self.probabilities.max(axis=1) if len(self.paths) else np.empty(0, np.float32)


@dataclass
class Probe:
    """A trained linear probe (see the module docstring). ``coef`` is (n_classes, D) — (1, D)
    for two classes, as in scikit-learn, where it scores ``classes[1]`` — and applies to
    standardised unit vectors ``(unit(x) - mean) / scale``."""

    classes: list[str]
    coef: np.ndarray
    intercept: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    C: float
    identity: dict[str, Any] | None = None
    fingerprint: str | None = None
    class_weight: str | None = None
    cv_accuracy: float | None = None
    cv_folds: int | None = None
    confusion: list[list[int]] | None = None
    cv_scores: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)

    @property
    def dim(self) -> int:
        """Width of the vectors it takes."""
        return int(self.mean.shape[0])

    def __repr__(self) -> str:
        acc = "?" if self.cv_accuracy is None else f"{self.cv_accuracy:.3f}"
        return f"Probe(classes={self.classes}, dim={self.dim}, C={self.C:g}, cv_accuracy={acc})"

    # --- prediction --------------------------------------------------------------------------
    def check(self, vs: VectorSet) -> None:
        """Raise :class:`ModelMismatch` unless ``vs`` holds vectors made the way the training
        vectors were (same identity when both are known; same width always)."""
        from ..shards import identity_of

        if vs.dim != self.dim:
            raise ModelMismatch(
                f"the probe takes {self.dim}-d vectors, these are {vs.dim}-d: they come from another "
                "model (or PCA). Train a probe on vectors from the same model."
            )
        if self.identity is None or not vs.manifest.get("fingerprint"):
            return
        theirs = identity_of(vs.manifest)
        if theirs != self.identity:
            keys = [
                k for k in sorted(set(theirs) | set(self.identity)) if theirs.get(k) != self.identity.get(k)
            ]
            parts = "; ".join(
                f"{k}: {theirs.get(k)!r} here, {self.identity.get(k)!r} in training" for k in keys
            )
            raise ModelMismatch(
                f"these vectors were made differently from the probe's training vectors ({parts}), so the "
                "probe does not apply to them. Embed the images with the model and settings the probe was "
                "trained with (--model, --fast/--exact, --normalize, --pca), or train a probe on these."
            )

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """Class probabilities, float32 (N, n_classes), for raw vectors (no identity check)."""
        x = (l2_rows(vectors).astype(np.float64) - self.mean) / self.scale
        z = x @ self.coef.T + self.intercept
        if len(self.classes) == 2:  # one score for classes[1], as scikit-learn's binary case
            p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.stack([1.0 - p1, p1], axis=1).astype(np.float32)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def predict(self, vs: VectorSet | np.ndarray) -> Prediction:
        """Labels and probabilities for each vector of ``vs`` (a VectorSet is checked with
        :meth:`check`; a plain array only for its width)."""
        if not isinstance(vs, VectorSet):
            vs = VectorSet.from_arrays(vs)
        self.check(vs)
        probabilities = self.scores(np.asarray(vs.vectors))
        best = probabilities.argmax(axis=1) if len(vs) else np.empty(0, dtype=np.int64)
        return Prediction(list(vs.paths), [self.classes[i] for i in best], probabilities, list(self.classes))

    # --- files -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form :meth:`save` writes."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "classes": self.classes,
            "coef": self.coef.tolist(),
            "intercept": self.intercept.tolist(),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "C": self.C,
            "identity": self.identity,
            "fingerprint": self.fingerprint,
            "class_weight": self.class_weight,
            "cv": {
                "accuracy": self.cv_accuracy,
                "folds": self.cv_folds,
                "confusion": self.confusion,
                "accuracy_by_C": self.cv_scores,
            },
            "counts": self.counts,
            "failures": len(self.failures),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the probe as JSON (written to a temporary name and renamed)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Probe:
        """Read a probe written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:
            raise OptionError(f"cannot read probe {path}: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise OptionError(f'{path} is not an imgbeddings probe file (no "format": "{FORMAT}")')
        if data.get("format_version") != FORMAT_VERSION:
            raise OptionError(
                f"{path} is probe format {data.get('format_version')}, this imgbeddings reads "
                f"{FORMAT_VERSION}: upgrade imgbeddings, or train the probe again"
            )
        try:
            cv = data.get("cv") or {}
            probe = cls(
                classes=[str(c) for c in data["classes"]],
                coef=np.asarray(data["coef"], dtype=np.float64),
                intercept=np.asarray(data["intercept"], dtype=np.float64),
                mean=np.asarray(data["mean"], dtype=np.float64),
                scale=np.asarray(data["scale"], dtype=np.float64),
                C=float(data["C"]),
                identity=data.get("identity"),
                fingerprint=data.get("fingerprint"),
                class_weight=data.get("class_weight"),
                cv_accuracy=cv.get("accuracy"),
                cv_folds=cv.get("folds"),
                confusion=cv.get("confusion"),
                cv_scores=cv.get("accuracy_by_C") or {},
                counts=data.get("counts") or {},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise OptionError(f"{path} is a damaged probe file: {exc!r}") from exc
        rows = 1 if len(probe.classes) == 2 else len(probe.classes)
        if probe.coef.shape != (rows, probe.dim) or probe.intercept.shape != (rows,):
            raise OptionError(
                f"{path} is a damaged probe file: coef {probe.coef.shape} / intercept "
                f"{probe.intercept.shape} do not fit {len(probe.classes)} classes of {probe.dim}-d vectors"
            )
        return probe


# --- training ----------------------------------------------------------------------------------


def class_folders(folder: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Image files of each sub-folder of ``folder`` (searched recursively), by sub-folder name;
    sub-folders without images are left out. Images directly in ``folder`` are ignored."""
    root = Path(folder)
    if not root.is_dir():
        raise OptionError(f"{folder} is not a folder (expected one sub-folder of images per class)")
    found = {}
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.is_dir() and not entry.name.startswith("."):
            files = list(walk_folder(str(entry), recursive=True))
            if files:
                found[entry.name] = files
    return found


def _embed_folder(
    folder: str | os.PathLike[str], embedder: Embedder, progress: bool
) -> tuple[VectorSet, list[str], list[Failure]]:
    classes = class_folders(folder)
    paths = [p for files in classes.values() for p in files]
    labels = [name for name, files in classes.items() for _ in files]
    batch = embedder.embed_with_failures(paths, progress=progress)
    ok = batch.ok
    vs = VectorSet(
        [p for p, good in zip(paths, ok, strict=True) if good],
        batch.vectors[ok],
        {"identity": embedder.identity(), "fingerprint": embedder.fingerprint()},
    )
    return vs, [lab for lab, good in zip(labels, ok, strict=True) if good], list(batch.failures)


def _labels_of(vs: VectorSet, labels: Sequence[Any] | str | None) -> list[str]:
    if labels is None:
        raise OptionError("labels are needed to train on vectors: one per vector, or 'folder'")
    if isinstance(labels, str):
        if labels != "folder":
            raise OptionError(
                f"labels must be a sequence or 'folder' (each path's parent folder), not {labels!r}"
            )
        return [os.path.basename(os.path.dirname(p)) for p in vs.paths]
    if len(labels) != len(vs):
        raise OptionError(f"got {len(labels)} labels for {len(vs)} vectors")
    return [str(x) for x in labels]


def _model(C: float, class_weight: str | None, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        StandardScaler(), LogisticRegression(C=C, class_weight=class_weight, max_iter=5000, random_state=seed)
    )


def train_probe(
    data: str | os.PathLike[str] | VectorSet | np.ndarray,
    labels: Sequence[Any] | str | None = None,
    *,
    embedder: Embedder | None = None,
    class_weight: str | None = None,
    Cs: Sequence[float] = DEFAULT_CS,
    folds: int = 5,
    seed: int = 0,
    progress: bool = False,
) -> Probe:
    """Train a linear probe.

    Args:
        data: a folder with one sub-folder of images per class (its name is the class;
            sub-folders are searched recursively), embedded with ``embedder``; or vectors (a
            :class:`VectorSet`, e.g. of an output, or an (N, D) array) with ``labels``.
        labels: one label per vector, or ``"folder"``: each path's parent folder name (an
            output embedded from ``DIR/<class>/...``).
        embedder: the :class:`~imgbeddings.Embedder` for a folder. Images that fail to embed
            are left out and listed in ``probe.failures``.
        class_weight: None, or ``"balanced"`` (weights inversely proportional to class sizes).
        Cs: inverse regularisation strengths to choose from by cross-validation.
        folds: stratified cross-validation folds (lowered to the smallest class's size).
        seed: fold shuffling and solver random state.

    Raises:
        OptionError: fewer than 2 classes, a class with fewer than 2 vectors, bad labels or options.
    """
    from sklearn.metrics import confusion_matrix
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    failures: list[Failure] = []
    if isinstance(data, (str, os.PathLike)):
        if embedder is None:
            raise OptionError("training on a folder of images needs an embedder (embedder=Embedder(...))")
        vs, y_list, failures = _embed_folder(data, embedder, progress)
    else:
        vs = data if isinstance(data, VectorSet) else VectorSet.from_arrays(data)
        y_list = _labels_of(vs, labels)
    if class_weight not in (None, "balanced"):
        raise OptionError(f"class_weight must be None or 'balanced', not {class_weight!r}")
    if not Cs or any(c <= 0 for c in Cs):
        raise OptionError(f"Cs must be positive numbers, got {list(Cs)}")
    require_vectors(vs, 2, "train a probe")
    classes, y = np.unique(np.asarray(y_list, dtype=object).astype(str), return_inverse=True)
    counts = np.bincount(y, minlength=len(classes))
    if len(classes) < 2:
        raise OptionError(f"a probe needs at least 2 classes, got {len(classes)} ({', '.join(classes)})")
    if counts.min() < 2:
        small = ", ".join(f"{c} ({n})" for c, n in zip(classes, counts, strict=True) if n < 2)
        raise OptionError(f"every class needs at least 2 images to cross-validate; too few: {small}")
    n_folds = int(min(folds, counts.min()))
    if n_folds < 2:
        raise OptionError(f"folds must be at least 2, got {folds}")
    x = l2_rows(np.asarray(vs.vectors)).astype(np.float64)
    splitter = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
    scores, predictions = {}, {}
    for C in Cs:
        predicted = cross_val_predict(_model(C, class_weight, seed), x, y, cv=splitter)
        predictions[C], scores[C] = predicted, float(np.mean(predicted == y))
    best = max(Cs, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    final = _model(best, class_weight, seed).fit(x, y)
    scaler, logreg = final.steps[0][1], final.steps[1][1]
    identity = vs.manifest.get("identity")
    if identity is None and vs.manifest.get("fingerprint"):
        from ..shards import identity_of

        identity = identity_of(vs.manifest)
    return Probe(
        classes=[str(c) for c in classes],
        coef=np.asarray(logreg.coef_, dtype=np.float64),
        intercept=np.asarray(logreg.intercept_, dtype=np.float64),
        mean=np.asarray(scaler.mean_, dtype=np.float64),
        scale=np.asarray(scaler.scale_, dtype=np.float64),
        C=float(best),
        identity=identity,
        fingerprint=vs.manifest.get("fingerprint"),
        class_weight=class_weight,
        cv_accuracy=scores[best],
        cv_folds=n_folds,
        confusion=confusion_matrix(y, predictions[best], labels=range(len(classes))).tolist(),
        cv_scores={f"{c:g}": s for c, s in scores.items()},
        counts={str(c): int(n) for c, n in zip(classes, counts, strict=True)},
        failures=failures,
    )


def write_predictions(prediction: Prediction, path: str | os.PathLike[str]) -> Path:
    """Write predictions as Parquet: ``path``, ``label``, ``probability`` (of that label), and
    one ``p:<class>`` column per class (float32)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, Any] = {
        "path": pa.array(prediction.paths, type=pa.string()),
        "label": pa.array(prediction.labels, type=pa.string()),
        "probability": pa.array(prediction.confidence, type=pa.float32()),
    }
    for i, name in enumerate(prediction.classes):
        columns[f"p:{name}"] = pa.array(prediction.probabilities[:, i], type=pa.float32())
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(pa.table(columns), tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
