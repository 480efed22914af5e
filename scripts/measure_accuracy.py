"""Print the accuracy figures quoted in README, from the committed test models and references.

- compatibility: our ``imgbeddings.to_embeddings`` vs the original imgbeddings 0.1.0 on the
  same model files and images (reference vectors recorded by scripts/make_test_assets.py);
- exactness: our pixel tensors vs transformers' image processors;
- fast mode: deviation of ``mode="fast"`` from ``mode="exact"`` (tensors and embeddings).

Usage: python scripts/measure_accuracy.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imgbeddings import Embedder, imgbeddings
from imgbeddings.export.verify import cosines as cosine
from imgbeddings.images.preprocess import Preprocessor
from imgbeddings.models.cards import PreprocessSpec, original_format_preprocess

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


def main() -> None:
    original = np.load(DATA / "reference" / "original.npz")
    pixels = np.load(DATA / "reference" / "pixels.npz")
    paths = [str(DATA / "images" / str(n)) for n in original["names"]]
    print(f"{len(paths)} test images: {', '.join(Path(p).name for p in paths)}\n")

    print("Compatibility with imgbeddings 0.1.0 (same model file, same images)")
    print(f"{'model':<24}{'batch':>6}{'min cosine':>14}{'max |diff|':>14}")
    for model, patch in [("tiny_b32_legacy", 32), ("tiny_b32_legacy_int8", 32), ("tiny_b16_legacy_int8", 16)]:
        ibed = imgbeddings(model_path=str(DATA / "models" / f"{model}.onnx"), patch_size=patch)
        for batch, key in [(64, model), (3, model + "__batch3")]:
            ours = ibed.to_embeddings(paths, batch_size=batch)
            ref = original[key]
            print(f"{model:<24}{batch:>6}{cosine(ours, ref).min():>14.7f}{np.abs(ours - ref).max():>14.2e}")

    print("\nPixel tensors vs transformers (PIL backend), exact mode")
    specs = {
        "pad": original_format_preprocess(),
        "crop": original_format_preprocess(resize_mode="crop"),
        "squash": PreprocessSpec(
            resize_mode="squash", mean=tuple(pixels["siglip_mean"]), std=tuple(pixels["siglip_std"])
        ),
    }
    for name, spec in specs.items():
        diff = np.abs(Preprocessor(spec, "exact").batch(paths) - pixels[name]).max()
        print(f"  {name:<8} max |diff| = {diff:.2e}")

    print("\nFast mode vs exact mode (per image)")
    exact_px = Preprocessor(original_format_preprocess(), "exact").batch(paths)
    fast_px = Preprocessor(original_format_preprocess(), "fast").batch(paths)
    tensor_mad = np.abs(exact_px - fast_px).reshape(len(paths), -1).mean(1)
    rows = {}
    for model in ("tiny_b32_legacy", "tiny_b32_proj"):
        onnx = DATA / "models" / f"{model}.onnx"
        rows[model] = cosine(Embedder(onnx, mode="fast").embed(paths), Embedder(onnx).embed(paths))
    print(f"{'image':<24}{'tensor mean|diff|':>18}{'cos legacy':>12}{'cos proj':>12}")
    for i, p in enumerate(paths):
        print(
            f"{Path(p).name:<24}{tensor_mad[i]:>18.4f}"
            f"{rows['tiny_b32_legacy'][i]:>12.6f}{rows['tiny_b32_proj'][i]:>12.6f}"
        )
    print(
        f"{'mean':<24}{tensor_mad.mean():>18.4f}"
        f"{rows['tiny_b32_legacy'].mean():>12.6f}{rows['tiny_b32_proj'].mean():>12.6f}"
    )


if __name__ == "__main__":
    main()
