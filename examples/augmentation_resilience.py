"""How much do embeddings move when an image is colour-jittered and rotated?

Mirrors the original imgbeddings augmentation notebook, with its helper kept as it was:
``imgbeddings().augment_images`` (random colour, contrast and brightness changes, a small
rotation, square padding). For each image: embed it and a few augmented copies, and compare
the cosine of the image with its own copies to its cosine with the *other* images. A robust
model keeps an image's copies closer to it than unrelated images are.

    python examples/augmentation_resilience.py                    # synthetic images
    python examples/augmentation_resilience.py --images photos/ --copies 8 --limit 20

Outputs in --workdir: augmented/ (the copies of the first image, to look at).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _images, from any cwd

import _images

from imgbeddings import ImgbeddingsError, imgbeddings
from imgbeddings.analysis.vectors import similarity
from imgbeddings.inputs import walk_folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _images.add_common_args(parser)
    parser.add_argument("--copies", type=int, default=5, help="augmented copies per image (default: 5)")
    parser.add_argument("--limit", type=int, default=10, help="images to use, at most (default: 10)")
    args = parser.parse_args(argv)
    if args.copies < 1 or args.limit < 2:
        raise SystemExit("error: --copies must be at least 1 and --limit at least 2")
    images, workdir = _images.prepare(args)
    paths = list(walk_folder(str(images), recursive=True))
    if len(paths) < 2:
        raise SystemExit(f"error: {images} needs at least 2 images, found {len(paths)}")
    step = max(1, len(paths) // args.limit)  # spread the chosen images over the folder's classes
    paths = paths[::step][: args.limit]
    _images.model_note(args.model)
    try:
        run(args.model, paths, images, workdir, args.copies, args.seed)
    except ImgbeddingsError as exc:
        raise SystemExit(f"error: {exc}") from None


def run(model: str, paths: list[str], images, workdir, copies: int, seed: int) -> None:
    ibed = imgbeddings(model_path=model)  # the original API: a model name or an .onnx file
    originals = ibed.to_embeddings(paths)
    others = similarity(originals, originals)
    np.fill_diagonal(others, np.nan)
    print(f"{len(paths)} images, {copies} augmented copies each (cosine similarity, 1 = same direction)")
    print(f"{'image':<24} {'copies: mean':>12} {'min':>7} {'others: mean':>13} {'max':>7}")
    margins = []
    for i, path in enumerate(paths):
        # A seed per image (seed 0 would mean "do not seed" to augment_images, hence the + 1).
        augmented = ibed.augment_images(path, multiples=copies, seed=seed * 1000 + i + 1)
        if i == 0:
            (workdir / "augmented").mkdir(exist_ok=True)
            for j, img in enumerate(augmented):
                img.save(workdir / "augmented" / f"copy_{j}.jpg", quality=90)
        own = similarity(originals[i], ibed.to_embeddings(augmented))[0]
        other = others[i][~np.isnan(others[i])]
        margins.append(own.mean() - other.mean())
        name = os.path.relpath(path, images)
        print(f"{name:<24} {own.mean():>12.4f} {own.min():>7.4f} {other.mean():>13.4f} {other.max():>7.4f}")
    mean, positive = np.mean(margins), sum(m > 0 for m in margins)
    print(f"margin (copies mean - others mean): {mean:+.4f} on average, positive for {positive}/{len(paths)}")
    print(f"the first image's augmented copies: {workdir / 'augmented'}")


if __name__ == "__main__":
    main()
