"""The exporter on checkpoints shaped like OpenAI's own (``openai/clip-vit-base-patch32``): the same
file names, ``config.json`` with OpenAI's top-level keys and transformers-4.16 nested configs, the
old ``CLIPFeatureExtractor`` ``preprocessor_config.json`` (integer ``size``/``crop_size``), tokenizer
files beside them; only the weights are tiny, seeded and random.

Each form of the processor settings transformers accepts is checked against transformers itself:
the card's preprocessing must give the pixels that ``CLIPImageProcessor.from_pretrained(folder)``
gives for the same folder (no expected number is typed in here).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import cosine

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch", reason="the export tests need the [export] extra (torch)")
transformers = pytest.importorskip("transformers")

from imgbeddings import Embedder  # noqa: E402
from imgbeddings.errors import ExportError, ModelUnavailable  # noqa: E402
from imgbeddings.export import checkpoint, export_model  # noqa: E402
from imgbeddings.export.processor_config import preprocess_spec  # noqa: E402
from imgbeddings.export.samples import varied_images  # noqa: E402
from imgbeddings.images.preprocess import Preprocessor  # noqa: E402

SEED = 4321
REPO = "openai/clip-vit-base-patch32"
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                   image_size=224, patch_size=32)  # fmt: skip
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 vocab_size=99)  # fmt: skip
PROJECTION_DIM = 24

# openai/clip-vit-base-patch32's preprocessor_config.json, as on the Hub.
OPENAI_PREPROCESSOR = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}
# The keys every nested config of that repo's config.json carries (transformers 4.16's
# PretrainedConfig.to_dict), with the values it has there.
LEGACY_CONFIG_KEYS = {
    "_name_or_path": "", "add_cross_attention": False, "architectures": None, "bad_words_ids": None,
    "chunk_size_feed_forward": 0, "cross_attention_hidden_size": None, "decoder_start_token_id": None,
    "diversity_penalty": 0.0, "do_sample": False, "dropout": 0.0, "early_stopping": False,
    "encoder_no_repeat_ngram_size": 0, "finetuning_task": None, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "is_decoder": False,
    "is_encoder_decoder": False, "label2id": {"LABEL_0": 0, "LABEL_1": 1}, "length_penalty": 1.0,
    "max_length": 20, "min_length": 0, "no_repeat_ngram_size": 0, "num_beam_groups": 1, "num_beams": 1,
    "num_return_sequences": 1, "output_attentions": False, "output_hidden_states": False,
    "output_scores": False, "prefix": None, "problem_type": None, "pruned_heads": {},
    "remove_invalid_values": False, "repetition_penalty": 1.0, "return_dict": True,
    "return_dict_in_generate": False, "sep_token_id": None, "task_specific_params": None,
    "temperature": 1.0, "tie_encoder_decoder": False, "tie_word_embeddings": True, "tokenizer_class": None,
    "top_k": 50, "top_p": 1.0, "torch_dtype": None, "torchscript": False,
    "transformers_version": "4.16.0.dev0", "use_bfloat16": False,
}  # fmt: skip
TEXT_KEYS = ("attention_dropout", "hidden_act", "hidden_size", "initializer_factor", "initializer_range",
             "intermediate_size", "layer_norm_eps", "max_position_embeddings", "model_type",
             "num_attention_heads", "num_hidden_layers", "vocab_size")  # fmt: skip
VISION_KEYS = ("attention_dropout", "hidden_act", "hidden_size", "image_size", "initializer_factor",
               "initializer_range", "intermediate_size", "layer_norm_eps", "model_type",
               "num_attention_heads", "num_hidden_layers", "patch_size")  # fmt: skip
TOKENIZER_FILES = {  # present in the repo, never needed by the exporter
    "vocab.json": json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}),
    "merges.txt": "#version: 0.2\na </w>\n",
    "tokenizer_config.json": json.dumps(
        {"unk_token": "<|endoftext|>", "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}
    ),
    "special_tokens_map.json": json.dumps(
        {
            "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
        }
    ),
    "README.md": "---\ntags:\n- vision\n---\n# Model Card: CLIP (tiny random stand-in)\n",
}


def tiny_config(image_size: int = 224) -> transformers.CLIPConfig:
    vision = dict(TINY_VISION, image_size=image_size, initializer_factor=4.0)
    return transformers.CLIPConfig(vision_config=vision, text_config=TINY_TEXT, projection_dim=PROJECTION_DIM)


def openai_config_json(config: transformers.CLIPConfig) -> dict:
    """``config`` written the way openai/clip-vit-base-patch32's config.json is laid out."""
    text, vision = config.text_config.to_dict(), config.vision_config.to_dict()
    return {
        "_name_or_path": REPO,
        "architectures": ["CLIPModel"],
        "initializer_factor": 1.0,
        "logit_scale_init_value": 2.6592,
        "model_type": "clip",
        "projection_dim": PROJECTION_DIM,
        "text_config": {
            **LEGACY_CONFIG_KEYS,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "pad_token_id": 1,
            **{k: text[k] for k in TEXT_KEYS},
            "projection_dim": PROJECTION_DIM,
        },
        "text_config_dict": None,
        "transformers_version": None,
        "vision_config": {
            **LEGACY_CONFIG_KEYS,
            "bos_token_id": None,
            "eos_token_id": None,
            "pad_token_id": None,
            **{k: vision[k] for k in VISION_KEYS},
            "projection_dim": PROJECTION_DIM,
        },
        "vision_config_dict": None,
    }


