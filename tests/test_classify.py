"""Linear probes (``analysis.classify``): trained on a folder of red and blue scenes with the tiny
model, saved as JSON, and refused on vectors made another way."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import MODELS
from imgbeddings import Embedder, embed_files
from imgbeddings.analysis.classify import Probe, class_folders, train_probe, write_predictions
from imgbeddings.analysis.vectors import VectorSet
from imgbeddings.errors import ModelMismatch, OptionError, OutputError
from twoclass import TINY, write_classes


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """train/{red,blue}/ (24 each, plus one broken file) and test/{red,blue}/ (12 each)."""
    root = tmp_path_factory.mktemp("probe")
    write_classes(root / "train", per_class=24, seed=0)
    (root / "train" / "blue" / "broken.png").write_bytes(b"\x89PNG broken")
    (root / "train" / "empty_class").mkdir()  # no images: not a class
    write_classes(root / "test", per_class=12, seed=1)
    return root


@pytest.fixture(scope="module")
def probe(folders):
    return train_probe(folders / "train", embedder=Embedder(str(TINY), decode_workers=1))


@pytest.fixture(scope="module")
def test_out(folders):
    embed_files([str(folders / "test")], folders / "out", model=str(TINY), recursive=True, workers=0)
    return VectorSet.from_output(folders / "out")


def truth(paths: list[str]) -> list[str]:
    return [p.rsplit("/", 2)[-2] for p in paths]


def test_probe_from_a_folder(probe, folders):
    assert probe.classes == ["blue", "red"] and probe.counts == {"blue": 24, "red": 24}
    assert [f.source.endswith("broken.png") for f in probe.failures] == [True]  # reported, not fatal
    assert probe.cv_accuracy >= 0.9 and probe.cv_folds == 5
    assert np.array(probe.confusion).shape == (2, 2) and np.sum(probe.confusion) == 48
    assert probe.C in (0.01, 0.1, 1.0, 10.0, 100.0) and len(probe.cv_scores) == 5
    assert probe.identity == Embedder(str(TINY)).identity() and probe.fingerprint is not None


def test_predictions_on_an_output(probe, test_out):
    pred = probe.predict(test_out)
    assert pred.paths == test_out.paths and pred.classes == ["blue", "red"]
    assert np.mean(np.array(pred.labels) == np.array(truth(pred.paths))) >= 0.9
    assert pred.probabilities.shape == (24, 2) and pred.probabilities.dtype == np.float32
    assert np.allclose(pred.probabilities.sum(axis=1), 1, atol=1e-6)
    assert np.array_equal(pred.confidence, pred.probabilities.max(axis=1))


def test_predicting_nothing(probe):
    empty = VectorSet([], np.empty((0, 32), np.float32), {})
    pred = probe.predict(empty)
    assert len(pred) == 0 and pred.probabilities.shape == (0, 2) and pred.confidence.shape == (0,)


def test_json_round_trip_predicts_the_same(probe, test_out, tmp_path):
    path = probe.save(tmp_path / "probe.json")
    data = json.loads(path.read_text())  # plain JSON, no pickle
    assert data["format"] == "imgbeddings-probe" and data["fingerprint"] == probe.fingerprint
    assert data["failures"] == 1 and data["cv"]["accuracy"] == probe.cv_accuracy
    back = Probe.load(path)
    before, after = probe.predict(test_out), back.predict(test_out)
    assert after.labels == before.labels
    assert np.array_equal(after.probabilities, before.probabilities)
    assert back.confusion == probe.confusion and back.identity == probe.identity


def test_vectors_made_another_way_are_refused(probe, folders, tmp_path):
    paths = [str(p) for p in sorted((folders / "test" / "red").iterdir())[:3]]
    embed_files(paths, tmp_path / "norm", model=str(TINY), normalize=True, workers=0)
    with pytest.raises(ModelMismatch, match=r"normalize: True here, False in training"):
        probe.predict(VectorSet.from_output(tmp_path / "norm"))
    embed_files(paths, tmp_path / "b16", model=str(MODELS / "tiny_b16_legacy_int8.onnx"), workers=0)
    with pytest.raises(ModelMismatch, match="made differently"):
        probe.predict(VectorSet.from_output(tmp_path / "b16"))
    with pytest.raises(ModelMismatch, match="takes 32-d vectors, these are 16-d"):
        probe.predict(np.zeros((2, 16), np.float32))
    assert len(probe.predict(np.ones((2, 32), np.float32))) == 2  # plain arrays: width only


def test_probe_on_vectors_and_folder_labels(test_out):
    probe = train_probe(test_out, "folder", folds=3)
    assert probe.classes == ["blue", "red"] and probe.cv_folds == 3 and probe.cv_accuracy >= 0.9
    assert probe.identity == test_out.manifest["identity"]
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    y = np.repeat(["a", "b", "c"], 20)
    x = centres[np.repeat(np.arange(3), 20)] + rng.normal(scale=0.3, size=(60, 16))
    probe3 = train_probe(x, list(y), class_weight="balanced", Cs=[1.0])
    assert probe3.coef.shape == (3, 16) and probe3.identity is None and probe3.fingerprint is None
    pred = probe3.predict(x)
    assert np.mean(np.array(pred.labels) == y) > 0.95 and np.array(probe3.confusion).trace() >= 57


def test_probabilities_match_scikit_learn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from imgbeddings.analysis.vectors import l2_rows

    rng = np.random.default_rng(1)
    for n_classes in (2, 3):
        x = rng.normal(size=(40, 8))
        y = np.arange(40) % n_classes
        probe = train_probe(x, [str(v) for v in y], Cs=[0.5])
        z = StandardScaler().fit_transform(l2_rows(x).astype(np.float64))
        expected = LogisticRegression(C=0.5, max_iter=5000).fit(z, y).predict_proba(z)
        assert np.allclose(probe.scores(x), expected, atol=1e-5)


def test_bad_training_sets(folders, tmp_path):
    with pytest.raises(OptionError, match="needs an embedder"):
        train_probe(folders / "train")
    with pytest.raises(OptionError, match="not a folder"):
        train_probe(tmp_path / "nope", embedder=Embedder(str(TINY)))
    x = np.random.default_rng(0).normal(size=(6, 8))
    with pytest.raises(OptionError, match="at least 2 classes"):
        train_probe(x, ["a"] * 6)
    with pytest.raises(OptionError, match=r"at least 2 images .* too few: b \(1\)"):
        train_probe(x, ["a"] * 5 + ["b"])
    with pytest.raises(OptionError, match="labels are needed"):
        train_probe(x)
    with pytest.raises(OptionError, match="got 2 labels for 6 vectors"):
        train_probe(x, ["a", "b"])
    with pytest.raises(OptionError, match="class_weight"):
        train_probe(x, ["a", "b"] * 3, class_weight="auto")
    with pytest.raises(OptionError, match="Cs must be positive"):
        train_probe(x, ["a", "b"] * 3, Cs=[0])
    one = tmp_path / "one" / "only"
    one.mkdir(parents=True)
    (one / "x.jpg").write_bytes(b"junk")
    assert class_folders(tmp_path / "one") == {"only": [str(one / "x.jpg")]}
    with pytest.raises(OutputError, match="holds no vectors"):  # the one image failed to embed
        train_probe(tmp_path / "one", embedder=Embedder(str(TINY)))


def test_damaged_probe_files(probe, tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(OptionError, match="cannot read probe"):
        Probe.load(tmp_path / "a.json")
    (tmp_path / "b.json").write_text('{"format": "something else"}')
    with pytest.raises(OptionError, match="not an imgbeddings probe"):
        Probe.load(tmp_path / "b.json")
    data = probe.to_dict()
    data["coef"] = data["coef"][0][:5]
    (tmp_path / "c.json").write_text(json.dumps(data))
    with pytest.raises(OptionError, match="damaged probe"):
        Probe.load(tmp_path / "c.json")
    with pytest.raises(FileNotFoundError):
        Probe.load(tmp_path / "missing.json")


def test_predictions_file(probe, test_out, tmp_path):
    pred = probe.predict(test_out)
    table = pq.read_table(write_predictions(pred, tmp_path / "labels.parquet"))
    assert table.column_names == ["path", "label", "probability", "p:blue", "p:red"]
    assert table.column("label").to_pylist() == pred.labels
    assert np.array_equal(table.column("p:red").to_numpy(), pred.probabilities[:, 1])
