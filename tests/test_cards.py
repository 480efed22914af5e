"""Model cards: schema, validation, built-ins, inference for bare files, fingerprints."""

from __future__ import annotations

import json

import pytest

from conftest import MODELS
from imgbeddings import list_models
from imgbeddings.errors import CardError
from imgbeddings.models.cards import ModelCard, card_path_for, infer_card, original_format_preprocess
from imgbeddings.models.registry import builtin_cards, locate


def test_builtin_models_match_the_original_release():
    cards = builtin_cards()
    assert list_models() == ["patch14_v1", "patch16_v1", "patch32_v1"]
    expected = {
        "patch32_v1": (768, 6, "openai/clip-vit-base-patch32"),
        "patch16_v1": (768, 1, "openai/clip-vit-base-patch16"),
        "patch14_v1": (1024, 1, "openai/clip-vit-large-patch14"),
    }
    for name, (dim, layers, ckpt) in expected.items():
        card = cards[name]
        assert (card.output.dim, card.output.legacy_layers, card.source.checkpoint) == (dim, layers, ckpt)
        assert (
            card.output.kind == "legacy"
            and card.output.name == "embeddings"
            and card.input.name == "pixel_values"
        )
        assert (card.file.repo_id, card.file.filename) == ("minimaxir/imgbeddings", f"{name}.onnx")
        assert card.preprocess.resize_mode == "pad" and card.preprocess.pad_color == (0, 0, 0)
        assert card.preprocess.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))


def test_roundtrip(tmp_path):
    card = ModelCard.load(card_path_for(MODELS / "tiny_b32_proj.onnx"))
    path = card.save(tmp_path / "x.card.json")
    again = ModelCard.load(path)
    assert again == card and again.fingerprint() == card.fingerprint()


def test_fingerprint_tracks_what_changes_vectors():
    card = builtin_cards()["patch32_v1"]
    assert card.with_preprocess(pad_color=(255, 255, 255)).fingerprint() != card.fingerprint()
    from dataclasses import replace

    assert replace(card, description="other words").fingerprint() == card.fingerprint()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("preprocess", "resize_mode"), "zoom", "resize_mode"),
        (("preprocess", "mean"), [0.5, 0.5], "three numbers"),
        (("preprocess", "std"), [0.5, 0, 0.5], "positive"),
        (("preprocess", "pad_color"), [0, 0, 300], "0-255"),
        (("output", "kind"), "magic", "output.kind"),
        (("output", "dim"), 0, "output.dim"),
        (("file", "sha256"), "abc", "64 hex"),
        (("schema_version",), 99, "schema_version 99"),
        (("extra",), 1, "unknown keys"),
        (("preprocess", "colour"), 1, "unknown keys in 'preprocess'"),
    ],
)
def test_invalid_cards_are_refused(path, value, message):
    data = builtin_cards()["patch32_v1"].to_dict()
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(CardError, match=message):
        ModelCard.from_dict(data)


def test_missing_and_broken_card_files(tmp_path):
    data = builtin_cards()["patch32_v1"].to_dict()
    del data["output"]
    with pytest.raises(CardError, match="missing"):
        ModelCard.from_dict(data)
    bad = tmp_path / "bad.card.json"
    bad.write_text("{not json")
    with pytest.raises(CardError, match="not valid JSON"):
        ModelCard.load(bad)
    with pytest.raises(CardError, match="cannot read"):
        ModelCard.load(tmp_path / "none.card.json")


def test_infer_card_for_original_layout():
    card = infer_card("m.onnx", [("pixel_values", ["batch", 3, 224, 224])], [("embeddings", ["batch", 1024])])
    assert card.output.dim == 1024 and card.output.kind == "legacy"
    assert card.preprocess == original_format_preprocess()


@pytest.mark.parametrize(
    ("inputs", "outputs"),
    [
        ([("pixel_values", ["b", 3, 224, 224])], [("image_embeds", ["b", 512])]),
        ([("input", ["b", 3, 224, 224])], [("embeddings", ["b", 768])]),
        ([("pixel_values", ["b", 3, 336, 336])], [("embeddings", ["b", 768])]),
        ([("pixel_values", ["b", 3, 224, 224])], [("embeddings", ["b", "d"])]),
    ],
)
def test_infer_card_refuses_ambiguity(inputs, outputs):
    with pytest.raises(CardError, match="card"):
        infer_card("m.onnx", inputs, outputs)


def test_resolve_local_forms(tmp_path):
    assert locate(MODELS / "tiny_b32_proj.onnx").card.name == "tiny_b32_proj"
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("a", "b"):
        (folder / f"{name}.card.json").write_text(json.dumps(builtin_cards()["patch32_v1"].to_dict()))
    with pytest.raises(CardError, match=r"pass the \.onnx file"):
        locate(folder)