def write_checkpoint_files(folder: Path, preprocessor: dict | None, image_size: int = 224) -> Path:
    """The repo's text files: config.json, preprocessor_config.json (unless None) and the tokenizer's."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(openai_config_json(tiny_config(image_size)), indent=2))
    if preprocessor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    for name, text in TOKENIZER_FILES.items():
        (folder / name).write_text(text)
    return folder


def openai_preprocessor(**changes) -> dict:
    """OpenAI's preprocessor_config.json with ``changes`` (a value of None removes the key)."""
    cfg = copy.deepcopy(OPENAI_PREPROCESSOR)
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    return cfg


@pytest.fixture(scope="module")
def openai_tiny(tmp_path_factory) -> Path:
    """A complete OpenAI-shaped CLIP checkpoint folder with tiny seeded weights (model.safetensors,
    as the Hub serves it, with the position_ids buffers old checkpoints carry) plus the legacy
    pytorch_model.bin of the same weights."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(SEED)
    folder = tmp_path_factory.mktemp("clip-vit-base-patch32")
    transformers.CLIPModel(tiny_config()).eval().save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    text_positions = TINY_TEXT.get("max_position_embeddings", 77)
    vision_positions = (TINY_VISION["image_size"] // TINY_VISION["patch_size"]) ** 2 + 1
    weights["text_model.embeddings.position_ids"] = torch.arange(text_positions)[None]
    weights["vision_model.embeddings.position_ids"] = torch.arange(vision_positions)[None]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    torch.save(weights, folder / "pytorch_model.bin")
    write_checkpoint_files(folder, OPENAI_PREPROCESSOR)
    return folder


def reference_processor(folder: Path):
    """transformers' CLIPImageProcessor as loaded from ``folder`` (its PIL backend in transformers 5,
    which is what CLIPImageProcessor falls back to without torchvision)."""
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as cls
    except ImportError:  # transformers < 5
        from transformers import CLIPImageProcessor as cls
    return cls.from_pretrained(str(folder))


def assert_same_pixels(spec, processor) -> None:
    images = varied_images(8, seed=11)  # several aspect ratios, flat, noise, stripes
    ours = Preprocessor(spec, mode="exact").batch(images)
    ref = processor(images=images, return_tensors="np")["pixel_values"]
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


# --- every form of the processor settings -----------------------------------------------


FORMS = {
    "openai-as-on-the-hub": (openai_preprocessor(), 224, "crop"),
    "transformers-5-dicts": (
        openai_preprocessor(size={"shortest_edge": 96}, crop_size={"height": 96, "width": 96},
                            feature_extractor_type=None, image_processor_type="CLIPImageProcessor",
                            rescale_factor=1 / 255, do_rescale=True),
        96, "crop",
    ),
    "height-width-no-crop": (openai_preprocessor(size={"height": 96, "width": 96}, do_center_crop=False,
                                                 crop_size=None), 96, "squash"),
    "height-width-and-equal-crop": (openai_preprocessor(size={"height": 96, "width": 96}, crop_size=96),
                                    96, "squash"),
    "size-list": (openai_preprocessor(size=[96, 96], do_center_crop=False), 96, "squash"),
    "int-size-default-to-square": (openai_preprocessor(size=96, default_to_square=True,
                                                       do_center_crop=False), 96, "squash"),
    "no-crop-size": (openai_preprocessor(crop_size=None), 224, "crop"),
    "no-resample-no-rescale-factor": (openai_preprocessor(resample=None), 224, "crop"),
    "bilinear": (openai_preprocessor(resample=2, size=96, crop_size=96), 96, "crop"),
    "do-normalize-false": (openai_preprocessor(do_normalize=False, size=96, crop_size=96), 96, "crop"),
    "do-rescale-false": (openai_preprocessor(do_rescale=False, size=96, crop_size=96), 96, "crop"),
    "neither": (openai_preprocessor(do_rescale=False, do_normalize=False, size=96, crop_size=96), 96, "crop"),
    "scalar-mean-std": (openai_preprocessor(image_mean=0.5, image_std=0.25, size=96, crop_size=96), 96,
                        "crop"),
}  # fmt: skip


@pytest.mark.parametrize("form", FORMS)
def test_card_preprocessing_matches_transformers(tmp_path, form):
    cfg, image_size, mode = FORMS[form]
    folder = write_checkpoint_files(tmp_path / "ckpt", cfg, image_size)
    spec = preprocess_spec(checkpoint.locate(folder), "projection", None)
    processor = reference_processor(folder)
    assert (spec.size, spec.resize_mode) == (image_size, mode)
    assert spec.rescale == pytest.approx(processor.rescale_factor if processor.do_rescale else 1.0)
    if processor.do_normalize:
        assert spec.mean == pytest.approx(np.broadcast_to(processor.image_mean, 3))
        assert spec.std == pytest.approx(np.broadcast_to(processor.image_std, 3))
    else:
        assert (spec.mean, spec.std) == ((0, 0, 0), (1, 1, 1))
    assert_same_pixels(spec, processor)


def test_nested_processor_config_wins_like_in_transformers(tmp_path):
    """transformers reads processor_config.json's "image_processor" before preprocessor_config.json."""
    nested = openai_preprocessor(size={"height": 96, "width": 96}, do_center_crop=False, image_mean=0.5)
    folder = write_checkpoint_files(tmp_path / "ckpt", openai_preprocessor(), image_size=96)
    (folder / "processor_config.json").write_text(json.dumps({"image_processor": nested}))
    spec = preprocess_spec(checkpoint.locate(folder), "projection", None)
    processor = reference_processor(folder)
    assert spec.resize_mode == "squash" and spec.mean == pytest.approx(
        np.broadcast_to(processor.image_mean, 3)
    )
    assert_same_pixels(spec, processor)


