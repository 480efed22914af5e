"""Write a full-size, randomly initialised CLIP vision checkpoint (no hub needed).

Speed does not depend on weight values, so benchmarks run on these. The config values are
those of the OpenAI checkpoints (openai/clip-vit-base-patch32, -base-patch16, -large-patch14);
the preprocessor config is CLIP's. Fixed seed.

Usage: python benchmarks/make_checkpoint.py {b32,b16,l14} OUT_DIR [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

ARCHS = {
    "b32": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                patch_size=32, projection_dim=512),
    "b16": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                patch_size=16, projection_dim=512),
    "l14": dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                patch_size=14, projection_dim=768),
}  # fmt: skip


def make_checkpoint(arch: str, out: Path, seed: int = 0) -> Path:
    """Save a random-weight CLIPVisionModelWithProjection + CLIP image processor config to ``out``."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(seed)
    config = CLIPVisionConfig(image_size=224, hidden_act="quick_gelu", layer_norm_eps=1e-5, **ARCHS[arch])
    model = CLIPVisionModelWithProjection(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    CLIPImageProcessorPil().save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("arch", choices=sorted(ARCHS))
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_checkpoint(args.arch, args.out, args.seed))


if __name__ == "__main__":
    main()
