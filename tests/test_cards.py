"""Model cards: schema, validation, built-ins, inference for bare files, fingerprints."""

from __future__ import annotations

import json
import re

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
        (("preprocess", "std"), [0.5, 0, 0.5], r"preprocess\.std\[1\].*got 0"),
        (("preprocess", "pad_color"), [0, 0, 300], "0-255"),
        (("output", "kind"), "magic", "output.kind"),
        (("output", "dim"), 0, "output.dim"),
        (("file", "sha256"), "abc", "64 hex"),
        (("schema_version",), 99, "schema_version 99"),
        (("extra",), 1, "unknown keys"),
        (("preprocess", "colour"), 1, "unknown keys in 'preprocess'"),
        # numbers must be finite, of the right type and within the documented bounds
        (("preprocess", "mean"), [0.5, float("nan"), 0.5], r"preprocess\.mean\[1\].*nan"),
        (("preprocess", "mean"), [0.5, 0.5, float("-inf")], r"preprocess\.mean\[2\].*-inf"),
        (("preprocess", "mean"), [0.5, 0.5, 1e300], r"preprocess\.mean\[2\]"),
        (("preprocess", "mean"), ["0.5", 0.5, 0.5], "three numbers"),
        (("preprocess", "std"), [0.5, float("inf"), 0.5], r"preprocess\.std\[1\].*inf"),
        (("preprocess", "std"), [0.5, float("nan"), 0.5], r"preprocess\.std\[1\].*nan"),
        (("preprocess", "std"), [0.5, 1e-300, 0.5], r"preprocess\.std\[1\].*1e-300"),
        (("preprocess", "std"), [0.5, -0.5, 0.5], r"preprocess\.std\[1\].*from 1e-06 to 1e\+06"),
        (("preprocess", "std"), [0.5, 1e9, 0.5], r"preprocess\.std\[1\]"),
        (("preprocess", "std"), [True, 0.5, 0.5], "three numbers"),
        (("preprocess", "rescale"), float("nan"), "preprocess.rescale.*nan"),
        (("preprocess", "rescale"), float("inf"), "preprocess.rescale.*inf"),
        (("preprocess", "rescale"), 0, "preprocess.rescale.*got 0"),
        (("preprocess", "rescale"), -1 / 255, "preprocess.rescale"),
        (("preprocess", "rescale"), 1e30, "preprocess.rescale"),
        (("preprocess", "rescale"), "0.5", "preprocess.rescale"),
        (("preprocess", "size"), 7, "preprocess.size.*8 to 8192.*got 7"),
        (("preprocess", "size"), 100_000, "preprocess.size"),
        (("preprocess", "size"), 224.0, "preprocess.size"),
        (("preprocess", "size"), True, "preprocess.size"),
        (("preprocess", "pad_color"), [0.5, 0, 0], "0-255"),
        (("preprocess", "exif_transpose"), "false", "preprocess.exif_transpose"),
        (("output", "dim"), 10**9, "output.dim"),
        (("output", "dim"), 768.0, "output.dim"),
        (("output", "dim"), True, "output.dim"),
        (("output", "legacy_layers"), 0, "output.legacy_layers"),
        (("output", "legacy_layers"), 6.5, "output.legacy_layers"),
        (("output", "normalized"), "no", "output.normalized"),
        (("schema_version",), True, "schema_version True"),
        (("name",), 5, "name must be a string"),
        # file.filename stays inside the card's folder (or hub repo)
        (("file", "filename"), "../../../../etc/passwd", "file.filename.*plain relative path"),
        (("file", "filename"), "/etc/passwd", "file.filename"),
        (("file", "filename"), "sub/../../x.onnx", "file.filename"),
        (("file", "filename"), "sub/../x.onnx", "file.filename"),
        (("file", "filename"), "./model.onnx", "file.filename"),
        (("file", "filename"), "a//model.onnx", "file.filename"),
        (("file", "filename"), "..\\..\\x.onnx", "file.filename"),
        (("file", "filename"), "C:/x.onnx", "file.filename"),
        (("file", "filename"), "", "file.filename"),
        (("file", "filename"), None, "file.filename"),
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


def test_errors_name_the_card_file_on_one_line(tmp_path):
    data = builtin_cards()["patch32_v1"].to_dict()
    data["preprocess"]["std"] = [0.5, 1e-300, 0.5]
    path = tmp_path / "m.card.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CardError) as info:
        ModelCard.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_valid_numbers_still_load():
    data = builtin_cards()["patch32_v1"].to_dict()
    # ImageNet-style 0-255 normalisation, a numpy-free int rescale, a sub-folder file
    data["preprocess"].update(rescale=1, mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])
    data["preprocess"]["size"] = 8192
    data["file"]["filename"] = "onnx/model.onnx"
    card = ModelCard.from_dict(data)
    assert card.preprocess.rescale == 1.0 and isinstance(card.preprocess.rescale, float)
    assert card.file.filename == "onnx/model.onnx"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
def test_card_files_with_non_finite_json_numbers_are_refused(tmp_path, literal):
    """Python's json reads NaN/Infinity literals and turns 1e999 into inf: a card must not."""
    text = json.dumps(builtin_cards()["patch32_v1"].to_dict())
    text = text.replace('"rescale": 0.00392156862745098', f'"rescale": {literal}')
    assert literal in text
    path = tmp_path / "m.card.json"
    path.write_text(text)
    with pytest.raises(CardError, match=r"not valid JSON.*finite") as info:
        ModelCard.load(path)
    assert str(path) in str(info.value)
    with pytest.raises(CardError, match="finite"):
        ModelCard.from_json(text)


def test_card_files_that_are_not_json_text(tmp_path):
    path = tmp_path / "m.card.json"
    path.write_bytes(b'{"name": "caf\xe9"}')
    with pytest.raises(CardError, match="not UTF-8"):
        ModelCard.load(path)
    path.write_text("[" * 100_000)
    with pytest.raises(CardError, match=re.escape(str(path))):
        ModelCard.load(path)
    path.write_text('{"schema_version": ' + "9" * 5000 + "}")
    with pytest.raises(CardError, match=re.escape(str(path))):
        ModelCard.load(path)
    bom = tmp_path / "bom.card.json"  # a BOM written by a Windows editor is fine
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(builtin_cards()["patch32_v1"].to_dict()).encode())
    assert ModelCard.load(bom) == builtin_cards()["patch32_v1"]


def test_user_overrides_are_validated_too():
    card = builtin_cards()["patch32_v1"]
    with pytest.raises(CardError, match=r"preprocess\.std"):
        card.with_preprocess(std=(0.5, float("nan"), 0.5))
    with pytest.raises(CardError, match=r"preprocess\.size"):
        card.with_preprocess(size=10**6)


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
