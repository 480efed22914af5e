"""The HTTP service (``imgbeddings serve``): throughput under concurrent clients against the same
model in process, single-request latency, and the server's memory over many requests.

The server runs as its own process (``python -m imgbeddings serve --model M`` on a free loopback
port, ``IMGBEDDINGS_NUM_THREADS`` set to ``--threads``); the benchmark waits (bounded) for
``GET /readyz`` to answer 200, measures, and stops it at the end (SIGTERM, then SIGKILL), also on
an error or Ctrl-C. Clients are ``httpx`` in this process, on the same CPUs as the server (as a
sidecar or a load balancer on the same host would be).

Images: ``--distinct`` photo-like JPEGs (``imgbeddings.export.samples.photo_like``, 640 x 480,
quality 90, fixed seed, ~70 KB each), cycled to ``--images`` requests.

**saturation**: ``--images`` single-image ``POST /v1/embed`` requests (multipart, field ``files``)
sent by each of ``--clients`` concurrent clients (``httpx.AsyncClient``, one connection each, each
client sends its next request when its last one is answered), and ``--batch`` images per request
by ``--batch-clients`` clients; images/s from the first request to the last answer, after an
untimed warm-up round. Against it, side by side: ``Embedder(model).embed(list_of_bytes)`` in this
process on the same bytes with the same thread count (decode threads and ONNX Runtime threads).
Runs are interleaved and repeated (``--repeats``); the table shows medians. The ratio HTTP /
in-process is what serving costs (target >= 0.85). Also per run: the mean images per model call
(``imgbeddings_batch_size`` from the server's ``/metrics``), and CPU time per image of the server
process (psutil) and of this process (the clients; the in-process row: all of it). Both sides are
CPU-bound on the same CPUs, so the clients' share is lost to the server; the ratio the server
would reach with its clients on other machines is estimated as in-process CPU per image / server
CPU per image. The server's
vectors for a few images are compared with the in-process ones (max abs difference, lowest
cosine; with a dynamically quantised INT8 file a vector depends slightly on its batch, so the
in-process difference between an image alone and in a batch is shown beside it).

**latency**: ``--latency`` requests one at a time (no concurrency): single-image ``/v1/embed``
(multipart), single-image ``/v1/embeddings`` (JSON, a base64 data URL) and, for reference,
``Embedder.embed(bytes)`` in process; p50 / p90 / p99.

**memory**: a second server on ``--rss-model`` (default the tiny test model, so the request path
dominates) takes ``--rss-requests`` small requests (a 64 x 48 JPEG) from 8 clients: 3 of 4
single-image multipart ``/v1/embed``, 1 of 4 JSON ``/v1/embeddings`` with a data URL, and every
20th request a corrupt JPEG (a per-item failure, HTTP 422), so the error path is covered too. The
RSS of the server process (and any children) is sampled every 50 ms with psutil; the table gives
it after start-up and at 1k, 5k and 10k requests, with the peak so far. Flat from 1k to 10k =
no per-request leak.

Nothing here is a test.

Usage: python benchmarks/bench_serve.py [--model FILE] [--images 512] [--clients 16,64] [--batch 8]
       [--batch-clients 16] [--repeats 3] [--latency 200] [--rss-model FILE] [--rss-requests 10000]
       [--threads N] [--server-args "--max-wait-ms 20"] [--skip saturation,latency,memory]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import itertools
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path("/tmp/imgbeddings-bench")
FULL_B32 = BENCH / "b32-legacy-int8-original/model.onnx"
TINY = ROOT / "tests/data/models/tiny_b32_legacy.onnx"
READY_TIMEOUT = 180.0  # seconds to wait for /readyz (loading a full-size model included)
REQUEST_TIMEOUT = 120.0


# --- the server process ----------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``imgbeddings serve`` as a child process on a free loopback port; a context manager that
    waits for ``/readyz`` on entry and always stops the process (and its group) on exit."""

    def __init__(self, model: str | Path, *, threads: int | None = None, args: list[str] | None = None):
        self.model = str(model)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.threads = threads
        self.args = list(args or [])
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="imgbeddings-serve-", suffix=".log", delete=False)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "imgbeddings", "serve", "--model", self.model]

    def __enter__(self) -> Server:
        env = dict(os.environ)
        if self.threads:
            env["IMGBEDDINGS_NUM_THREADS"] = str(self.threads)
        cmd = [*self.command(), "--host", "127.0.0.1", "--port", str(self.port), *self.args]
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )
        try:
            self.ready_seconds = self.wait_ready(READY_TIMEOUT)
        except BaseException:
            self.stop()
            print(f"server log: {self.log.name}", file=sys.stderr)
            raise
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.stop()
        if exc_type is None:  # keep the log of a failed run
            Path(self.log.name).unlink(missing_ok=True)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return Path(self.log.name).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float) -> float:
        """Poll ``GET /readyz`` until 200; seconds from start. Raises if the process exits or the
        time runs out."""
        import httpx

        deadline = time.monotonic() + timeout
        last = "no answer"
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {self.proc.returncode} before ready:\n{self.log_tail()}"
                    )
                try:
                    r = client.get(self.url + "/readyz")
                    if r.status_code == 200:
                        return time.perf_counter() - self.started
                    last = f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as exc:
                    last = repr(exc)
                time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout:.0f} s (last: {last}):\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, up to 15 s to exit, then SIGKILL to the server's own process group."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            print("server ignored SIGTERM for 15 s; killing it", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the server process and its children so far."""
        import psutil

        root = psutil.Process(self.proc.pid)
        total = sum(root.cpu_times()[:2])
        for child in root.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += sum(child.cpu_times()[:2])
        return total

    def batches(self) -> tuple[float, float]:
        """(model calls, images in them) so far, from ``imgbeddings_batch_size`` in ``/metrics``."""
        import httpx

        count = total = 0.0
        for line in httpx.get(self.url + "/metrics", timeout=30).text.splitlines():
            if line.startswith("imgbeddings_batch_size_count"):
                count = float(line.split()[-1])
            elif line.startswith("imgbeddings_batch_size_sum"):
                total = float(line.split()[-1])
        return count, total

    def rss(self) -> int:
        """Resident memory of the server process and its children (bytes)."""
        import psutil

        root = psutil.Process(self.proc.pid)
        total = root.memory_info().rss
        for child in root.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += child.memory_info().rss
        return total


