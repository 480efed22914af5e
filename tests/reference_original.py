"""Reference recipes of the original imgbeddings 0.1.0 (MIT, Max Woolf), kept as the yardstick
our own implementations are tested against. Needs torch; used by the export tests and by
scripts/make_test_assets.py."""

from __future__ import annotations

from typing import Any


def get_embeddings_from_output(outputs: Any, num_layers: int) -> Any:
    """``imgbeddings/models.py:get_embeddings_from_output`` of 0.1.0, unchanged in substance."""
    import torch

    hidden_states = torch.sum(torch.stack([outputs.hidden_states[i] for i in range(-num_layers, 0)]), 0)
    attentions = torch.stack([outputs.attentions[i] for i in range(-num_layers, 0)])
    # switch dimensions so batch dimension is first
    attentions = torch.transpose(attentions, 1, 0)
    attentions_reduced = torch.mean(attentions, (1, 2, 3))
    attentions_reweighted = attentions_reduced
    # the first value corresponds to the class token which is irrelevant
    attentions_reweighted[:, 0] = 0.0
    attentions_reweighted = attentions_reweighted / torch.unsqueeze(torch.sum(attentions_reweighted, 1), 1)
    embeddings = hidden_states * attentions_reweighted.unsqueeze(2)
    return embeddings.sum(1)


def square_pad(img: Any, background_color: tuple[int, int, int] = (0, 0, 0)) -> Any:
    """``imgbeddings/utils.py:square_pad`` of 0.1.0 (black background)."""
    from PIL import Image

    width, height = img.size
    if width == height:
        return img
    if width > height:
        result = Image.new(img.mode, (width, width), background_color)
        result.paste(img, (0, (width - height) // 2))
        return result
    result = Image.new(img.mode, (height, height), background_color)
    result.paste(img, ((height - width) // 2, 0))
    return result
