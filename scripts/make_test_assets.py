"""Build the test suite's small models, images and reference outputs (run once, commit the result).

Needs the reference stack: ``pip install torch==2.13.0 transformers onnx onnxruntime`` plus
the original ``imgbeddings==0.1.0`` sdist, fetched here with ``pip download``.

Writes, under tests/data/:
- images/*: small deterministic photo-like test images (JPEG and PNG, odd sizes and ratios);
- models/*.onnx + *.card.json: tiny randomly initialised CLIP vision towers, fixed seed:
    tiny_b32_legacy  (patch 32, legacy pooling of the last 6 layers, fp32) and its INT8 copy
                     made with the original recipe (quantize_dynamic, QUInt8);
    tiny_b16_legacy  (patch 16, legacy pooling of the last layer, INT8);
    tiny_b32_proj    (patch 32, CLIP image_embeds projection, fp32);
- reference/pixels.npz: pixel tensors from transformers' PIL image processors
    (CLIPImageProcessor on the square-padded image with do_center_crop=False = the original
    recipe; CLIPImageProcessor default = crop; SiglipImageProcessor = squash);
- reference/vectors.npz: PyTorch outputs of the tiny models on those tensors;
- reference/original.npz: what imgbeddings 0.1.0's to_embeddings returns for the images and
    the tiny INT8/fp32 legacy models;
- reference/manifest.json: seed and library versions.

Usage: python scripts/make_test_assets.py [--out tests/data]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from imgbeddings.export.samples import photo_like

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_original import get_embeddings_from_output, square_pad

sys.path.insert(0, str(Path(__file__).resolve().parent))
from original_package import load_original

SEED = 20261129
IMAGES = {  # name: (width, height, format)
    "photo_640x480.jpg": (640, 480, "JPEG"),
    "big_1600x1200.jpg": (1600, 1200, "JPEG"),
    "portrait_300x500.png": (300, 500, "PNG"),
    "wide_1000x180.jpg": (1000, 180, "JPEG"),
    "tall_150x900.png": (150, 900, "PNG"),
    "square_224.png": (224, 224, "PNG"),
    "small_61x97.png": (61, 97, "PNG"),
    "odd_333x301.jpg": (333, 301, "JPEG"),
}


def make_images(out: Path, rng: np.random.Generator) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (w, h, fmt) in IMAGES.items():
        path = out / name
        kwargs = {"quality": 88} if fmt == "JPEG" else {"optimize": True}
        photo_like(w, h, rng).save(path, fmt, **kwargs)
        paths.append(path)
    return paths


# --- models --------------------------------------------------------------------------------


def legacy_pooling(outputs, num_layers: int):
    """The original imgbeddings pooling (tests/reference_original.py)."""
    return get_embeddings_from_output(outputs, num_layers)


def tiny_config(patch_size: int, layers: int, projection: bool = False):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        image_size=224,
        patch_size=patch_size,
        projection_dim=24,
        # Larger than CLIP's 0.02 so that random towers give clearly different vectors per image.
        initializer_range=0.2,
        initializer_factor=4.0,
        attn_implementation="eager",
    )


def build_model(kind: str, patch_size: int, layers: int, seed: int):
    import torch
    from transformers import CLIPVisionModel, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    cfg = tiny_config(patch_size, layers)
    cls = CLIPVisionModelWithProjection if kind == "projection" else CLIPVisionModel
    model = cls(cfg).eval()
    return model


def export_onnx(model, kind: str, num_layers: int | None, path: Path) -> None:
    import torch

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            if kind == "legacy":
                out = self.m(pixel_values, output_attentions=True, output_hidden_states=True)
                return legacy_pooling(out, num_layers)
            return self.m(pixel_values).image_embeds

    out_name = "embeddings" if kind == "legacy" else "image_embeds"
    dummy = torch.zeros(2, 3, 224, 224)
    torch.onnx.export(
        Wrapper(model),
        (dummy,),
        str(path),
        input_names=["pixel_values"],
        output_names=[out_name],
        dynamic_axes={"pixel_values": {0: "batch"}, out_name: {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def torch_outputs(model, kind: str, num_layers: int | None, pixels: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        x = torch.from_numpy(pixels)
        if kind == "legacy":
            out = model(x, output_attentions=True, output_hidden_states=True)
            return legacy_pooling(out, num_layers).numpy()
        return model(x).image_embeds.numpy()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_card(
    onnx_path: Path, *, kind: str, dim: int, layers: int | None, resize_mode: str, arch: str, description: str
) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from imgbeddings.models.cards import (
        FileSpec,
        ModelCard,
        OutputSpec,
        SourceSpec,
        card_path_for,
        original_format_preprocess,
    )

    card = ModelCard(
        name=onnx_path.stem,
        family="clip",
        architecture=arch,
        preprocess=original_format_preprocess(resize_mode=resize_mode),
        output=OutputSpec(
            dim=dim,
            kind=kind,
            name="embeddings" if kind == "legacy" else "image_embeds",
            legacy_layers=layers,
        ),
        file=FileSpec(filename=onnx_path.name, sha256=sha256(onnx_path)),
        source=SourceSpec(checkpoint=f"random-init tiny CLIPVisionConfig (seed {SEED})"),
        description=description,
    )
    card.save(card_path_for(onnx_path))


# --- reference preprocessing -----------------------------------------------------------------


def reference_pixels(paths: list[Path]) -> dict[str, np.ndarray]:
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    pad = CLIPImageProcessorPil(do_center_crop=False)
    crop = CLIPImageProcessorPil()
    sig = SiglipImageProcessorPil()
    imgs = [Image.open(p).convert("RGB") for p in paths]
    return {
        "pad": np.concatenate(
            [pad(images=[square_pad(i)], return_tensors="np")["pixel_values"] for i in imgs]
        ),
        "crop": np.concatenate([crop(images=[i], return_tensors="np")["pixel_values"] for i in imgs]),
        "squash": np.concatenate([sig(images=[i], return_tensors="np")["pixel_values"] for i in imgs]),
        "siglip_mean": np.asarray(sig.image_mean, dtype=np.float64),
        "siglip_std": np.asarray(sig.image_std, dtype=np.float64),
    }


# --- the original package ---------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "data"))
    args = parser.parse_args()
    out = Path(args.out)
    rng = np.random.default_rng(SEED)
    paths = make_images(out / "images", rng)
    models_dir = out / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    ref_dir = out / "reference"
    ref_dir.mkdir(parents=True, exist_ok=True)

    pixels = reference_pixels(paths)
    names = [p.name for p in paths]
    np.savez_compressed(ref_dir / "pixels.npz", names=np.array(names), **pixels)

    from onnxruntime.quantization import QuantType, quantize_dynamic

    specs = [  # name, kind, patch, layers (model), pooled layers, resize mode for the card
        ("tiny_b32_legacy", "legacy", 32, 6, 6, "pad"),
        ("tiny_b16_legacy", "legacy", 16, 2, 1, "pad"),
        ("tiny_b32_proj", "projection", 32, 3, None, "crop"),
    ]
    vectors: dict[str, np.ndarray] = {}
    for i, (name, kind, patch, layers, pooled, mode) in enumerate(specs):
        model = build_model(kind, patch, layers, SEED + i)
        fp32 = models_dir / f"{name}.onnx"
        export_onnx(model, kind, pooled, fp32)
        px = pixels["pad" if mode == "pad" else "crop"]
        vectors[name] = torch_outputs(model, kind, pooled, px)
        dim = vectors[name].shape[1]
        desc = f"Tiny random CLIP vision tower (patch {patch}, {layers} layers) for tests; {kind} output."
        write_card(
            fp32,
            kind=kind,
            dim=dim,
            layers=pooled,
            resize_mode=mode,
            arch=f"tiny ViT/{patch}",
            description=desc,
        )
        if kind == "legacy":
            int8 = models_dir / f"{name}_int8.onnx"
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QUInt8)  # the original recipe
            write_card(
                int8,
                kind=kind,
                dim=dim,
                layers=pooled,
                resize_mode=mode,
                arch=f"tiny ViT/{patch}",
                description=desc + " INT8, original recipe (quantize_dynamic, QUInt8).",
            )
    if (models_dir / "tiny_b16_legacy.onnx").exists():  # only the INT8 copy is used by tests
        (models_dir / "tiny_b16_legacy.onnx").unlink()
        (models_dir / "tiny_b16_legacy.card.json").unlink()
    np.savez_compressed(ref_dir / "vectors.npz", names=np.array(names), **vectors)

    # The original package on the same files: all images in one batch, and in batches of 3.
    with tempfile.TemporaryDirectory() as tmp:
        Original = load_original(Path(tmp))
        path_strs = [str(p) for p in paths]
        original: dict[str, np.ndarray] = {}
        for name in ("tiny_b32_legacy", "tiny_b32_legacy_int8", "tiny_b16_legacy_int8"):
            ibed = Original(
                model_path=str(models_dir / f"{name}.onnx"), patch_size=16 if "b16" in name else 32
            )
            original[name] = ibed.to_embeddings(path_strs)
            original[name + "__batch3"] = ibed.to_embeddings(path_strs, batch_size=3)
    np.savez_compressed(ref_dir / "original.npz", names=np.array(names), **original)

    import onnx
    import onnxruntime
    import PIL
    import torch
    import transformers

    manifest = {
        "seed": SEED,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "Pillow": PIL.__version__,
            "numpy": np.__version__,
            "original_imgbeddings": "0.1.0",
        },
        "images": names,
        "models": {p.name: sha256(p) for p in sorted(models_dir.glob("*.onnx"))},
    }
    (ref_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