@pytest.mark.parametrize(
    ("changes", "image_size", "message"),
    [
        (dict(size={"height": 224, "width": 256}, do_center_crop=False), 224, "224 x 256"),
        (dict(crop_size={"height": 224, "width": 200}), 224, "square inputs only"),
        (dict(do_resize=False), 224, "do_resize false"),
        (dict(size=256), 224, "crops 224 x 224"),
        (dict(do_center_crop=False), 224, "without a centre crop"),
        (dict(size={"longest_edge": 224}, do_center_crop=False), 224, "not a fixed square size"),
        (dict(resample=7), 224, "unknown resample"),
        (dict(), 96, "224 px, the model's config says 96"),
    ],
)
def test_settings_a_card_cannot_reproduce_are_refused(tmp_path, changes, image_size, message):
    folder = write_checkpoint_files(tmp_path / "ckpt", openai_preprocessor(**changes), image_size)
    source = checkpoint.locate(folder)
    with pytest.raises(ExportError, match=message) as info:
        preprocess_spec(source, "projection", None)
    assert "preprocessor_config.json" in str(info.value)
    if "resample" not in message:  # choosing the geometry yourself is the way out
        spec = preprocess_spec(source, "projection", "squash")
        assert (spec.size, spec.resize_mode) == (image_size, "squash")
        assert preprocess_spec(source, "legacy", None).resize_mode == "pad"