# --- inputs ------------------------------------------------------------------------------------------


def jpegs(n: int, width: int = 640, height: int = 480, seed: int = 0) -> list[bytes]:
    """``n`` photo-like JPEGs (quality 90), the same for the same arguments."""
    import numpy as np

    from imgbeddings.export.samples import photo_like

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        photo_like(width, height, rng).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


def multipart(images: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"{i}.jpg", b, "image/jpeg")) for i, b in enumerate(images)]


def cosines(a, b):
    import numpy as np

    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


# --- load ------------------------------------------------------------------------------------------


class Load:
    """Result of one closed-loop load run."""

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []  # first few non-200 answers or transport errors, verbatim
        self.seconds = 0.0
        self.images = 0
        self.server_cpu = self.client_cpu = 0.0  # seconds
        self.calls = self.batched = 0.0  # model calls and the images in them (server's /metrics)

    def note(self, what: str) -> None:
        if len(self.errors) < 5:
            self.errors.append(what)

    @property
    def bad(self) -> int:
        return sum(n for s, n in self.statuses.items() if s != 200)


async def closed_loop(url: str, requests: list, clients: int, timeout: float, on_done=None) -> Load:
    """Send ``requests`` (each a (path, httpx keyword arguments, image count) tuple) with ``clients``
    concurrent workers; each sends its next request when its last one is answered."""
    import httpx

    load = Load()
    order = itertools.count()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def worker(client: httpx.AsyncClient) -> None:
        while (i := next(order)) < len(requests):
            path, kwargs, images = requests[i]
            try:
                r = await client.post(url + path, **kwargs)
            except httpx.HTTPError as exc:
                load.statuses[-1] += 1
                load.note(f"request {i} ({path}): {exc!r}")
                continue
            load.statuses[r.status_code] += 1
            if r.status_code == 200:
                load.images += images
            else:
                load.note(f"request {i} ({path}): HTTP {r.status_code} {r.text[:300]}")
            if on_done is not None:
                on_done(i + 1)

    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT) as client:
        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker(client) for _ in range(clients))), timeout)
        load.seconds = time.perf_counter() - t0
    return load


