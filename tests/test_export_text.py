"""``export --text``: the text tower of tiny random full CLIP/SigLIP checkpoints (built here with a
fixed seed, with real tokenizer files from :mod:`text_assets`; no hub) -> ONNX + tokenizer.json +
text card, checked against transformers' own tokenizer and ``get_text_features``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import cosine

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch", reason="the export tests need the [export] extra (torch)")
transformers = pytest.importorskip("transformers")

from imgbeddings.errors import ExportError  # noqa: E402
from imgbeddings.export import export_model  # noqa: E402
from imgbeddings.export.text import export_text  # noqa: E402
from imgbeddings.hub import sha256_file  # noqa: E402
from imgbeddings.models.cards import ModelCard  # noqa: E402
from imgbeddings.text.card import TEXT_CARD, TextCard  # noqa: E402
from text_assets import (  # noqa: E402
    CLIP_CONTEXT,
    CLIP_VOCAB_SIZE,
    SIGLIP_VOCAB_SIZE,
    write_clip_tokenizer,
    write_siglip_tokenizer,
)

SEED = 4321
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   image_size=224, patch_size=32)  # fmt: skip
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def quiet(**kw):
    return {"verify_images": 4, **kw}


@pytest.fixture(scope="module")
def clip_full(tmp_path_factory):
    """A full CLIPModel checkpoint with OpenAI CLIP's real tokenizer files."""
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(SEED)
    text = dict(TINY_TEXT, vocab_size=CLIP_VOCAB_SIZE, max_position_embeddings=CLIP_CONTEXT)
    cfg = CLIPConfig(vision_config=TINY_VISION, text_config=text, projection_dim=24)
    path = tmp_path_factory.mktemp("clip-text")
    CLIPModel(cfg).eval().save_pretrained(path)
    CLIPImageProcessorPil().save_pretrained(path)
    write_clip_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def siglip_full(tmp_path_factory):
    """A full SiglipModel checkpoint with a small SentencePiece tokenizer of SigLIP's kind."""
    from transformers import SiglipConfig, SiglipModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    torch.manual_seed(SEED + 1)
    text = dict(TINY_TEXT, vocab_size=SIGLIP_VOCAB_SIZE, pad_token_id=1, eos_token_id=1, bos_token_id=None)
    cfg = SiglipConfig(vision_config=dict(TINY_VISION, patch_size=16), text_config=text)
    path = tmp_path_factory.mktemp("siglip-text")
    model = SiglipModel(cfg).eval()
    with torch.no_grad():  # the init zeroes them: give the card's similarity something to carry
        model.logit_scale.fill_(np.log(10.0))
        model.logit_bias.fill_(-10.0)
    model.save_pretrained(path)
    SiglipImageProcessorPil().save_pretrained(path)
    write_siglip_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def clip_export(clip_full, tmp_path_factory):
    out = tmp_path_factory.mktemp("clip-out")
    result = export_model(clip_full, out, kind="projection", text=True, **quiet())
    return out, result


@pytest.fixture(scope="module")
def siglip_export(siglip_full, tmp_path_factory):
    out = tmp_path_factory.mktemp("siglip-out")
    result = export_model(siglip_full, out, kind="projection", text=True, **quiet())
    return out, result


def corpus():
    from imgbeddings.export.tokenizer import load_corpus

    return load_corpus()