def test_missing_processor_config_is_refused(tmp_path):
    folder = write_checkpoint_files(tmp_path / "ckpt", None)
    with pytest.raises(ExportError, match=r"no preprocessor_config\.json"):
        preprocess_spec(checkpoint.locate(folder), "projection", None)


# --- end to end ----------------------------------------------------------------------------


def test_export_of_an_openai_shaped_folder(openai_tiny, tmp_path):
    result = export_model(openai_tiny, tmp_path / "out", kind="projection", verify_images=8)
    processor = reference_processor(openai_tiny)
    images = varied_images(6, seed=7)
    pixels = torch.from_numpy(processor(images=images, return_tensors="np")["pixel_values"])
    with torch.no_grad():
        model = transformers.CLIPModel.from_pretrained(openai_tiny).eval()
        ref = model.get_image_features(pixel_values=pixels)
        ref = (ref.pooler_output if hasattr(ref, "pooler_output") else ref).numpy()
    card = result.card
    assert card.preprocess.resize_mode == "crop" and card.preprocess.size == 224
    assert card.output.dim == PROJECTION_DIM and card.architecture == "ViT-w32/32"
    assert cosine(Embedder(tmp_path / "out" / "model_fp32.onnx").embed(images), ref).min() >= 0.99999
    assert cosine(Embedder(tmp_path / "out").embed(images), ref).min() >= 0.99


def test_export_from_the_hub_gets_configs_and_safetensors_only(openai_tiny, hub_stub, tmp_path, monkeypatch):
    extra = tmp_path / "repo-extras"  # the other weight formats of the real repo (never fetched)
    extra.mkdir()
    (extra / "tf_model.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    (extra / "flax_model.msgpack").write_bytes(bytes(64))
    hub_stub.add_folder(REPO, openai_tiny)
    commit = hub_stub.add_folder(REPO, extra)

    result = export_model(REPO, tmp_path / "out", kind="pooled", quantize_recipe="none", verify_images=4)
    assert result.card.source.checkpoint == REPO and result.card.source.revision == commit
    fetched = {path.rsplit("/", 1)[-1] for method, path in hub_stub.requests if "/resolve/" in path}
    assert fetched == {"config.json", "preprocessor_config.json", "model.safetensors"}
    assert all("imgbeddings/" in h.get("user-agent", "") for h in hub_stub.request_headers)

    seen = len(hub_stub.requests)  # offline: the cached snapshot, with no request at all
    hub_stub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = checkpoint.locate(REPO)
    assert source.revision == commit and source.config["_name_or_path"] == REPO
    assert len(hub_stub.requests) == seen


def test_hub_repo_with_pytorch_weights_only(openai_tiny, hub_stub, tmp_path):
    repo = tmp_path / "old-repo"
    repo.mkdir()
    for name in ("config.json", "preprocessor_config.json", "pytorch_model.bin", "vocab.json"):
        (repo / name).write_bytes((openai_tiny / name).read_bytes())
    hub_stub.add_folder("someone/old-clip", repo)
    folder = checkpoint.download("someone/old-clip")
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "preprocessor_config.json",
        "pytorch_model.bin",
    ]


def test_hub_checkpoint_unavailable(hub_stub, tmp_path):
    with pytest.raises(ModelUnavailable, match="repository not found") as info:
        export_model("nobody/no-such-clip", tmp_path / "out")
    err = info.value
    assert (err.repo_id, err.filename, err.revision) == ("nobody/no-such-clip", "", "main")
    assert err.url == f"{hub_stub.endpoint}/nobody/no-such-clip/tree/main" and err.url in str(err)
    assert not (tmp_path / "out").exists()  # nothing is written before the checkpoint is there


@pytest.mark.parametrize("src", ["missing-folder/", "a/b/c", "./missing", "~/missing"])
def test_neither_a_folder_nor_a_repo_id(hub_stub, tmp_path, src):
    with pytest.raises(ExportError, match="no such checkpoint folder"):
        export_model(src, tmp_path / "out")
    assert hub_stub.requests == []