async def closed_loop_raw(url: str, images: list[bytes], clients: int, timeout: float) -> Load:
    """The lean client: ``clients`` keep-alive connections, each writing precomputed HTTP/1.1
    requests (``POST /v1/embed`` with one raw ``image/jpeg`` body) and reading the answers with
    asyncio streams, so the load generator costs little of the CPUs it shares with the server."""
    from urllib.parse import urlsplit

    where = urlsplit(url)
    load = Load()
    order = itertools.count()

    def request(body: bytes) -> bytes:
        head = (
            f"POST /v1/embed HTTP/1.1\r\nHost: {where.netloc}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    wire = [request(b) for b in images]

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(where.hostname, where.port)
        try:
            while (i := next(order)) < len(wire):
                writer.write(wire[i])
                await writer.drain()
                status = int((await reader.readline()).split()[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                load.statuses[status] += 1
                if status == 200:
                    load.images += 1
                else:
                    load.note(f"request {i}: HTTP {status} {body[:300]!r}")
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(clients))), timeout)
    load.seconds = time.perf_counter() - t0
    return load


def embed_requests(images: list[bytes], per_request: int) -> list:
    chunks = [images[i : i + per_request] for i in range(0, len(images), per_request)]
    return [("/v1/embed", {"files": multipart(c)}, len(c)) for c in chunks]


# --- saturation --------------------------------------------------------------------------------------


