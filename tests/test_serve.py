"""The HTTP service (``imgbeddings serve``, :mod:`imgbeddings.serve`) against its interface: every
endpoint on a real uvicorn server (a thread, 127.0.0.1, a free port), vectors equal to the
Embedder's on the same bytes, bad images among good ones under concurrency (per-item errors, the
server does not wedge), limits (body, items, pixels, queue), the API key, URLs and paths never
fetched, a slow client not blocking others, and no traceback in any answer."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
pytest.importorskip("prometheus_client")

from conftest import MODELS, cosine  # noqa: E402
from imgbeddings import Embedder  # noqa: E402
from serve_helpers import (  # noqa: E402
    ServerThread,
    b64_vector,
    data_url,
    metric_samples,
    metric_sum,
    mime_of,
    png_claiming,
)

TINY = str(MODELS / "tiny_b32_legacy.onnx")  # fp32: a vector does not depend on its batch-mates
API_KEY = "test-key-7f3a"
SAME = 0.99999  # cosine between a served vector and the Embedder's on the same bytes


def serve(**options):
    from imgbeddings.serve.app import ServeConfig, create_app

    return ServerThread(create_app(ServeConfig(model=TINY, **options))).start()


def no_traceback(response) -> None:
    assert "Traceback" not in response.text, response.text[:2000]


def error_of(response, status: int) -> dict:
    """The ``{"error": {"type", "message"}}`` body of an error answer, checked."""
    assert response.status_code == status, (response.status_code, response.text[:1000])
    no_traceback(response)
    body = response.json()
    err = body["error"]
    assert isinstance(err["type"], str) and err["type"], body
    assert isinstance(err["message"], str) and err["message"], body
    return body


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(image_paths) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in image_paths}


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(TINY)


@pytest.fixture(scope="module")
def reference(embedder, images) -> dict[str, np.ndarray]:
    """The Embedder's vector for each test image, computed here from the same bytes."""
    return {name: embedder.embed(data)[0] for name, data in images.items()}


@pytest.fixture(scope="module")
def bad_blobs(images, embedder) -> dict[str, bytes]:
    """Bytes that are not images the Embedder can read (checked: it fails on each of them)."""
    jpeg = images["photo_640x480.jpg"]
    blobs = {
        "garbage": bytes(range(256)) * 8,
        "truncated-jpeg": jpeg[: len(jpeg) // 2],
        "jpeg-header-only": jpeg[:200],
        "text": b"hello, I am not an image\n",
    }
    for name, blob in blobs.items():
        result = embedder.embed_with_failures([blob])
        assert not result.ok[0], f"{name} is not a bad image for the Embedder"
    return blobs


@pytest.fixture(scope="module")
def index_out(tmp_path_factory, image_paths) -> Path:
    """An output folder of the test images (embedded by the job API), for /v1/search."""
    from imgbeddings.job import embed_files

    folder = tmp_path_factory.mktemp("indexed")
    photos = folder / "photos"
    photos.mkdir()
    for p in image_paths:
        shutil.copy(p, photos / p.name)
    out = folder / "out"
    embed_files([str(photos / p.name) for p in image_paths], out, model=TINY, workers=0)
    return out


@pytest.fixture(scope="module")
def server(index_out):
    """The main server: default limits, an index for /v1/search, no API key."""
    running = serve(index=str(index_out))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        yield c


@pytest.fixture(scope="module")
def limited():
    """A server with small limits and an API key (no index)."""
    running = serve(max_items=4, max_body_bytes=200_000, max_pixels=100_000, api_key=API_KEY)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def limited_client(limited):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=limited.url, timeout=30.0, headers=headers) as c:
        yield c


def embeddings(client, inputs, **extra):
    return client.post("/v1/embeddings", json={"input": inputs, **extra})


