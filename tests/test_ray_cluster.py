"""The Ray engine on a two-node cluster joined by address (``--address``), as on a real cluster:
two raylets on loopback (Ray's own ``ray.cluster_utils.Cluster``), one CPU each, so the job's two
one-CPU actors necessarily run on different nodes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

import imgbeddings  # noqa: E402
from conftest import MODELS, cosine  # noqa: E402
from imgbeddings.job import embed_files  # noqa: E402

MODEL = str(MODELS / "tiny_b32_legacy.onnx")


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes(timeout=60)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_cli_job_across_two_nodes(two_nodes, tmp_path, image_paths, capsys):
    from test_cli import run

    folder = tmp_path / "in"
    folder.mkdir()
    for copy in range(3):
        for p in image_paths:
            shutil.copy(p, folder / f"{copy}_{p.name}")
    out = tmp_path / "out"
    args = ["embed", str(folder), "-o", str(out), "-m", MODEL, "--engine", "ray"]
    code, stdout, err = run(  # stdout: the output folder
        [*args, "--address", two_nodes.address, "--actors", "2", "--batch-size", "4"], capsys
    )
    assert code == 0 and stdout.strip() == str(out), err
    assert "2 Ray actor(s) x 1 CPU(s)" in err
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 2 and all(n["Resources"]["CPU"] == 1 for n in nodes)
    embed_files([str(folder)], tmp_path / "local", model=MODEL, workers=0)
    a, b = imgbeddings.load(out), imgbeddings.load(tmp_path / "local")
    assert sorted(map(str, a.paths)) == sorted(map(str, b.paths)) and len(a.paths) == 3 * len(image_paths)
    rows = [list(map(str, b.paths)).index(str(p)) for p in a.paths]
    assert cosine(a.vectors, b.vectors[rows]).min() >= 0.99999
    assert np.isfinite(a.vectors).all()