def saturation(args, model: str, threads: int, distinct: list[bytes]) -> None:
    import httpx
    import numpy as np

    from imgbeddings import Embedder

    images = [distinct[i % len(distinct)] for i in range(args.images)]
    emb = Embedder(model, threads=threads, decode_workers=threads)
    emb.embed(distinct[:8])  # warm
    runs: dict[str, list[Load]] = {}
    labels = {f"http-{c}x1": (c, 1) for c in args.clients}
    if args.batch > 1:
        labels[f"http-{args.batch_clients}x{args.batch}"] = (args.batch_clients, args.batch)
    labels.update({f"raw-{c}x1": (c, 1) for c in args.raw_clients})

    with Server(model, threads=threads, args=args.server_args.split()) as server:
        print(f"server ready in {server.ready_seconds:.1f} s ({model})", file=sys.stderr)
        # the vectors: the server's equal the in-process ones on the same bytes?
        r = httpx.post(server.url + "/v1/embed", files=multipart(distinct[:4]), timeout=REQUEST_TIMEOUT)
        r.raise_for_status()
        served = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
        together = emb.embed(distinct[:4])
        alone = np.concatenate([emb.embed(b) for b in distinct[:4]])
        diff = float(np.abs(served - together).max())
        cos = float(cosines(served, together).min())
        batch_diff = float(np.abs(alone - together).max())  # batch composition alone, in process
        for repeat in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            vectors = emb.embed(images)
            load = Load()
            load.seconds, load.images, load.statuses[200] = time.perf_counter() - t0, len(vectors), 1
            load.client_cpu = time.process_time() - c0
            runs.setdefault("in-process", []).append(load)
            print(f"[{repeat + 1}] in-process: {len(images) / load.seconds:.1f} images/s", file=sys.stderr)
            for label, (clients, per) in labels.items():
                requests = embed_requests(images, per)
                warm = embed_requests(distinct[: min(len(distinct), clients * per)], per)
                asyncio.run(closed_loop(server.url, warm, clients, args.phase_timeout))
                calls, batched = server.batches()
                s0, c0 = server.cpu_seconds(), time.process_time()
                if label.startswith("raw"):
                    load = asyncio.run(closed_loop_raw(server.url, images, clients, args.phase_timeout))
                else:
                    load = asyncio.run(closed_loop(server.url, requests, clients, args.phase_timeout))
                load.server_cpu, load.client_cpu = server.cpu_seconds() - s0, time.process_time() - c0
                calls2, batched2 = server.batches()
                load.calls, load.batched = calls2 - calls, batched2 - batched
                runs.setdefault(label, []).append(load)
                print(
                    f"[{repeat + 1}] {label}: {load.images / load.seconds:.1f} images/s, "
                    f"statuses {dict(load.statuses)}",
                    file=sys.stderr,
                )
                for e in load.errors:
                    print("   ", e, file=sys.stderr)
    del emb

    def rate(label: str) -> float:
        return statistics.median(x.images / x.seconds for x in runs[label])

    def per_image(label: str, what: str) -> float:
        return statistics.median(getattr(x, what) / x.images * 1000 for x in runs[label])

    def mean_batch(label: str) -> str:
        return f"{statistics.median(x.batched / max(x.calls, 1) for x in runs[label]):.1f}"

    base = rate("in-process")
    print(
        f"\n### Saturation ({Path(model).name}, {threads} threads, {args.images} images of 640 x 480, "
        f"median of {args.repeats})\n"
    )
    print(
        "| contender | clients | images/request | requests | images/s | vs in-process | mean model batch "
        "| CPU ms/image: server | client | non-200 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    first = f"| in-process `Embedder.embed(list_of_bytes)` | - | {len(images)} | 1 | {base:.1f} | 1.00 | 32"
    print(first + f" | {per_image('in-process', 'client_cpu'):.1f} (in process) | - | - |")
    for label, (clients, per) in labels.items():
        n = -(-len(images) // per)
        bad = sum(x.bad for x in runs[label])
        how = "raw `image/jpeg` body, lean client" if label.startswith("raw") else "multipart, httpx"
        print(
            f"| HTTP `POST /v1/embed` ({how}) | {clients} | {per} | {n} | {rate(label):.1f} | "
            f"{rate(label) / base:.2f} | {mean_batch(label)} | {per_image(label, 'server_cpu'):.1f} | "
            f"{per_image(label, 'client_cpu'):.1f} | {bad} |"
        )
    print()
    for label, (clients, per) in labels.items():
        ok = "meets" if rate(label) / base >= 0.85 else "BELOW"
        alone = per_image("in-process", "client_cpu") / per_image(label, "server_cpu")
        print(
            f"- {label}: {clients} clients x {per} image(s) / in-process: {rate(label) / base:.2f} "
            f"({ok} 0.85); "
            f"with the clients' CPU elsewhere (estimate: in-process CPU/image / server CPU/image): "
            f"{alone:.2f}"
        )
    print(
        f"- server vectors vs in-process on the same 4 images (one request / one call): max abs difference "
        f"{diff:.3g}, lowest cosine {cos:.6f}; for scale, in process, each image alone vs the 4 together: "
        f"max abs difference {batch_diff:.3g} (a dynamically quantised model's vector depends on its batch)"
    )


# --- latency -------------------------------------------------------------------------------------------


def latency(args, model: str, threads: int, distinct: list[bytes]) -> None:
    import httpx

    from imgbeddings import Embedder

    n = args.latency
    rows: dict[str, list[float]] = {}
    emb = Embedder(model, threads=threads, decode_workers=threads)
    for b in distinct[:5]:
        emb.embed(b)
    rows["in-process `Embedder.embed(bytes)`"] = times = []
    for i in range(n):
        t0 = time.perf_counter()
        emb.embed(distinct[i % len(distinct)])
        times.append(time.perf_counter() - t0)
    del emb
    bad = Counter()
    with (
        Server(model, threads=threads, args=args.server_args.split()) as server,
        httpx.Client(timeout=REQUEST_TIMEOUT) as client,
    ):
        paths = {
            "HTTP `POST /v1/embed` (multipart)": lambda b: client.post(
                server.url + "/v1/embed", files=multipart([b])
            ),
            "HTTP `POST /v1/embeddings` (JSON data URL)": lambda b: client.post(
                server.url + "/v1/embeddings", json={"input": data_url(b)}
            ),
        }
        for label, send in paths.items():
            for b in distinct[:5]:
                send(b)
            rows[label] = times = []
            deadline = time.monotonic() + args.phase_timeout
            for i in range(n):
                if time.monotonic() > deadline:
                    break
                t0 = time.perf_counter()
                r = send(distinct[i % len(distinct)])
                times.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    bad[label] += 1
                    if bad[label] <= 3:
                        print(f"{label}: HTTP {r.status_code} {r.text[:300]}", file=sys.stderr)

    print(f"\n### Latency, one request at a time ({Path(model).name}, {threads} threads, 640 x 480 JPEG)\n")
    print("| path | requests | p50 ms | p90 ms | p99 ms | mean ms | non-200 |")
    print("|---|---|---|---|---|---|---|")
    for label, times in rows.items():
        ms = [t * 1000 for t in times]
        print(
            f"| {label} | {len(ms)} | {percentile(ms, 50):.1f} | {percentile(ms, 90):.1f} | "
            f"{percentile(ms, 99):.1f} | {statistics.fmean(ms):.1f} | "
            f"{bad.get(label, 0) if label.startswith('HTTP') else '-'} |"
        )
    base = percentile([t * 1000 for t in rows["in-process `Embedder.embed(bytes)`"]], 50)
    print()
    for label, times in rows.items():
        if label.startswith("HTTP"):
            p50 = percentile([t * 1000 for t in times], 50)
            print(f"- {label}: p50 overhead over in-process {p50 - base:+.1f} ms")


# --- memory ------------------------------------------------------------------------------------------


def memory(args, threads: int) -> None:
    small = jpegs(8, 64, 48, seed=1)
    corrupt = small[0][: len(small[0]) // 3]  # a truncated JPEG: a per-item decode failure
    requests = []
    for i in range(args.rss_requests):
        if i % 20 == 19:
            requests.append(("/v1/embed", {"files": multipart([corrupt])}, 1))
        elif i % 4 == 3:
            requests.append(("/v1/embeddings", {"json": {"input": data_url(small[i % 8])}}, 1))
        else:
            requests.append(("/v1/embed", {"files": multipart([small[i % 8]])}, 1))
    marks = sorted({m for m in (1000, 5000, 10_000, args.rss_requests) if m <= args.rss_requests})
    with Server(args.rss_model, threads=threads, args=args.server_args.split()) as server:
        peak = start = server.rss()
        at: dict[int, tuple[int, int]] = {0: (start, start)}
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                with contextlib.suppress(Exception):
                    peak = max(peak, server.rss())
                time.sleep(0.05)

        def on_done(done: int) -> None:
            # answers arrive out of order by a few; the mark is taken at the first answer at or past it
            for m in marks:
                if done >= m and m not in at:
                    rss = server.rss()
                    at[m] = (rss, max(peak, rss))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            load = asyncio.run(closed_loop(server.url, requests, 8, args.phase_timeout, on_done))
        finally:
            stop.set()
            sampler.join()
        final = server.rss()
    expected_bad = sum(1 for i in range(args.rss_requests) if i % 20 == 19)
    mb = 1 << 20
    print(
        f"\n### Server memory over {args.rss_requests:,} small requests ({Path(args.rss_model).name}, "
        f"8 clients, {load.seconds:.0f} s, {len(requests) / load.seconds:.0f} requests/s)\n"
    )
    print("| requests answered | RSS MB | peak so far MB |")
    print("|---|---|---|")
    for m in sorted(at):
        print(f"| {m:,}{' (after start-up)' if m == 0 else ''} | {at[m][0] / mb:.1f} | {at[m][1] / mb:.1f} |")
    print()
    statuses = dict(sorted(load.statuses.items()))
    print(f"- statuses: {statuses} (expected {expected_bad} x 422, for the corrupt JPEGs)")
    first, last = min(m for m in at if m), max(at)
    print(
        f"- RSS growth {first:,} -> {last:,} requests: {(at[last][0] - at[first][0]) / mb:+.1f} MB; "
        f"peak overall {max(peak, final) / mb:.1f} MB"
    )
    for e in load.errors:
        if "HTTP 422" not in e:
            print(f"- unexpected: {e}")


# --- main ----------------------------------------------------------------------------------------------


def main() -> None:
    from imgbeddings import settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(FULL_B32 if FULL_B32.is_file() else TINY))
    parser.add_argument("--images", type=int, default=512, help="images per saturation run")
    parser.add_argument("--distinct", type=int, default=64, help="distinct JPEGs, cycled")
    parser.add_argument("--clients", default="16,64", help="concurrent single-image clients")
    parser.add_argument("--batch", type=int, default=8, help="images per request, batched variant (1: skip)")
    parser.add_argument("--batch-clients", type=int, default=16)
    parser.add_argument(
        "--raw-clients", default="16,64", help="concurrent lean raw-socket clients, one raw image per request"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency", type=int, default=200, help="sequential requests per path")
    parser.add_argument("--rss-model", default=str(TINY))
    parser.add_argument("--rss-requests", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=settings.available_cpus())
    parser.add_argument("--phase-timeout", type=float, default=300.0, help="bound on each measured run")
    parser.add_argument("--server-args", default="", help="extra `imgbeddings serve` options, one string")
    parser.add_argument("--skip", default="", help="comma-separated: saturation,latency,memory")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",") if c]
    args.raw_clients = [int(c) for c in args.raw_clients.split(",") if c]
    skip = set(filter(None, args.skip.split(",")))

    def terminated(signum, frame):  # run the cleanups (stop the server) on SIGTERM too
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    distinct = jpegs(args.distinct)
    print(f"model {args.model}, {args.threads} threads, {os.cpu_count()} CPUs", file=sys.stderr)
    if "saturation" not in skip:
        saturation(args, args.model, args.threads, distinct)
    if "latency" not in skip:
        latency(args, args.model, args.threads, distinct)
    if "memory" not in skip:
        memory(args, args.threads)
    print(
        f"\n(total {time.perf_counter() - t0:.0f} s; 1-minute load average before {load_before:.2f}, "
        f"after {os.getloadavg()[0]:.2f}, on {os.cpu_count()} CPUs)"
    )


if __name__ == "__main__":
    main()