def vectors_of(body) -> dict[int, np.ndarray]:
    out = {}
    for item in body["data"]:
        assert item["object"] == "embedding"
        emb = item["embedding"]
        out[item["index"]] = b64_vector(emb) if isinstance(emb, str) else np.asarray(emb, np.float32)
    return out


def assert_same(vector: np.ndarray, ref: np.ndarray) -> None:
    assert vector.shape == ref.shape, (vector.shape, ref.shape)
    assert cosine(vector[None], ref[None])[0] >= SAME
    np.testing.assert_allclose(vector, ref, rtol=1e-3, atol=1e-4 * float(np.abs(ref).max()))


# --- health, models, OpenAPI ----------------------------------------------------------------


def test_healthz_and_readyz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready"}


def test_models(client, embedder):
    r = client.get("/v1/models")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    (model,) = body["data"]
    assert model["id"] == embedder.card.name
    assert model["object"] == "model"
    assert model["dim"] == embedder.dim
    assert model["kind"] == embedder.card.output.kind
    assert model["text"] is False


def test_openapi(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200
    spec = json.loads(r.text)
    assert {"/v1/embeddings", "/v1/embed", "/v1/search", "/v1/models"} <= set(spec["paths"])
    assert "post" in spec["paths"]["/v1/embeddings"] and "post" in spec["paths"]["/v1/search"]
    assert "example" in r.text  # request examples are included


def test_no_cors_headers(client):
    r = client.get("/v1/models", headers={"Origin": "http://evil.example"})
    assert r.status_code == 200
    assert not [h for h in r.headers if h.lower().startswith("access-control-")]
    r = client.options(
        "/v1/embeddings",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert not [h for h in r.headers if h.lower().startswith("access-control-")]


def test_framework_errors_have_the_error_shape(client):
    error_of(client.get("/no/such/endpoint"), 404)
    error_of(client.get("/v1/embeddings"), 405)
    error_of(client.delete("/v1/models"), 405)


# --- /v1/embeddings -------------------------------------------------------------------------


def test_embeddings_float_equal_the_embedder(client, images, reference, embedder):
    names = sorted(images)
    r = embeddings(client, [data_url(images[n], mime_of(n)) for n in names])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == embedder.card.name
    assert body["usage"] == {"images": len(names), "texts": 0}
    assert "errors" not in body or not body["errors"]
    assert [d["index"] for d in body["data"]] == list(range(len(names)))
    got = vectors_of(body)
    for i, name in enumerate(names):
        assert isinstance(body["data"][i]["embedding"], list)
        assert_same(got[i], reference[name])


def test_embeddings_single_string_input(client, images, reference):
    name = "small_61x97.png"
    r = embeddings(client, data_url(images[name]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["index"] for d in body["data"]] == [0] and body["usage"]["images"] == 1
    assert_same(vectors_of(body)[0], reference[name])


def test_embeddings_base64(client, images, reference):
    names = ["photo_640x480.jpg", "square_224.png"]
    r = embeddings(client, [data_url(images[n], mime_of(n)) for n in names], encoding_format="base64")
    assert r.status_code == 200, r.text
    body = r.json()
    for i, name in enumerate(names):
        emb = body["data"][i]["embedding"]
        assert isinstance(emb, str)
        vector = b64_vector(emb)
        assert len(base64.b64decode(emb)) == 4 * reference[name].size
        as_floats = vectors_of(embeddings(client, data_url(images[name], mime_of(name))).json())[0]
        np.testing.assert_allclose(vector, as_floats, rtol=1e-5, atol=1e-5)  # batch-mates may differ
        assert_same(vector, reference[name])


def test_embeddings_normalize(client, images, reference):
    name = "wide_1000x180.jpg"
    r = embeddings(client, [data_url(images[name], "image/jpeg")], normalize=True, model="ignored-name")
    assert r.status_code == 200, r.text
    vector = vectors_of(r.json())[0]
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    ref = reference[name] / np.linalg.norm(reference[name])
    assert_same(vector, ref)


def test_embeddings_bad_request_bodies(client):
    for payload in ({}, {"input": 3}, {"input": [1, 2]}, {"input": ["x"], "encoding_format": "hex"}):
        r = client.post("/v1/embeddings", json=payload)
        assert 400 <= r.status_code < 500, (payload, r.status_code, r.text)
        no_traceback(r)
        assert "error" in r.json()
    r = client.post("/v1/embeddings", content=b"{not json", headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500
    no_traceback(r)
    assert "error" in r.json()


# --- /v1/embed ------------------------------------------------------------------------------


def test_embed_multipart(client, images, reference):
    names = ["portrait_300x500.png", "odd_333x301.jpg", "tall_150x900.png"]
    files = [("files", (n, images[n], mime_of(n))) for n in names]
    r = client.post("/v1/embed", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert body["usage"] == {"images": 3, "texts": 0}
    got = vectors_of(body)
    for i, name in enumerate(names):
        assert_same(got[i], reference[name])


def test_embed_raw_body(client, images, reference):
    for name in ("big_1600x1200.jpg", "square_224.png"):
        r = client.post("/v1/embed", content=images[name], headers={"Content-Type": mime_of(name)})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [d["index"] for d in body["data"]] == [0]
        assert_same(vectors_of(body)[0], reference[name])


def test_embed_multipart_with_a_bad_file(client, images, reference, bad_blobs):
    files = [
        ("files", ("a.png", images["square_224.png"], "image/png")),
        ("files", ("b.jpg", bad_blobs["truncated-jpeg"], "image/jpeg")),
    ]
    r = client.post("/v1/embed", files=files)
    assert r.status_code == 207, r.text
    no_traceback(r)
    body = r.json()
    assert list(vectors_of(body)) == [0]
    assert_same(vectors_of(body)[0], reference["square_224.png"])
    (err,) = body["errors"]
    assert err["index"] == 1 and err["type"] == "ImageDecodeError" and err["message"]


def test_embed_raw_body_that_is_not_an_image(client, bad_blobs):
    r = client.post("/v1/embed", content=bad_blobs["garbage"], headers={"Content-Type": "image/png"})
    body = error_of(r, 422)
    assert [e["index"] for e in body["errors"]] == [0]
    assert body["errors"][0]["type"] == "ImageDecodeError"


# --- /v1/search -----------------------------------------------------------------------------


def reference_search(index_out, vector, k):
    from imgbeddings.analysis.search import search

    (result,) = search(index_out, [np.asarray(vector, np.float32)], k)
    return [(h.path, h.score) for h in result.results]


def assert_results(results, expected):
    assert [h["rank"] for h in results] == list(range(1, len(expected) + 1))
    assert [h["path"] for h in results] == [p for p, _ in expected]
    np.testing.assert_allclose([h["score"] for h in results], [s for _, s in expected], atol=1e-5)
    for h in results:
        assert set(h) == {"rank", "path", "score"}


def test_search_by_image(client, images, reference, index_out):
    name = "photo_640x480.jpg"
    r = client.post("/v1/search", json={"image": data_url(images[name], "image/jpeg"), "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"query", "results"}
    assert body["query"] == "<image>"
    assert len(body["results"]) == 3
    assert Path(body["results"][0]["path"]).name == name  # itself, first
    assert body["results"][0]["score"] > SAME
    assert_results(body["results"], reference_search(index_out, reference[name], 3))


def test_search_by_vector(client, reference, index_out, image_paths):
    vector = reference["tall_150x900.png"] + 0.25 * reference["odd_333x301.jpg"]
    r = client.post("/v1/search", json={"vector": vector.tolist(), "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == "<vector>"
    assert_results(body["results"], reference_search(index_out, vector, 5))
    r = client.post("/v1/search", json={"vector": vector.tolist()})  # k defaults to 10 (all 8 here)
    assert r.status_code == 200
    assert len(r.json()["results"]) == min(10, len(image_paths))


def test_search_needs_exactly_one_query(client, images, reference):
    image = data_url(images["square_224.png"])
    vector = reference["square_224.png"].tolist()
    for payload in ({"k": 3}, {"image": image, "vector": vector}, {"image": image, "text": "a cat"}):
        r = client.post("/v1/search", json=payload)
        assert r.status_code in (400, 422), (payload, r.status_code, r.text)
        no_traceback(r)
        assert "error" in r.json()


def test_search_bad_vector_and_bad_image(client, bad_blobs, reference):
    r = client.post("/v1/search", json={"vector": [1.0, 2.0, 3.0]})  # wrong width
    assert 400 <= r.status_code < 500, r.text
    no_traceback(r)
    r = client.post("/v1/search", json={"image": data_url(bad_blobs["garbage"])})
    assert 400 <= r.status_code < 500, r.text
    no_traceback(r)
    assert r.json()["error"]["type"]
    r = client.post("/v1/search", json={"image": "/etc/passwd"})
    assert 400 <= r.status_code < 500, r.text
    no_traceback(r)
    assert "root:" not in r.text


def test_search_text_without_a_text_tower(client):
    r = client.post("/v1/search", json={"text": "a photo of a cat", "k": 3})
    assert 400 <= r.status_code < 500, r.text
    no_traceback(r)
    err = r.json()["error"]
    assert "text" in err["message"].lower(), err


def test_search_without_an_index_is_404(limited_client, reference):
    r = limited_client.post("/v1/search", json={"vector": reference["square_224.png"].tolist()})
    error_of(r, 404)


# --- URLs and paths are never fetched -------------------------------------------------------


def test_urls_and_paths_are_not_fetched(client, images, reference, tmp_path):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    local_image = tmp_path / "real.png"
    local_image.write_bytes(images["square_224.png"])
    inputs = [
        f"http://127.0.0.1:{port}/x.jpg",
        "/etc/passwd",
        data_url(images["small_61x97.png"]),
        str(local_image),  # a real image file: still not read
        local_image.as_uri(),
        "https://example.invalid/cat.png",
    ]
    try:
        r = embeddings(client, inputs)
        assert r.status_code == 207, r.text
        no_traceback(r)
        body = r.json()
        assert list(vectors_of(body)) == [2]
        assert_same(vectors_of(body)[2], reference["small_61x97.png"])
        errors = {e["index"]: e for e in body["errors"]}
        assert sorted(errors) == [0, 1, 3, 4, 5]
        for e in errors.values():
            assert e["type"] == "NotAnImage", e
            assert "data url" in e["message"].lower() or "data:" in e["message"].lower(), e
        assert "root:" not in r.text
        with pytest.raises(BlockingIOError):  # nobody connected to the URL's port
            listener.accept()
    finally:
        listener.close()


# --- per-item limits ------------------------------------------------------------------------


def test_decompression_bomb_is_refused_from_its_header(client, limited_client, images, reference):
    bomb = png_claiming(30_000, 30_000)
    for c in (client, limited_client):
        t0 = time.monotonic()
        r = embeddings(c, [data_url(bomb), data_url(images["square_224.png"])])
        assert time.monotonic() - t0 < 10
        assert r.status_code == 207, r.text
        body = r.json()
        (err,) = body["errors"]
        assert err["index"] == 0 and err["type"] == "ImageTooLarge", err
        assert_same(vectors_of(body)[1], reference["square_224.png"])


def test_max_pixels_of_a_real_image(limited_client, images, reference):
    big, small = "photo_640x480.jpg", "small_61x97.png"  # 307,200 pixels > 100,000; 5,917 < 100,000
    r = embeddings(limited_client, [data_url(images[small]), data_url(images[big], "image/jpeg")])
    assert r.status_code == 207, r.text
    body = r.json()
    (err,) = body["errors"]
    assert err["index"] == 1 and err["type"] == "ImageTooLarge"
    assert_same(vectors_of(body)[0], reference[small])
    r = limited_client.post("/v1/embed", content=images[big], headers={"Content-Type": "image/jpeg"})
    body = error_of(r, 422)
    assert body["errors"][0]["type"] == "ImageTooLarge"


# --- request limits -------------------------------------------------------------------------


def test_oversized_body_is_413(limited_client, images, reference):
    blob = os.urandom(180_000)  # base64: 240,000 bytes > 200,000
    r = embeddings(limited_client, [data_url(blob)])
    error_of(r, 413)
    blob = os.urandom(210_000)
    r = limited_client.post("/v1/embed", content=blob, headers={"Content-Type": "image/png"})
    error_of(r, 413)

    def chunks(data: bytes):  # no Content-Length: the limit holds for a streamed body too
        for start in range(0, len(data), 10_000):
            yield data[start : start + 10_000]

    r = limited_client.post("/v1/embed", content=chunks(blob), headers={"Content-Type": "image/png"})
    error_of(r, 413)
    upload = limited_client.build_request(
        "POST", "/v1/embed", files=[("files", ("a.png", blob, "image/png"))]
    )
    multipart = upload.read()
    r = limited_client.post(
        "/v1/embed", content=multipart, headers={"Content-Type": upload.headers["content-type"]}
    )
    error_of(r, 413)
    r = limited_client.post(
        "/v1/embed", content=chunks(multipart), headers={"Content-Type": upload.headers["content-type"]}
    )
    error_of(r, 413)
    as_json = json.dumps({"input": [data_url(blob)]}).encode()
    r = limited_client.post(
        "/v1/embeddings", content=chunks(as_json), headers={"Content-Type": "application/json"}
    )
    error_of(r, 413)
    # under the limit is fine
    r = embeddings(limited_client, [data_url(images["small_61x97.png"])])
    assert r.status_code == 200, r.text


def test_too_many_items_is_413(limited_client, images):
    item = data_url(images["small_61x97.png"])
    assert embeddings(limited_client, [item] * 4).status_code == 200
    error_of(embeddings(limited_client, [item] * 5), 413)
    files = [("files", (f"{i}.png", images["small_61x97.png"], "image/png")) for i in range(5)]
    error_of(limited_client.post("/v1/embed", files=files), 413)


def test_too_many_items_on_the_default_server(client, images):
    r = embeddings(client, [data_url(images["small_61x97.png"])] * 65)  # default max_items: 64
    error_of(r, 413)


def hold_inference(running) -> threading.Event:
    """Keep the server's inference thread busy until the returned event is set: images then
    stay in the service (admitted, queued), deterministically."""
    release = threading.Event()
    running.asgi.batcher.inference.submit(release.wait, 60)
    return release


def test_request_timeout_is_504_and_frees_its_room(images):
    """A request over request_timeout (here: inference is held, the request may take 1 s)
    answers 504, and its images leave the queue."""
    running = serve(request_timeout=1.0, max_batch=64, max_queue=4)
    release = hold_inference(running)
    try:
        with httpx.Client(base_url=running.url, timeout=30.0) as c:
            url = data_url(images["small_61x97.png"])
            t0 = time.monotonic()
            r = embeddings(c, [url, url])
            assert 0.9 < time.monotonic() - t0 < 2.9
            error_of(r, 504)
            deadline = time.monotonic() + 10
            while metric_sum(metric_samples(c.get("/metrics").text), "imgbeddings_queue_depth") > 0:
                assert time.monotonic() < deadline, "the timed-out request's images stayed admitted"
                time.sleep(0.05)
            r = embeddings(c, [url] * 4)  # the whole queue is free again (503 otherwise)
            error_of(r, 504)
            release.set()
            assert embeddings(c, [url]).status_code == 200  # and the server goes on
    finally:
        release.set()
        running.stop()


# --- API key --------------------------------------------------------------------------------


def test_api_key(limited, images):
    with httpx.Client(base_url=limited.url, timeout=30.0) as anonymous:
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/readyz").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
            for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/embeddings")):
                payload = {"input": [data_url(images["small_61x97.png"])]} if method == "POST" else None
                r = anonymous.request(method, path, headers=headers, json=payload)
                body = error_of(r, 401)
                assert r.headers["WWW-Authenticate"].startswith("Bearer"), (path, dict(r.headers))
                assert API_KEY not in r.text and "data" not in body
            raw = {**headers, "Content-Type": "image/png"}
            error_of(anonymous.post("/v1/embed", headers=raw, content=images["small_61x97.png"]), 401)
        good = {"Authorization": f"Bearer {API_KEY}"}
        assert anonymous.get("/v1/models", headers=good).status_code == 200
        assert anonymous.get("/metrics", headers=good).status_code == 200


# --- metrics --------------------------------------------------------------------------------


def test_metrics_move(client, images, bad_blobs):
    def samples():
        r = client.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        return metric_samples(r.text)

    before = samples()
    for name in (
        "imgbeddings_requests_total",
        "imgbeddings_request_seconds_count",
        "imgbeddings_batch_size_count",
        "imgbeddings_queue_depth",
    ):
        assert any(n == name for n, _ in before), name
    r = embeddings(client, [data_url(images["small_61x97.png"]), data_url(bad_blobs["garbage"])])
    assert r.status_code == 207
    r = embeddings(client, [data_url(images["square_224.png"])])
    assert r.status_code == 200
    after = samples()

    def grew(name: str, by: float, **labels: str) -> bool:
        return metric_sum(after, name, **labels) >= metric_sum(before, name, **labels) + by

    assert grew("imgbeddings_requests_total", 1, status="200")
    assert grew("imgbeddings_requests_total", 1, status="207")
    assert grew("imgbeddings_requests_total", 2, endpoint="/v1/embeddings")
    assert grew("imgbeddings_request_seconds_count", 2, endpoint="/v1/embeddings")
    assert grew("imgbeddings_batch_size_count", 1)
    assert grew("imgbeddings_batch_size_sum", 2)
    assert grew("imgbeddings_item_failures_total", 1)
    assert metric_sum(after, "imgbeddings_item_failures_total", reason="ImageDecodeError") >= 1
    assert metric_sum(after, "imgbeddings_queue_depth") == 0  # nothing in flight now


# --- bad images among good ones, concurrently -----------------------------------------------


def test_flood_of_bad_images_among_good_ones(client, images, reference, bad_blobs):
    names = sorted(images)
    bad_urls = [data_url(b) for b in bad_blobs.values()] + [
        "data:text/plain;base64," + base64.b64encode(b"just some text").decode(),
        "data:image/png;base64,!!!this is not base64!!!",
        "data:image/png;base64,",
    ]
    bad_files = list(bad_blobs.values())

    def job(i: int):
        good = names[i % len(names)]
        url = data_url(images[good], mime_of(good))
        if i % 2 == 0:  # good only: JSON, multipart or a raw body
            if i % 6 == 0:
                r = embeddings(client, [url])
            elif i % 6 == 2:
                r = client.post("/v1/embed", files=[("files", (good, images[good], mime_of(good)))])
            else:
                r = client.post("/v1/embed", content=images[good], headers={"Content-Type": mime_of(good)})
            return r, {0: good}, []
        bad_url = bad_urls[i % len(bad_urls)]
        bad_file = bad_files[i % len(bad_files)]
        kind = (i // 2) % 4
        if kind == 0:
            return embeddings(client, [url, bad_url]), {0: good}, [1]
        if kind == 1:
            return embeddings(client, [bad_url]), {}, [0]
        if kind == 2:
            files = [
                ("files", ("x.png", bad_file, "image/png")),
                ("files", (good, images[good], mime_of(good))),
                ("files", ("y.jpg", bad_file, "image/jpeg")),
            ]
            return client.post("/v1/embed", files=files), {1: good}, [0, 2]
        return embeddings(client, [bad_url, url, bad_url], encoding_format="base64"), {1: good}, [0, 2]

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(job, range(40)))

    for r, good, bad in outcomes:
        no_traceback(r)
        if not bad:
            assert r.status_code == 200, r.text
        elif not good:
            assert r.status_code == 422, r.text
            assert r.json()["error"]["type"]
        else:
            assert r.status_code == 207, r.text
        body = r.json()
        got = vectors_of(body) if good else {}
        assert sorted(got) == sorted(good)
        for index, name in good.items():
            assert_same(got[index], reference[name])
        errors = body.get("errors", [])
        assert sorted(e["index"] for e in errors) == bad
        for e in errors:
            assert e["type"] and e["message"], e

    assert client.get("/readyz").status_code == 200
    r = embeddings(client, [data_url(images["odd_333x301.jpg"], "image/jpeg")])
    assert r.status_code == 200
    assert_same(vectors_of(r.json())[0], reference["odd_333x301.jpg"])


# --- a slow client does not block the others ------------------------------------------------


def test_slow_client_does_not_block_others(server, client, images, reference):
    slow = []
    try:
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            s.sendall(
                b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n"
            )
            s.sendall(b'{"inpu')
            slow.append(s)
        time.sleep(0.2)
        slow[0].sendall(b't": ["da')  # trickle a few more bytes, then stop
        t0 = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=10.0) as other:
            r = embeddings(other, [data_url(images["square_224.png"])])
            assert other.get("/healthz").status_code == 200
        assert r.status_code == 200, r.text
        assert_same(vectors_of(r.json())[0], reference["square_224.png"])
        assert time.monotonic() - t0 < 5
    finally:
        for s in slow:
            s.close()
    assert client.get("/readyz").status_code == 200


# --- queue full -> 503 ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_batching():
    """A server with room for 2 images in the service."""
    running = serve(max_queue=2, max_batch=64)
    yield running
    running.stop()


def test_queue_full_is_503_with_retry_after(slow_batching, images, reference):
    url = data_url(images["small_61x97.png"])
    with httpx.Client(base_url=slow_batching.url, timeout=30.0) as c:
        result = {}
        release = hold_inference(slow_batching)  # the first request's images stay in the service
        first = threading.Thread(target=lambda: result.setdefault("r", embeddings(c, [url, url])))
        first.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until both images of the first request are admitted
            depth = metric_sum(metric_samples(c.get("/metrics").text), "imgbeddings_queue_depth")
            if depth >= 2:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the first request's images never showed in imgbeddings_queue_depth")
        busy = embeddings(c, [url])
        body = error_of(busy, 503)
        assert busy.headers.get("Retry-After", "").strip().isdigit(), dict(busy.headers)
        assert int(busy.headers["Retry-After"]) >= 1
        assert "data" not in body
        release.set()
        first.join(30)
        assert not first.is_alive()
        r = result["r"]
        assert r.status_code == 200, r.text
        for v in vectors_of(r.json()).values():
            assert_same(v, reference["small_61x97.png"])
        again = embeddings(c, [url])  # room again
        assert again.status_code == 200, again.text
        assert c.get("/readyz").status_code == 200


def test_cli_serve_usage_errors(capsys, monkeypatch):
    from test_cli import run

    monkeypatch.delenv("IMGBEDDINGS_TEST_KEY", raising=False)
    code, _, err = run(["serve", "-m", str(TINY), "--api-key-env", "IMGBEDDINGS_TEST_KEY"], capsys)
    assert code == 2 and "IMGBEDDINGS_TEST_KEY" in err and "Traceback" not in err
    code, _, err = run(["serve", "-m", str(TINY), "--port", "99999"], capsys)
    assert code == 2 and "Traceback" not in err
    code, _, err = run(["serve", "-m", str(TINY), "--text"], capsys)
    assert code == 5 and "no text tower" in err
