"""Run the original imgbeddings 0.1.0 offline, for reference outputs and side-by-side benchmarks.

It cannot run as published any more (it imports ``huggingface_hub.cached_download``, removed
upstream, and downloads a processor from the hub at every construction), so this fetches its
sdist from PyPI, gives it a stand-in ``cached_download`` (never called with ``model_path``) and
a local ``CLIPProcessor`` with the values it would have downloaded (transformers' PIL backend:
resize shortest edge 224 bicubic, no crop, OpenAI CLIP mean/std).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import tarfile
import types
from pathlib import Path


def load_original(workdir: Path) -> type:
    """Import imgbeddings 0.1.0 from its sdist, offline (stand-ins for its two hub calls)."""
    if not list(workdir.glob("imgbeddings-0.1.0.tar.gz")):
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "-q",
            "-d",
            str(workdir),
            "imgbeddings==0.1.0",
        ]
        subprocess.run(cmd, check=True)
    with tarfile.open(next(workdir.glob("imgbeddings-0.1.0.tar.gz"))) as tar:
        tar.extractall(workdir, filter="data")
    import huggingface_hub
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    huggingface_hub.cached_download = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("offline"))

    class LocalProcessor:  # what CLIPProcessor.from_pretrained("openai/clip-vit-base-patch32") gives
        def __init__(self) -> None:
            self.feature_extractor = CLIPImageProcessorPil()

        def __call__(self, images, return_tensors="np"):
            return self.feature_extractor(images=images, return_tensors=return_tensors)

    # transformers replaces its module object on first use: patch the one in sys.modules now.
    sys.modules["transformers"].CLIPProcessor = types.SimpleNamespace(
        from_pretrained=lambda *a, **k: LocalProcessor()
    )
    sys.path.insert(0, str(workdir / "imgbeddings-0.1.0"))
    for name in [m for m in sys.modules if m == "imgbeddings" or m.startswith("imgbeddings.")]:
        del sys.modules[name]
    module = importlib.import_module("imgbeddings.imgbeddings")
    sys.path.pop(0)
    return module.imgbeddings
