"""Text queries at run time: TextEmbedder, text -> image search and zero-shot labels, against
PyTorch transformers on tiny random CLIP and SigLIP checkpoints with real tokenizer files
(exported here with ``--text``; the runtime side imports neither torch nor transformers)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import MODELS, cosine
from test_cli import run

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch", reason="building the text checkpoints needs the [export] extra")
transformers = pytest.importorskip("transformers")

from imgbeddings import Embedder  # noqa: E402
from imgbeddings.analysis.search import search_text  # noqa: E402
from imgbeddings.analysis.vectors import VectorSet  # noqa: E402
from imgbeddings.analysis.zero_shot import zero_shot  # noqa: E402
from imgbeddings.errors import ModelMismatch, ModelNotFound, ModelUnavailable, OptionError  # noqa: E402
from imgbeddings.export import export_model  # noqa: E402
from imgbeddings.job import embed_files  # noqa: E402
from imgbeddings.text.embedder import TextEmbedder  # noqa: E402
from text_assets import write_clip_tokenizer, write_siglip_tokenizer  # noqa: E402

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              image_size=224, patch_size=32, initializer_factor=4.0)  # fmt: skip
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
TEXTS = ["a photo of a cat", "A DOG on the beach!!", "café 中文 🙂", "", "x " * 120]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """(checkpoint, export folder) of a tiny CLIPModel with CLIP's real BPE tokenizer."""
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(7)
    ckpt = tmp_path_factory.mktemp("clip-ckpt")
    cfg = CLIPConfig(vision_config=VISION, text_config=dict(TEXT, vocab_size=49408), projection_dim=24)
    CLIPModel(cfg).eval().save_pretrained(ckpt)
    CLIPImageProcessorPil().save_pretrained(ckpt)
    write_clip_tokenizer(ckpt)
    out = tmp_path_factory.mktemp("clip-export")
    export_model(ckpt, out, kind="projection", text=True, verify_images=4)
    return ckpt, out


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    from transformers import SiglipConfig, SiglipModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    torch.manual_seed(8)
    ckpt = tmp_path_factory.mktemp("siglip-ckpt")
    write_siglip_tokenizer(ckpt)  # a 768-piece SentencePiece model (tests/data/text/README.md)
    text = dict(TEXT, vocab_size=768, max_position_embeddings=16)
    cfg = SiglipConfig(vision_config=dict(VISION, patch_size=16), text_config=text)
    SiglipModel(cfg).eval().save_pretrained(ckpt)
    SiglipImageProcessorPil().save_pretrained(ckpt)
    out = tmp_path_factory.mktemp("siglip-export")
    export_model(ckpt, out, kind="projection", text=True, verify_images=4)
    return ckpt, out