def reference(checkpoint, model_cls, context_length, texts):
    """transformers' own tokenizer and get_text_features: (ids, vectors)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = tokenizer(texts, padding="max_length", max_length=context_length, truncation=True,
                    return_tensors="pt")["input_ids"]  # fmt: skip
    model = model_cls.from_pretrained(checkpoint, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model.get_text_features(input_ids=ids)
    out = out.pooler_output if hasattr(out, "pooler_output") else out
    return ids.numpy(), out.numpy()


def onnx_vectors(path, ids):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["text_embeds"], {"input_ids": ids.astype(np.int64)})[0]


def check_export(out, result, checkpoint, model_cls, family):
    from imgbeddings.text.tokenize import TextTokenizer

    report = json.loads((out / "export_report.json").read_text())
    text = report["text"]
    assert text == result.report["text"]
    assert text["token_parity"]["mismatches"] == 0 and text["token_parity"]["strings"] >= 20
    assert text["fp32_vs_torch"]["min_cosine"] >= 0.99999
    card = TextCard.load(out / TEXT_CARD)
    assert card.family == family and card.file.filename == text["model"] == "text_model.onnx"
    assert card.file.sha256 == sha256_file(out / "text_model.onnx")
    assert card.tokenizer.sha256 == sha256_file(out / card.tokenizer.filename)
    assert card.output.dim == card.pairs_with.dim == result.card.output.dim
    image_cards = [ModelCard.load(out / "model.card.json"), ModelCard.load(out / "model_fp32.card.json")]
    assert set(card.pairs_with.cards) == {c.fingerprint() for c in image_cards}
    assert card.pairs_with.checkpoint == card.source.checkpoint == str(checkpoint)
    assert text["card_fingerprint"] == card.fingerprint()
    if "int8_dropped" in text:  # the INT8 gate failed: text_model.onnx is the float32 model
        assert card.file.precision == "fp32" and not (out / "text_model_fp32.onnx").exists()
        fp32_path = out / "text_model.onnx"
    else:
        assert card.file.precision == "int8-dynamic" and text["int8_vs_fp32"]["min_cosine"] >= 0.99
        fp32_card = TextCard.load(out / "text_model_fp32.card.json")
        assert fp32_card.file.precision == "fp32" and fp32_card.pairs_with == card.pairs_with
        fp32_path = out / "text_model_fp32.onnx"

    texts = corpus()
    ids, ref = reference(checkpoint, model_cls, card.tokenizer.context_length, texts)
    ours = TextTokenizer.from_spec(card.tokenizer, out).encode(texts)
    np.testing.assert_array_equal(ours, ids)  # the runtime tokenizer gives transformers' ids
    assert cosine(onnx_vectors(fp32_path, ids), ref).min() >= 0.99999
    c = cosine(onnx_vectors(out / "text_model.onnx", ids), ref)
    assert c.min() >= 0.99 and c.mean() >= 0.995
    return card, text


def test_clip_text_tower(clip_export, clip_full):
    from transformers import CLIPModel

    out, result = clip_export
    card, text = check_export(out, result, clip_full, CLIPModel, "clip")
    assert card.tokenizer.context_length == text["context_length"] == 77
    assert card.tokenizer.pad_id == 49407
    model = CLIPModel.from_pretrained(clip_full)
    assert card.similarity.activation == "softmax" and card.similarity.logit_bias is None
    assert card.similarity.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()), rel=1e-6)
    assert text["similarity"]["logit_scale"] == card.similarity.logit_scale


def test_siglip_text_tower(siglip_export, siglip_full):
    from transformers import SiglipModel

    out, result = siglip_export
    card, text = check_export(out, result, siglip_full, SiglipModel, "siglip")
    assert card.tokenizer.context_length == text["context_length"] == 64
    assert card.similarity.activation == "sigmoid"
    assert card.similarity.logit_scale == pytest.approx(10.0, rel=1e-5)
    assert card.similarity.logit_bias == pytest.approx(-10.0)


def test_failed_int8_gate_keeps_the_float32_model(clip_full, tmp_path, caplog):
    out = tmp_path / "t"
    with caplog.at_level("WARNING", logger="imgbeddings.export"):
        report = export_text(clip_full, out, image_cards=[], min_int8_cosine=1.01)
    assert "INT8 vs fp32 min cosine" in report["int8_dropped"] and report["int8_vs_fp32"]["min_cosine"] < 1.01
    assert any("INT8 dropped" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    card = TextCard.load(out / TEXT_CARD)
    assert card.file.filename == "text_model.onnx" and card.file.precision == "fp32"
    assert card.file.sha256 == sha256_file(out / "text_model.onnx")
    assert sorted(p.name for p in out.iterdir()) == [TEXT_CARD, "text_model.onnx", "tokenizer.json"]
    assert card.pairs_with.cards == ()


def test_text_without_quantising(clip_full, tmp_path):
    result = export_model(clip_full, tmp_path / "n", text=True, quantize_recipe="none", **quiet())
    text = result.report["text"]
    assert text["quantize"] == "none" and "int8_vs_fp32" not in text and "int8_dropped" in text
    card = TextCard.load(tmp_path / "n" / TEXT_CARD)
    assert card.file.precision == "fp32" and card.pairs_with.cards == (result.card.fingerprint(),)


def test_text_needs_the_projection_kind(clip_full, tmp_path):
    for kind in ("legacy", "pooled"):
        with pytest.raises(ExportError, match="projection"):
            export_model(clip_full, tmp_path / kind, kind=kind, text=True, **quiet())
        assert not (tmp_path / kind).exists()  # refused before anything is written


def test_text_needs_a_full_checkpoint(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    path = tmp_path / "vision"
    CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_VISION, projection_dim=24)).save_pretrained(path)
    CLIPImageProcessorPil().save_pretrained(path)
    with pytest.raises(ExportError, match="--text needs a full CLIP or SigLIP checkpoint"):
        export_model(path, tmp_path / "o", text=True, **quiet())
    assert not (tmp_path / "o").exists()
    with pytest.raises(ExportError, match="no text tower"):
        export_text(path, tmp_path / "o2", image_cards=[])


def test_cli_export_text(clip_full, tmp_path, capsys):
    from test_cli import run

    out = tmp_path / "cli"
    code, stdout, err = run(["export", str(clip_full), "-o", str(out), "--text"], capsys)
    assert code == 0, err
    assert stdout.strip() == str(out / "model.onnx")
    assert "text fp32 ONNX vs PyTorch" in err and "text tower done" in err
    card = TextCard.load(out / TEXT_CARD)
    assert card.pairs_with.cards and (out / "tokenizer.json").is_file()
    code, _, err = run(["export", str(clip_full), "-o", str(tmp_path / "x"), "--kind", "pooled", "--text"],
                       capsys)  # fmt: skip
    assert code != 0 and "projection" in err and "Traceback" not in err


def test_old_clip_configs_pool_at_the_highest_id(tmp_path):
    """Older CLIP configs (openai/clip-vit-*) say eos_token_id 2: transformers then pools at the
    argmax of the ids (the end token is the highest id); the export follows the same path."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(SEED + 2)
    text = dict(TINY_TEXT, vocab_size=CLIP_VOCAB_SIZE, eos_token_id=2, bos_token_id=0, pad_token_id=1)
    path = tmp_path / "old-clip"
    cfg = CLIPConfig(vision_config=TINY_VISION, text_config=text, projection_dim=24)
    CLIPModel(cfg).save_pretrained(path)
    write_clip_tokenizer(path)
    report = export_text(path, tmp_path / "o", image_cards=[], quantize=False)
    assert report["fp32_vs_torch"]["min_cosine"] >= 0.99999 and report["token_parity"]["mismatches"] == 0


def test_hub_checkpoints_get_their_tokenizer_files(monkeypatch, tmp_path):
    """A Hub checkpoint's download has configs and weights only: the tokenizer files are fetched at
    the same commit before the tokenizer is exported."""
    from imgbeddings import hub
    from imgbeddings.export.checkpoint import Source
    from imgbeddings.export.text import TOKENIZER_FILES, tokenizer_folder

    snapshot = tmp_path / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    calls = []
    monkeypatch.setattr(hub, "download_checkpoint", lambda repo, **kw: calls.append((repo, kw)) or snapshot)
    source = Source("org/clip", snapshot, {"model_type": "clip"}, "clip", "a" * 40)
    assert tokenizer_folder(source) == snapshot
    assert calls == [("org/clip", {"revision": "a" * 40, "allow_patterns": list(TOKENIZER_FILES)})]
    calls.clear()
    local = Source(str(tmp_path), tmp_path, {"model_type": "clip"}, "clip", None)
    assert tokenizer_folder(local) == tmp_path and not calls
