"""Helpers for the HTTP service tests (tests/test_serve.py): a real uvicorn server in a background
thread on a socket bound here (port 0: the kernel picks a free one), data URLs, a PNG that claims
huge dimensions, and a Prometheus text parser."""

from __future__ import annotations

import base64
import socket
import struct
import threading
import time
import zlib
from io import BytesIO
from typing import Any

import numpy as np
from PIL import Image

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class ServerThread:
    """``create_app(config)`` served by a real ``uvicorn.Server`` on 127.0.0.1 in a daemon thread.

    ``start()`` returns once ``/healthz`` answers 200 (or fails after :data:`START_TIMEOUT` s);
    ``stop()`` asks the server to exit and joins the thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.asgi = app  # create_app's answer (its .batcher is the server's batcher)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="uvicorn-test", daemon=True
        )
        self.error: BaseException | None = None

    def start(self) -> ServerThread:
        import httpx

        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        last: object = None
        while time.monotonic() < deadline:
            if not self.thread.is_alive():
                raise RuntimeError(f"the server thread exited during start-up (last: {last!r})")
            try:
                r = httpx.get(self.url + "/healthz", timeout=2.0)
                if r.status_code == 200:
                    return self
                last = (r.status_code, r.text[:200])
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the server did not answer /healthz within {START_TIMEOUT} s (last: {last!r})")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(STOP_TIMEOUT)
        if self.thread.is_alive():  # pending connections (a slow client): force it
            self.server.force_exit = True
            self.thread.join(STOP_TIMEOUT)
        self.sock.close()
        assert not self.thread.is_alive(), "the server thread did not stop"


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def mime_of(name: str) -> str:
    return "image/jpeg" if name.lower().endswith((".jpg", ".jpeg")) else "image/png"


def png_bytes(width: int, height: int, color: tuple[int, int, int] = (200, 30, 60)) -> bytes:
    buf = BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A small real PNG whose IHDR (with a correct CRC) claims ``width`` x ``height`` pixels: a
    decompression bomb as far as the header says."""
    data = bytearray(png_bytes(8, 8))
    assert data[12:16] == b"IHDR"
    data[16:20] = struct.pack(">I", width)
    data[20:24] = struct.pack(">I", height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def b64_vector(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)


def metric_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus exposition text -> {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def metric_sum(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)