def _torch_text(ckpt, family, texts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    model_cls = transformers.CLIPModel if family == "clip" else transformers.SiglipModel
    model = model_cls.from_pretrained(ckpt).eval()
    length = model.config.text_config.max_position_embeddings
    ids = tok(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        out = model.get_text_features(input_ids=ids["input_ids"])
    out = getattr(out, "pooler_output", out)
    return out.numpy(), model


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_text_vectors_match_pytorch(family, clip, siglip):
    ckpt, out = clip if family == "clip" else siglip
    reference, _ = _torch_text(ckpt, family, TEXTS)
    text = TextEmbedder(out / "text_model_fp32.card.json")
    got = text.embed(TEXTS)
    assert got.shape == (len(TEXTS), text.dim) and np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert cosine(got, reference).min() >= 0.99999
    single = text.embed(TEXTS[1])  # one string, alone: the same vector (no batch dependence)
    assert np.allclose(single[0], got[1], atol=1e-5)


def _images(tmp_path, image_paths):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in image_paths:
        (folder / p.name).write_bytes(p.read_bytes())
    return folder


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_zero_shot_equals_the_models_own_logits(family, clip, siglip, tmp_path, image_paths):
    ckpt, out = clip if family == "clip" else siglip
    folder = _images(tmp_path, image_paths[:4])
    emb = tmp_path / "out"
    embed_files([str(folder)], emb, model=str(out / "model_fp32.onnx"), mode="exact", workers=0)
    vs = VectorSet.from_output(emb)
    labels = ["cat", "dog", "a red car"]
    pred = zero_shot(vs, labels, TextEmbedder(out / "text_model_fp32.card.json"), templates="none")
    # the reference: the PyTorch model's logits_per_image on the same pixels and label strings
    from PIL import Image
    from transformers import AutoTokenizer

    model_cls = transformers.CLIPModel if family == "clip" else transformers.SiglipModel
    model = model_cls.from_pretrained(ckpt).eval()
    tok = AutoTokenizer.from_pretrained(ckpt)
    length = model.config.text_config.max_position_embeddings
    ids = tok(labels, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    pixels = Embedder(out / "model_fp32.onnx", mode="exact").preprocess([Image.open(p) for p in vs.paths])
    with torch.inference_mode():
        logits = model(input_ids=ids["input_ids"], pixel_values=torch.from_numpy(pixels)).logits_per_image
    expected = (logits.softmax(-1) if family == "clip" else torch.sigmoid(logits)).numpy()
    assert pred.classes == labels and pred.probabilities.shape == (4, 3)
    np.testing.assert_allclose(pred.probabilities, expected, atol=2e-4)
    assert pred.labels == [labels[i] for i in expected.argmax(1)]


def test_text_search_cli_ranks_like_pytorch(clip, tmp_path, image_paths, capsys):
    ckpt, out = clip
    folder = _images(tmp_path, image_paths)
    emb = tmp_path / "out"
    code, _, err = run(["embed", str(folder), "-o", str(emb), "-m", str(out / "model_fp32.onnx")], capsys)
    assert code == 0, err
    text_dir = tmp_path / "fp32-text"  # the fp32 text tower alone, so the reference is exact
    text_dir.mkdir()
    card = json.loads((out / "text_model_fp32.card.json").read_text())
    for name in (card["file"]["filename"], card["tokenizer"]["filename"]):
        (text_dir / name).write_bytes((out / name).read_bytes())
    (text_dir / "text_model.card.json").write_text(json.dumps(card))
    code, stdout, err = run(["search", str(emb), "--text", "a photo of a cat", "--text", "sunset",
                             "-k", "3", "--json", "--text-model", str(text_dir)], capsys)  # fmt: skip
    assert code == 0, err
    lines = [json.loads(x) for x in stdout.strip().splitlines()]
    assert [x["query"] for x in lines] == ["a photo of a cat", "sunset"]
    reference, _ = _torch_text(ckpt, "clip", ["a photo of a cat", "sunset"])
    vs = VectorSet.from_output(emb)
    scores = vs.unit() @ (reference / np.linalg.norm(reference, axis=1, keepdims=True)).T
    for j, line in enumerate(lines):
        best = np.argsort(-scores[:, j], kind="stable")[:3]
        assert [h["path"] for h in line["results"]] == [vs.paths[i] for i in best]
        np.testing.assert_allclose([h["score"] for h in line["results"]], scores[best, j], atol=1e-5)
    # default text model: the one exported beside the output's image model
    code, stdout, err = run(["search", str(emb), "-t", "a photo of a cat", "-k", "2"], capsys)
    assert code == 0 and "'a photo of a cat'  (text," in stdout, err


def test_a_model_without_a_text_tower_is_a_clear_error(tmp_path, image_paths, capsys):
    emb = tmp_path / "out"
    code, _, _ = run(["embed", str(image_paths[0]), "-o", str(emb), "-m", str(MODELS / "tiny_b32_proj.onnx")],
                     capsys)  # fmt: skip
    assert code == 0
    code, _, err = run(["search", str(emb), "--text", "a cat"], capsys)
    assert code == 5 and "no text tower" in err and "--text" in err and "Traceback" not in err
    with pytest.raises(ModelNotFound, match="no text tower"):
        TextEmbedder("patch32_v1")
    with pytest.raises(ModelNotFound, match="no text tower"):
        TextEmbedder(MODELS / "tiny_b32_proj.onnx")
    code, _, err = run(["search", str(emb)], capsys)
    assert code == 2 and "QUERY" in err


def test_an_unpaired_output_is_refused(clip, siglip, tmp_path, image_paths, capsys):
    _, out = clip
    _, other = siglip
    for model, why in (
        (MODELS / "tiny_b32_proj.onnx", "not the image side"),
        (other / "model.onnx", "not the image side"),
    ):
        emb = tmp_path / model.parent.name
        code, _, err = run(["embed", str(image_paths[1]), "-o", str(emb), "-m", str(model)], capsys)
        assert code == 0, err
        code, _, err = run(["search", str(emb), "--text", "a cat", "--text-model", str(out)], capsys)
        assert code == 8 and why in err and "--text" in err and "Traceback" not in err, err
        code, _, err = run(["classify", "zero-shot", str(emb), "--labels", "a,b", "--text-model", str(out)],
                           capsys)  # fmt: skip
        assert code == 8 and why in err
    # an output projected by a PCA left the model's space
    emb = tmp_path / "raw"
    embed_files([str(p) for p in image_paths], emb, model=str(out / "model.onnx"), workers=0)
    from imgbeddings.analysis.reduce import fit_pca_on

    fit_pca_on(VectorSet.from_output(emb), 4).save(tmp_path / "p.npz")
    projected = tmp_path / "projected"
    embed_files([str(image_paths[0])], projected, model=str(out / "model.onnx"), pca=tmp_path / "p.npz",
                workers=0)  # fmt: skip
    with pytest.raises(ModelMismatch, match="PCA"):
        search_text(projected, "a cat")


def test_zero_shot_labels_empty_repeated_and_a_thousand(clip, tmp_path, image_paths, capsys):
    _, out = clip
    emb = tmp_path / "out"
    embed_files([str(p) for p in image_paths[:3]], emb, model=str(out / "model.onnx"), workers=0)
    for labels, why in (("", "non-empty"), (" , ", "non-empty"), ("cat,dog,cat", "repeated: cat")):
        code, _, err = run(["classify", "zero-shot", str(emb), "--labels", labels], capsys)
        assert code == 2 and why in err and "Traceback" not in err, (labels, err)
    bad = tmp_path / "t.txt"
    bad.write_text("a photo of something\n")
    code, _, err = run(
        ["classify", "zero-shot", str(emb), "--labels", "a,b", "--templates", str(bad)], capsys
    )
    assert code == 2 and "exactly one {}" in err
    with pytest.raises(OptionError):
        zero_shot(VectorSet.from_output(emb), [], TextEmbedder(out))
    # 1,000 labels: one probability per label, each row a distribution, top label = best cosine
    text = TextEmbedder(out)
    labels = [f"thing number {i}" for i in range(1000)]
    pred = zero_shot(VectorSet.from_output(emb), labels, text, templates="none")
    assert pred.probabilities.shape == (3, 1000)
    np.testing.assert_allclose(pred.probabilities.sum(axis=1), 1.0, atol=1e-4)
    cos = VectorSet.from_output(emb).unit() @ text.embed(labels).T
    assert pred.labels == [labels[i] for i in cos.argmax(axis=1)]
    # the CLI writes the same as predictions
    target = tmp_path / "z.parquet"
    code, stdout, err = run(
        ["classify", "zero-shot", str(emb), "--labels", "cat,dog", "-o", str(target)], capsys
    )
    assert code == 0 and stdout.strip() == str(target) and "zero-shot with" in err, err
    import pyarrow.parquet as pq

    table = pq.read_table(target)
    assert table.num_rows == 3 and {"label", "probability", "p:cat", "p:dog"} <= set(table.column_names)


def test_the_runtime_imports_neither_torch_nor_transformers(clip):
    _, out = clip
    code = (
        "import sys\nfrom imgbeddings.text.embedder import TextEmbedder\n"
        f"v = TextEmbedder({str(out)!r}).embed(['a cat'])\n"
        "assert v.shape[0] == 1\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_text_embedder_refuses_non_strings_and_names_the_item(clip):
    _, out = clip
    text = TextEmbedder(out, batch_size=2)
    with pytest.raises(OptionError, match=r"text #3 is a int"):
        text.embed(["a", "b", "c", 4])
    assert text.embed([]).shape == (0, text.dim)


def test_a_text_model_from_the_hub(clip, hub_stub, tmp_path):
    """A Hub repo holding an export's text files: the card, then the model and tokenizer it
    names (checksums checked), through the real huggingface_hub against a local stand-in."""
    _, out = clip
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("text_model.card.json", "text_model.onnx", "tokenizer.json"):
        (repo / name).write_bytes((out / name).read_bytes())
    hub_stub.add_folder("someone/clip-text", repo)
    remote = TextEmbedder("someone/clip-text")
    np.testing.assert_array_equal(remote.embed(TEXTS), TextEmbedder(out).embed(TEXTS))
    assert ("GET", "/someone/clip-text/resolve/main/tokenizer.json") in hub_stub.requests
    with pytest.raises(ModelUnavailable, match=r"text_model\.card\.json"):
        TextEmbedder("someone/missing-repo")


def test_the_http_service_embeds_and_searches_text(clip, tmp_path, image_paths):
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from imgbeddings.serve.app import ServeConfig, create_app
    from serve_helpers import ServerThread

    _, out = clip
    emb = tmp_path / "out"
    embed_files([str(p) for p in image_paths], emb, model=str(out / "model.onnx"), workers=0)
    running = ServerThread(create_app(ServeConfig(model=str(out / "model.onnx"), text=True, index=str(emb))))
    running.start()
    try:
        with httpx.Client(base_url=running.url, timeout=30.0) as c:
            r = c.post("/v1/embeddings", json={"input": ["a photo of a cat", "sunset"]})
            assert r.status_code == 200, r.text
            got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
            assert r.json()["usage"] == {"images": 0, "texts": 2}
            assert cosine(got, TextEmbedder(out).embed(["a photo of a cat", "sunset"])).min() >= 0.99999
            r = c.post("/v1/search", json={"text": "a photo of a cat", "k": 3})
            assert r.status_code == 200, r.text
            expected = search_text(emb, "a photo of a cat", k=3)[0].to_json()
            assert r.json()["query"] == "a photo of a cat"
            assert [h["path"] for h in r.json()["results"]] == [h["path"] for h in expected["results"]]
            assert c.get("/v1/models").json()["data"][0]["text"] is True
    finally:
        running.stop()
