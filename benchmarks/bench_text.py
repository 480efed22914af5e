"""Text towers: strings/s at batch 1 and 256, INT8 vs fp32 vs PyTorch, and start-up time.

A full-size CLIP ViT-B/32 checkpoint with random weights (speed does not depend on weight
values; the text tower is CLIP's: 12 layers, width 512, context 77, vocabulary 49,408) and the
real CLIP BPE tokenizer (from ``tests/data/text``) is made once, exported with ``--text``, and
each contender runs in its own process:

- ``imgbeddings INT8`` / ``imgbeddings fp32``: :class:`~imgbeddings.text.embedder.TextEmbedder`
  on ``text_model.onnx`` / ``text_model_fp32.onnx`` (tokenising included);
- ``PyTorch (transformers)``: ``CLIPTokenizerFast`` + ``CLIPModel.get_text_features`` on the same
  checkpoint, ``torch.inference_mode``, the same thread count (the reference implementation).

Start-up: from starting the process's import to the first vector of one string. Throughput:
``--strings`` varied prompts one at a time (batch 1) and in batches of 256; median of
``--repeats``. Nothing here is a test.

Usage: python benchmarks/bench_text.py [--strings 512] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path("/tmp/imgbeddings-bench")
ROOT = Path(__file__).resolve().parents[1]
WORDS = ("dog cat beach mountain city street car bicycle child woman man tree flower river bridge "
         "painting sunset snow kitchen market boat train bird horse guitar").split()  # fmt: skip


def strings(n: int) -> list[str]:
    import random

    rng = random.Random(0)
    forms = ("a photo of a {} on a {}", "{} and {} at night", "an old {} near the {}", "a {} drawn as a {}")
    return [rng.choice(forms).format(rng.choice(WORDS), rng.choice(WORDS)) for _ in range(n)]


def make_export(workdir: Path) -> Path:
    """The checkpoint (random weights, real tokenizer) and its export with the text tower."""
    out = workdir / "clip-b32-text-export"
    if (out / "text_model.card.json").is_file():
        return out
    import torch
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from imgbeddings.export import export_model

    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]
    archs = importlib.import_module("make_checkpoint").ARCHS  # benchmarks/make_checkpoint.py
    write_clip_tokenizer = importlib.import_module("text_assets").write_clip_tokenizer  # tests/text_assets.py

    ckpt = workdir / "ckpt-clip-b32-full"
    if not (ckpt / "config.json").is_file():
        torch.manual_seed(0)
        vision = dict(archs["b32"], image_size=224, hidden_act="quick_gelu", layer_norm_eps=1e-5)
        projection = vision.pop("projection_dim")
        config = CLIPConfig(
            vision_config=vision, text_config=dict(hidden_act="quick_gelu"), projection_dim=projection
        )
        CLIPModel(config).eval().save_pretrained(ckpt)
        CLIPImageProcessorPil().save_pretrained(ckpt)
        write_clip_tokenizer(ckpt)
    export_model(ckpt, out, kind="projection", text=True)
    return out


def child(which: str, export: str, n: int, repeats: int, threads: int) -> None:
    t0 = time.perf_counter()
    texts = strings(n)
    if which == "torch":
        import torch
        from transformers import CLIPModel, CLIPTokenizerFast

        torch.set_num_threads(threads)
        ckpt = Path(export).parent / "ckpt-clip-b32-full"
        tok = CLIPTokenizerFast.from_pretrained(ckpt)
        model = CLIPModel.from_pretrained(ckpt).eval()

        def embed(batch: list[str]) -> None:
            ids = tok(batch, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
            with torch.inference_mode():
                model.get_text_features(input_ids=ids["input_ids"])
    else:
        from imgbeddings.text.embedder import TextEmbedder

        card = "text_model.card.json" if which == "int8" else "text_model_fp32.card.json"
        model = TextEmbedder(Path(export) / card, threads=threads, batch_size=256)

        def embed(batch: list[str]) -> None:
            model.embed(batch)

    embed(texts[:1])
    startup = time.perf_counter() - t0
    rates = {}
    for batch in (1, 256):
        runs = []
        for _ in range(repeats):
            t = time.perf_counter()
            for i in range(0, n if batch > 1 else min(n, 128), batch):
                embed(texts[i : i + batch])
            runs.append((n if batch > 1 else min(n, 128)) / (time.perf_counter() - t))
        rates[batch] = statistics.median(runs)
    print(json.dumps({"startup": startup, "rates": rates}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strings", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=BENCH)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.strings, args.repeats, args.threads)
        return
    export = make_export(args.workdir)
    rows = {}
    for which in ("int8", "fp32", "torch"):
        cmd = [sys.executable, __file__, "--child", which, str(export), "--strings", str(args.strings),
               "--repeats", str(args.repeats), "--threads", str(args.threads)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows[which] = json.loads(done.stdout.strip().splitlines()[-1])
    report = json.loads((export / "export_report.json").read_text()).get("text", {})
    names = {"int8": "imgbeddings INT8", "fp32": "imgbeddings fp32", "torch": "PyTorch (transformers)"}
    print(f"CLIP ViT-B/32 text tower (random weights), {args.threads} threads, {args.strings} strings")
    print("| contender | start-up s | strings/s batch 1 | strings/s batch 256 |")
    print("|---|---|---|---|")
    for which, row in rows.items():
        r = row["rates"]
        print(f"| {names[which]} | {row['startup']:.2f} | {r['1']:.1f} | {r['256']:.1f} |")
    t = rows["torch"]["rates"]
    for which in ("int8", "fp32"):
        r = rows[which]["rates"]
        print(
            f"{names[which]} / PyTorch: batch 1 {r['1'] / t['1']:.2f}x, batch 256 {r['256'] / t['256']:.2f}x"
        )
    print("INT8 vs fp32 (export gate, corpus):", json.dumps(report.get("int8_vs_fp32", report.get("int8"))))


if __name__ == "__main__":
    main()
