"""Clusters and a linear probe on a folder of two (or more) classes of images.

Mirrors the original imgbeddings "cats vs. dogs" notebook: embed labelled images, see that
unsupervised clusters already follow the classes, then train a logistic-regression classifier
(a linear probe) on the embeddings and measure its cross-validated accuracy.

    python examples/clusters_and_probe.py                       # synthetic warm/cool images
    python examples/clusters_and_probe.py --images pets/        # pets/cat/*.jpg, pets/dog/*.jpg

Outputs in --workdir: embeddings/ (the vectors), sheets/ (a contact sheet PNG per cluster),
probe.json (the trained probe).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _images, from any cwd

import _images

from imgbeddings import ImgbeddingsError, embed_files
from imgbeddings.analysis.classify import class_folders, train_probe
from imgbeddings.analysis.cluster import cluster, contact_sheets
from imgbeddings.analysis.vectors import VectorSet
from imgbeddings.inputs import canonical_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _images.add_common_args(parser)
    args = parser.parse_args(argv)
    images, workdir = _images.prepare(args)
    classes = class_folders(images)  # {class name: [image files]}, one sub-folder per class
    if len(classes) < 2 or min(len(files) for files in classes.values()) < 2:
        found = ", ".join(f"{name} ({len(files)})" for name, files in classes.items()) or "none"
        raise SystemExit(
            f"error: {images} needs one sub-folder per class, at least 2 classes of at least 2 images "
            f"each (found: {found})"
        )
    _images.model_note(args.model)
    try:
        run(args.model, images, workdir, classes)
    except ImgbeddingsError as exc:
        raise SystemExit(f"error: {exc}") from None


def run(model: str, images, workdir, classes: dict[str, list[str]]) -> None:
    # 1. Embed every class folder into an output folder (resumable: a second run skips them).
    out = workdir / "embeddings"
    job = embed_files([str(images / name) for name in classes], out, model=model, recursive=True)
    print(f"Embedded {job.counts.embedded} images ({job.counts.skipped} already done) into {out}")
    vs = VectorSet.from_output(out)
    label_of = {canonical_path(p): name for name, files in classes.items() for p in files}
    if not set(vs.paths) <= set(label_of):
        raise SystemExit(f"error: {out} also holds other images (an earlier run?): use a new --workdir")
    labels = [label_of[p] for p in vs.paths]

    # 2. k-means with one cluster per class: do the clusters follow the classes?
    result = cluster(vs, k=len(classes))
    names = sorted(classes)
    print(f"\nk-means, k={len(classes)}: images of each class per cluster")
    print(f"{'cluster':>8} {'size':>5}  " + "  ".join(f"{n:>8}" for n in names))
    majority = 0
    for cluster_id, size in result.sizes().items():
        counts = Counter(lab for lab, c in zip(labels, result.labels, strict=True) if c == cluster_id)
        majority += max(counts.values())
        print(f"{cluster_id:>8} {size:>5}  " + "  ".join(f"{counts[n]:>8}" for n in names))
    print(f"purity: {majority / len(vs):.3f} (share of images in their cluster's majority class)")
    sheets = contact_sheets(result, workdir / "sheets")
    print(f"contact sheets: {', '.join(str(p) for p in sheets)}")

    # 3. A linear probe: logistic regression, C chosen by cross-validation.
    probe = train_probe(vs, labels)
    acc, folds = probe.cv_accuracy, probe.cv_folds
    print(f"\nlinear probe: cross-validated accuracy {acc:.3f} ({folds} folds), C={probe.C:g}")
    print("confusion matrix (rows: true class, columns: predicted):")
    print(" " * 10 + "".join(f"{c:>10}" for c in probe.classes))
    for name, row in zip(probe.classes, probe.confusion, strict=True):
        print(f"{name:>10}" + "".join(f"{n:>10}" for n in row))
    saved = probe.save(workdir / "probe.json")
    print(f"probe saved: {saved}")

    # 4. Predict with it (here on the training images themselves; use new images in practice).
    pred = probe.predict(vs)
    right = sum(p == t for p, t in zip(pred.labels, labels, strict=True))
    print(f"predictions on the training images: {right}/{len(pred)} right; first three:")
    for path, label, conf in list(zip(pred.paths, pred.labels, pred.confidence, strict=True))[:3]:
        print(f"  {os.path.relpath(path, images):<24} {label:<8} p={conf:.3f}")


if __name__ == "__main__":
    main()
