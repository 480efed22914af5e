"""Most similar images: embed a folder once, then find the nearest images to a query.

Mirrors the original imgbeddings Pokémon notebook (which Pokémon look most like this one?):
embed every image, then rank the collection by cosine similarity to a query image.

    python examples/similar_images.py                                # synthetic set + near copies
    python examples/similar_images.py --images photos/ --query photos/a.jpg --query new.png -k 10

A query may be an image in the folder (its stored vector is used, and it is left out of its own
results) or any other image file (embedded with the same model). Without --query, the first
image of the folder is the query. Outputs in --workdir: embeddings/ (the vectors).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _images, from any cwd

import _images

from imgbeddings import ImgbeddingsError, embed_files
from imgbeddings.analysis.search import search
from imgbeddings.analysis.vectors import VectorSet, similarity


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _images.add_common_args(parser)
    parser.add_argument("--query", action="append", help="query image (repeatable; default: the first image)")
    parser.add_argument("-k", type=int, default=5, help="results per query (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.k < 1:
        raise SystemExit(f"error: -k must be at least 1, got {args.k}")
    images, workdir = _images.prepare(args, near_copies=True)
    _images.model_note(args.model)
    try:
        run(args.model, images, workdir, args.query, args.k)
    except ImgbeddingsError as exc:
        raise SystemExit(f"error: {exc}") from None


def run(model: str, images, workdir, queries: list[str] | None, k: int) -> None:
    out = workdir / "embeddings"
    job = embed_files([str(images)], out, model=model, recursive=True)
    print(f"Embedded {job.counts.embedded} images ({job.counts.skipped} already done) into {out}")
    vs = VectorSet.from_output(out)
    if len(vs) < 2:
        raise SystemExit(f"error: {images} needs at least 2 images that embed, found {len(vs)}")
    queries = queries or [vs.paths[0]]  # stored in sorted path order: the folder's first image

    def show(path: str) -> str:  # paths under the image folder, relative to it
        inside = not os.path.relpath(path, images).startswith("..")
        return os.path.relpath(path, images) if inside else path

    for result in search(out, queries, k, exclude_self=True):
        print(f"\nquery: {show(result.query)} ({result.source})")
        if not result.ok:
            print(f"  could not be read: {result.error}")
            continue
        print(f"{'rank':>6}  {'cosine':>7}  path")
        for hit in result.results:
            print(f"{hit.rank:>6}  {hit.score:>7.4f}  {show(hit.path)}")

    # The same cosine by hand: similarity() of two vectors (here the first image and its best match).
    first = search(out, vs.paths[0], 1, exclude_self=True)[0].results[0]
    a, b = vs.vectors[0], vs.vectors[vs.index_of()[first.path]]
    cos = float(similarity(a, b)[0, 0])
    print(
        f"\nsimilarity({show(vs.paths[0])}, {show(first.path)}) = {cos:.4f} (search said {first.score:.4f})"
    )


if __name__ == "__main__":
    main()
