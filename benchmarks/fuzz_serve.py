"""Fuzz the HTTP service (``imgbeddings serve``) from its own OpenAPI document with schemathesis.

Starts ``python -m imgbeddings serve --model tests/data/models/tiny_b32_legacy.onnx`` on a free
loopback port (with ``--index`` on a small output folder that ``imgbeddings embed`` makes from 8
generated JPEGs first, so ``/v1/search`` is live too; ``--no-index`` skips that), waits for
``/readyz``, and runs ``schemathesis run http://127.0.0.1:PORT/openapi.json --checks all`` with a
bounded number of test cases per operation and phase (``--max-examples``), one worker, a fixed
seed, ``--continue-on-failure`` (an operation keeps being fuzzed after its first failure), and a
wall-clock bound on the whole run (``--max-seconds``; schemathesis is killed past it). Then it
reads schemathesis's NDJSON event stream and JUnit report and prints:

- operations and test cases run, requests sent, and the HTTP statuses seen per operation;
- every 5xx answer, with the request that triggered it (method, URL, content type, body head);
- every failed check (schemathesis's codes: ST101 server error, ST103 undocumented status, response
  schema / content type / header conformance, accepted-invalid or rejected-valid data, ...), with
  schemathesis's ``curl`` line to reproduce it. One kind is expected and not counted: a
  schema-valid request answered 422 with per-item ``errors`` (schemathesis cannot make a JPEG or
  an image data URL, and the schema cannot say "an image"), listed apart;
- answers >= 400 whose body is not the spec's ``{"error": {"type": ..., "message": ...}}``, and any
  body holding a Python traceback;
- then a fixed set of hand-written hostile requests for what the OpenAPI document cannot describe
  (multipart uploads, image content, limits: empty / truncated / non-image files, a PNG header
  claiming 100k x 100k pixels, too many items, an oversized body, a URL and a path given as input
  (never fetched or read), a 50k-deep JSON nesting, a lone surrogate, NaN in a search vector,
  ...), each with the statuses and per-item error types the spec allows; the server runs with
  ``--max-items 16 --max-body-mb 2 --max-pixels 4000000`` so the limits are cheap to reach;
- whether the server still answers ``/healthz`` and ``/readyz`` afterwards, and the tracebacks in
  its log.

Exit status: 0 clean; 1 a 5xx, a schema violation (status code, content type, headers, body
against the schema), a malformed error body, a traceback, a probe off spec or a dead server (and,
with ``--strict``, any failed data-acceptance check: those flag limits the schema cannot express,
such as "exactly one of image, text, vector" or a vector's width, and are otherwise reported only);
2 an error of the run itself (schemathesis missing, the server not starting, schemathesis
errors); 3 the wall-clock bound was hit. schemathesis is not a dependency of the project:
``pip install schemathesis`` (written against 4.x). Nothing here is a test of the suite.

Usage: python benchmarks/fuzz_serve.py [--max-examples 50] [--max-seconds 240] [--seed 0]
       [--model FILE] [--no-index] [--no-probes] [--exclude-checks NAME,...] [--keep-reports DIR]
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_serve import ROOT, TINY, Server, data_url, jpegs  # noqa: E402

# schemathesis checks that compare the answers with the OpenAPI document
SCHEMA_CHECKS = {
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
}
ST_CLI = (
    "import sys; from schemathesis.cli import schemathesis; "
    "sys.argv[0] = 'schemathesis'; sys.exit(schemathesis())"
)


def make_index(workdir: Path, model: str) -> Path | None:
    """An ``imgbeddings embed`` output folder of 8 generated JPEGs (for ``--index``)."""
    photos = workdir / "photos"
    photos.mkdir()
    for i, data in enumerate(jpegs(8, 160, 120, seed=2)):
        (photos / f"img_{i}.jpg").write_bytes(data)
    out = workdir / "index"
    cmd = [sys.executable, "-m", "imgbeddings", "embed", str(photos), "-o", str(out), "-m", model]
    done = subprocess.run([*cmd, "--no-progress"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    if done.returncode:
        print(f"could not build the index ({' '.join(cmd)}):\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return out


def body_text(message: dict | None, limit: int = 400) -> str:
    """A request/response body from schemathesis's cassette form, as text (shortened)."""
    if not message:
        return ""
    raw = message.get("body") or message.get("content")
    if raw is None:
        return ""
    if isinstance(raw, dict) and "$base64" in raw:
        data = base64.b64decode(raw["$base64"])
    elif isinstance(raw, dict) and "string" in raw:
        data = raw["string"].encode()
    else:
        data = str(raw).encode()
    text = data[:limit].decode("utf-8", errors="backslashreplace")
    return text + (f"... ({len(data):,} bytes)" if len(data) > limit else "")


def header(message: dict, name: str) -> str:
    for key, values in (message.get("headers") or {}).items():
        if key.lower() == name:
            return values[0] if isinstance(values, list) and values else str(values)
    return ""


def error_shape_ok(status: int, content: str) -> bool:
    """The spec: every error body is ``{"error": {"type": str, "message": str}, ...}``."""
    try:
        body = json.loads(content)
    except ValueError:
        return False
    err = body.get("error") if isinstance(body, dict) else None
    return isinstance(err, dict) and isinstance(err.get("type"), str) and isinstance(err.get("message"), str)


def newest(folder: Path, pattern: str) -> Path:
    """The newest report matching ``pattern`` (a path that does not exist if none)."""
    found = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else folder / "missing"


def per_item_rejection(status: int | None, content: str) -> bool:
    """A 422 whose body lists per-item failures (the spec's ``errors``): the request was well formed
    and its items were not images (schemathesis cannot generate images, so a schema-valid request
    is rejected for its content; the OpenAPI schema cannot say "a JPEG")."""
    if status != 422:
        return False
    try:
        body = json.loads(content)
    except ValueError:
        return False
    items = body.get("errors") if isinstance(body, dict) else None
    return bool(items) and all(isinstance(e, dict) and "index" in e and "type" in e for e in items)


def first_traceback(log: str, lines: int = 25) -> str:
    """The last ``lines`` lines of the first traceback in ``log`` (down to its exception line)."""
    start = log.index("Traceback (most recent call last)")
    block = []
    for line in log[start:].splitlines():
        block.append(line)
        if len(block) > 1 and line and not line[0].isspace():
            break
    return "\n".join(block[-lines:])


def read_events(path: Path) -> list[dict]:
    events = []
    if not path.is_file():
        return events
    for line in path.read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            pass  # a line cut short by a kill
    return events


def junit_failures(path: Path) -> dict[str, str]:
    """Operation -> schemathesis's failure text (with the ``curl`` line) from the JUnit report."""
    if not path.is_file():
        return {}
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        texts = [(f.text or "").strip() for f in [*case.iter("failure"), *case.iter("error")]]
        if texts:
            out[case.get("name", "?")] = "\n\n".join(texts)
    return out


def analyse(events: list[dict]) -> dict:
    """Statuses per operation, 5xx answers, failed checks and malformed error bodies."""
    statuses: dict[str, Counter] = defaultdict(Counter)
    server_errors, bad_shape, tracebacks, errors = [], [], [], []
    failed: dict[tuple[str, str, str], dict] = {}
    cases = 0
    operations = None
    finished = None
    for event in events:
        (kind, body), *_ = event.items()
        if kind == "LoadingFinished":
            operations = body.get("statistic", {}).get("operations")
        elif kind == "EngineFinished":
            finished = body
        elif kind in ("NonFatalError", "FatalError") or kind.endswith("Error"):
            errors.append(json.dumps(body)[:1500])
        if kind != "ScenarioFinished":
            continue
        recorder = body.get("recorder") or {}
        label = recorder.get("label", "?")
        cases += len(recorder.get("cases") or {})
        for case_id, interaction in (recorder.get("interactions") or {}).items():
            request, response = interaction.get("request") or {}, interaction.get("response")
            if not response:
                continue
            status = int(response.get("status_code", 0))
            statuses[label][status] += 1
            content = body_text(response, 100_000)
            what = {
                "operation": label,
                "case": case_id,
                "request": f"{request.get('method')} {request.get('uri')}",
                "content_type": header(request, "content-type"),
                "request_body": body_text(request),
                "status": status,
                "response_body": content[:600],
            }
            if status >= 500:
                server_errors.append(what)
            if status >= 400 and not error_shape_ok(status, content):
                bad_shape.append(what)
            if "Traceback (most recent call last)" in content:
                tracebacks.append(what)
        for case_id, checks in (recorder.get("checks") or {}).items():
            for check in checks:
                if check.get("status") != "failure":
                    continue
                info = (check.get("failure_info") or {}).get("failure") or {}
                interaction = (recorder.get("interactions") or {}).get(case_id) or {}
                request = interaction.get("request") or {}
                response = interaction.get("response") or {}
                benign = check["name"] == "positive_data_acceptance" and per_item_rejection(
                    response.get("status_code"), body_text(response, 100_000)
                )
                key = (check["name"], info.get("code", "?"), info.get("operation", label), benign)
                entry = failed.setdefault(key, {"count": 0, "title": info.get("title", ""), "cases": []})
                entry["count"] += 1
                if len(entry["cases"]) < 3:
                    entry["cases"].append(
                        {
                            "request": f"{request.get('method')} {request.get('uri')}",
                            "content_type": header(request, "content-type"),
                            "request_body": body_text(request),
                            "status": response.get("status_code"),
                            "response_body": body_text(response, 600),
                            "message": info.get("message", ""),
                        }
                    )
    return {
        "statuses": statuses,
        "server_errors": server_errors,
        "bad_shape": bad_shape,
        "tracebacks": tracebacks,
        "failed": failed,
        "errors": errors,
        "cases": cases,
        "operations": operations,
        "finished": finished,
    }


# --- hand-written probes ---------------------------------------------------------------------------
# The OpenAPI document cannot describe everything (multipart uploads, image content, limits), so a
# fixed set of hostile requests follows schemathesis: each with the statuses the spec allows.

PROBE_LIMITS = ["--max-items", "16", "--max-body-mb", "2", "--max-pixels", "4000000"]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's header) and whose
    data is a few bytes: the size check must refuse it from the header alone."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def probes(dim: int) -> list[tuple[str, str, dict, set[int], str | None]]:
    """(name, path, httpx keyword arguments, allowed statuses, per-item error type expected)."""
    good = jpegs(1, 96, 72, seed=3)[0]
    corrupt = good[: len(good) // 3]
    bomb = _png_header_only(100_000, 100_000)
    url = data_url(good)

    def files(*items: tuple[str, bytes, str], field: str = "files") -> dict:
        return {"files": [(field, (f"f{i}", data, kind)) for i, (_, data, kind) in enumerate(items)]}

    jpg = ("a", good, "image/jpeg")
    deep = "[" * 50_000 + "]" * 50_000
    return [
        ("multipart, one JPEG", "/v1/embed", files(jpg), {200}, None),
        (
            "raw image/jpeg body",
            "/v1/embed",
            {"content": good, "headers": {"content-type": "image/jpeg"}},
            {200},
            None,
        ),
        ("multipart, empty file", "/v1/embed", files(("e", b"", "image/jpeg")), {422}, ""),
        ("multipart, truncated JPEG", "/v1/embed", files(("t", corrupt, "image/jpeg")), {422}, ""),
        ("multipart, text file", "/v1/embed", files(("x", b"hello", "text/plain")), {422}, ""),
        (
            "multipart, PNG header 100k x 100k",
            "/v1/embed",
            files(("b", bomb, "image/png")),
            {422},
            "ImageTooLarge",
        ),
        ("multipart, good + truncated", "/v1/embed", files(jpg, ("t", corrupt, "image/jpeg")), {207}, ""),
        ("multipart, 17 files (max 16)", "/v1/embed", files(*[jpg] * 17), {413}, None),
        (
            "raw body of 3 MB (max 2)",
            "/v1/embed",
            {"content": good + b"\0" * (3 << 20), "headers": {"content-type": "image/jpeg"}},
            {413},
            None,
        ),
        ("multipart, field `file` not `files`", "/v1/embed", files(jpg, field="file"), {400, 415, 422}, None),
        (
            "multipart, bad boundary",
            "/v1/embed",
            {"content": b"--x\r\nnonsense", "headers": {"content-type": "multipart/form-data; boundary=y"}},
            {400, 415, 422},
            None,
        ),
        ("JSON body to /v1/embed", "/v1/embed", {"json": {"input": url}}, {415}, None),
        (
            "raw image/png of garbage",
            "/v1/embed",
            {"content": b"\x00" * 100, "headers": {"content-type": "image/png"}},
            {422},
            "",
        ),
        ("JSON, data URL", "/v1/embeddings", {"json": {"input": url}}, {200}, None),
        (
            "JSON, base64 + normalize",
            "/v1/embeddings",
            {"json": {"input": [url, url], "encoding_format": "base64", "normalize": True}},
            {200},
            None,
        ),
        ("JSON, 17 items (max 16)", "/v1/embeddings", {"json": {"input": [url] * 17}}, {413}, None),
        (
            "JSON, a URL (never fetched)",
            "/v1/embeddings",
            {"json": {"input": "http://127.0.0.1:9/x.jpg"}},
            {422},
            "",
        ),
        ("JSON, a path (never read)", "/v1/embeddings", {"json": {"input": "/etc/hostname"}}, {422}, ""),
        (
            "JSON, svg data URL",
            "/v1/embeddings",
            {"json": {"input": "data:image/svg+xml;base64,PHN2Zy8+"}},
            {422},
            "",
        ),
        (
            "JSON, data URL, bad base64",
            "/v1/embeddings",
            {"json": {"input": "data:image/jpeg;base64,@@@"}},
            {422},
            "",
        ),
        (
            "JSON, encoding_format bogus",
            "/v1/embeddings",
            {"json": {"input": url, "encoding_format": "x"}},
            {400, 422},
            None,
        ),
        (
            "JSON, 50k-deep nesting",
            "/v1/embeddings",
            {"content": '{"input": ' + deep + "}", "headers": {"content-type": "application/json"}},
            {400, 422},
            None,
        ),
        (
            "JSON, lone surrogate",
            "/v1/embeddings",
            {"content": b'{"input": "\\ud800"}', "headers": {"content-type": "application/json"}},
            {400, 422},
            "",
        ),
        (
            "JSON, not JSON",
            "/v1/embeddings",
            {"content": b"\xff\xfe{", "headers": {"content-type": "application/json"}},
            {400, 422},
            None,
        ),
        ("search, vector", "/v1/search", {"json": {"vector": [0.1] * dim, "k": 3}}, {200}, None),
        ("search, image", "/v1/search", {"json": {"image": url, "k": 3}}, {200}, None),
        (
            "search, NaN in vector",
            "/v1/search",
            {
                "content": '{"vector": [NaN' + ", 0.1" * (dim - 1) + "]}",
                "headers": {"content-type": "application/json"},
            },
            {400, 422},
            None,
        ),
        ("search, vector too short", "/v1/search", {"json": {"vector": [0.1] * (dim - 1)}}, {400, 422}, None),
        (
            "search, image and vector",
            "/v1/search",
            {"json": {"image": url, "vector": [0.1] * dim}},
            {400, 422},
            None,
        ),
        (
            "search, text without a text tower",
            "/v1/search",
            {"json": {"text": "a dog"}},
            {400, 404, 422},
            None,
        ),
        ("search, k = 0", "/v1/search", {"json": {"vector": [0.1] * dim, "k": 0}}, {400, 422}, None),
        (
            "search, k = 10**9",
            "/v1/search",
            {"json": {"vector": [0.1] * dim, "k": 10**9}},
            {200, 400, 422},
            None,
        ),
        ("search, corrupt image", "/v1/search", {"json": {"image": data_url(corrupt)}}, {400, 422}, None),
        ("unknown path", "/v2/nothing", {}, {404}, None),
    ]


def run_probes(url: str, index: bool) -> list[dict]:
    """Send each probe once; one row per probe, with its ``problems`` (anything off spec)."""
    import httpx
    import numpy as np

    with httpx.Client(timeout=60) as client:
        dim = client.get(url + "/v1/models").json()["data"][0]["dim"]
        rows = []
        for name, path, kwargs, allowed, item_type in probes(dim):
            method = "GET" if path == "/v2/nothing" else "POST"
            if path == "/v1/search" and not index:
                allowed, item_type = {404}, None
            row = {"name": name, "path": path, "allowed": allowed, "problems": []}
            try:
                r = client.request(method, url + path, **kwargs)
            except httpx.HTTPError as exc:
                row.update(status=None, body=repr(exc))
                row["problems"].append(f"no answer: {exc!r}")
                rows.append(row)
                continue
            row.update(status=r.status_code, body=r.text[:300])
            if r.status_code not in allowed:
                row["problems"].append(f"HTTP {r.status_code}, expected {sorted(allowed)}")
            if "Traceback (most recent call last)" in r.text:
                row["problems"].append("traceback in the body")
            try:
                body = r.json()
            except ValueError:
                body = None
                row["problems"].append("body is not JSON")
            if r.status_code >= 400 and not error_shape_ok(r.status_code, r.text):
                row["problems"].append("error body not {error: {type, message}}")
            if isinstance(body, dict) and r.status_code in (200, 207) and path != "/v1/search":
                normalize = bool((kwargs.get("json") or {}).get("normalize"))
                for d in body.get("data", []):
                    v = d.get("embedding")
                    v = np.frombuffer(base64.b64decode(v), "<f4") if isinstance(v, str) else np.array(v or [])
                    if len(v) != dim:
                        row["problems"].append(f"item {d.get('index')}: {len(v)} values, expected {dim}")
                    elif normalize and abs(float(np.linalg.norm(v)) - 1) > 1e-3:
                        row["problems"].append(f"item {d.get('index')}: norm {np.linalg.norm(v):.4f}, not 1")
            if item_type is not None and isinstance(body, dict):
                types = [e.get("type") for e in body.get("errors") or []]
                if not types:
                    row["problems"].append("no per-item `errors`")
                elif item_type and item_type not in types:
                    row["problems"].append(f"per-item error {types}, expected {item_type}")
            rows.append(row)
    return rows


def show(what: dict, indent: str = "    ") -> None:
    kind = f"  ({what['content_type']})" if what["content_type"] else ""
    print(f"{indent}request: {what['request']}{kind}")
    if what["request_body"]:
        print(f"{indent}request body: {what['request_body']!r}")
    print(f"{indent}answer: HTTP {what['status']} {what['response_body']!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(TINY))
    parser.add_argument("--max-examples", type=int, default=50, help="test cases per operation and phase")
    parser.add_argument("--max-seconds", type=float, default=240.0, help="wall-clock bound on schemathesis")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-index", action="store_true", help="no --index (then /v1/search answers 404)")
    parser.add_argument("--exclude-checks", default="", help="schemathesis checks to skip, comma-separated")
    parser.add_argument("--server-args", default="", help="extra `imgbeddings serve` options, one string")
    parser.add_argument("--keep-reports", type=Path, help="copy schemathesis's reports here")
    parser.add_argument("--no-probes", action="store_true", help="skip the hand-written probes")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="also fail on schemathesis's data-acceptance checks (limits the schema cannot express: "
        "exactly one search query, the vector's width, items per request, image content)",
    )
    args = parser.parse_args()

    if importlib.util.find_spec("schemathesis") is None:
        print(
            "schemathesis is not installed (it is not a dependency of imgbeddings): "
            "pip install schemathesis   (into this environment, then run again)",
            file=sys.stderr,
        )
        return 2

    def terminated(signum, frame):  # stop the server on SIGTERM too
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    work = Path(tempfile.mkdtemp(prefix="imgbeddings-fuzz-"))
    reports = work / "reports"
    server_args = [*PROBE_LIMITS, *args.server_args.split()]
    if not args.no_index:
        index = make_index(work, args.model)
        if index is None:
            return 2
        server_args += ["--index", str(index)]

    t0 = time.perf_counter()
    timed_out = False
    try:
        with Server(args.model, args=server_args) as server:
            print(f"server ready in {server.ready_seconds:.1f} s at {server.url}", file=sys.stderr)
            cmd = [sys.executable, "-c", ST_CLI, "--no-color", "run", server.url + "/openapi.json"]
            cmd += ["--checks", "all", "--max-examples", str(args.max_examples), "--seed", str(args.seed)]
            cmd += ["--workers", "1", "--continue-on-failure", "--request-timeout", "60"]
            cmd += ["--report", "junit,ndjson"]
            cmd += ["--report-dir", str(reports)]
            if args.exclude_checks:
                cmd += ["--exclude-checks", args.exclude_checks]
            shown = " ".join(cmd[3:])
            print(f"$ schemathesis {shown}", file=sys.stderr)
            log = work / "schemathesis.out"
            with open(log, "w") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=work)
                try:
                    st_rc = proc.wait(timeout=args.max_seconds)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    proc.kill()
                    st_rc = proc.wait()
            rows = []
            if not args.no_probes:
                rows = run_probes(server.url, index=not args.no_index)
            import httpx

            alive = {}
            for path in ("/healthz", "/readyz"):
                try:
                    alive[path] = httpx.get(server.url + path, timeout=30).status_code
                except httpx.HTTPError as exc:
                    alive[path] = repr(exc)
            server_exit = server.proc.poll()
            server_log = server.log_tail(1_000_000)
    except RuntimeError as exc:  # the server did not start
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - t0

    events = read_events(newest(reports, "ndjson-*.ndjson"))
    junit = junit_failures(newest(reports, "junit-*.xml"))
    result = analyse(events)
    if args.keep_reports:
        shutil.copytree(reports, args.keep_reports, dirs_exist_ok=True)
        shutil.copy(log, args.keep_reports / "schemathesis.out")

    # --- the report ------------------------------------------------------------------------------
    print(
        f"## schemathesis against `imgbeddings serve` ({Path(args.model).name}"
        f"{', with --index' if not args.no_index else ''})\n"
    )
    ops = result["operations"] or {}
    finished = result["finished"] or {}
    requests = sum(sum(c.values()) for c in result["statuses"].values())
    print(
        f"- schemathesis exit code {st_rc}{' (killed: wall-clock bound hit)' if timed_out else ''}, "
        f"{seconds:.0f} s in all, stop reason: {finished.get('stop_reason', 'n/a')}"
    )
    print(
        f"- operations: {ops.get('selected', '?')} selected of {ops.get('total', '?')}; "
        f"{len(result['statuses'])} answered; test cases: {result['cases']:,}; requests: {requests:,}"
    )
    print()
    print("| operation | requests | statuses |")
    print("|---|---|---|")
    for label in sorted(result["statuses"]):
        c = result["statuses"][label]
        print(f"| `{label}` | {sum(c.values()):,} | {', '.join(f'{s}: {n}' for s, n in sorted(c.items()))} |")
    print()

    failed = {k: v for k, v in result["failed"].items() if not k[3]}
    expected = {k: v for k, v in result["failed"].items() if k[3]}
    schema = {k: v for k, v in failed.items() if k[0] in SCHEMA_CHECKS}
    other = {k: v for k, v in failed.items() if k[0] not in SCHEMA_CHECKS and k[0] != "not_a_server_error"}
    print(f"- 5xx answers: {len(result['server_errors'])}")
    for what in result["server_errors"][:10]:
        show(what)
    print(
        f"- schema violations (failed {', '.join(sorted(SCHEMA_CHECKS))}): "
        f"{sum(v['count'] for v in schema.values())}"
    )
    print(f"- other failed checks: {sum(v['count'] for v in other.values())}")
    for (name, code, operation, _), entry in sorted(failed.items()):
        print(f"  - {code} {entry['title']} ({name}) on `{operation}`: {entry['count']} case(s)")
        for case in entry["cases"][:2]:
            if case["message"]:
                print("    " + case["message"].replace("\n", " | "))
            show(case, "      ")
    print(
        f"- schema-valid requests answered 422 with per-item errors (generated bytes/strings are not "
        f"images; expected, not counted): {sum(v['count'] for v in expected.values())}"
    )
    for (name, code, operation, _), entry in sorted(expected.items()):
        print(f"  - {code} ({name}) on `{operation}`: {entry['count']} case(s), e.g.")
        show(entry["cases"][0], "      ")
    print(f'- error bodies not of the form {{"error": {{"type", "message"}}}}: {len(result["bad_shape"])}')
    seen = set()
    for what in result["bad_shape"]:
        key = (what["operation"], what["status"])
        if key not in seen and len(seen) < 10:
            seen.add(key)
            show(what)
    print(f"- answers holding a Python traceback: {len(result['tracebacks'])}")
    for what in result["tracebacks"][:3]:
        show(what)
    print(f"- schemathesis errors: {len(result['errors'])}")
    for e in result["errors"][:5]:
        print(f"    {e}")
    print(
        f"- server afterwards: /healthz {alive['/healthz']}, /readyz {alive['/readyz']}, "
        f"process {'running' if server_exit is None else f'exited with {server_exit}'}"
    )
    log_tracebacks = server_log.count("Traceback (most recent call last)")
    print(f"- tracebacks in the server's log: {log_tracebacks}")
    if log_tracebacks:
        print("\n    (the first, its end)\n    " + first_traceback(server_log).replace("\n", "\n    "))
    if rows:
        bad_probes = [r for r in rows if r["problems"]]
        print(f"\n### Hand-written probes ({len(rows)}; {len(bad_probes)} off spec)\n")
        print("| probe | endpoint | allowed | got | problems |")
        print("|---|---|---|---|---|")
        for r in rows:
            allowed = ", ".join(map(str, sorted(r["allowed"])))
            problems = "; ".join(r["problems"]) or "-"
            print(f"| {r['name']} | `{r['path']}` | {allowed} | {r['status']} | {problems} |")
        for r in bad_probes:
            print(f"\n- {r['name']}: answer {r['status']} {r['body']!r}")
    flagged = {k[2] for k in failed}
    if flagged & set(junit):
        print("\n### schemathesis's failure reports (with `curl` to reproduce)\n")
        for operation, text in sorted(junit.items()):
            if operation not in flagged:
                continue
            print(f"#### {operation}\n\n```\n{text[:6000]}\n```\n")
    if not events:
        print("\n(no events recorded; schemathesis's output:)\n")
        print(log.read_text(errors="replace")[-4000:])

    dead = alive["/healthz"] != 200 or alive["/readyz"] != 200 or server_exit is not None
    off_spec = any(r["problems"] for r in rows)
    if timed_out:
        rc = 3
    elif (
        result["server_errors"]
        or schema
        or any(k[0] == "not_a_server_error" for k in failed)
        or (args.strict and other)
        or result["bad_shape"]
        or result["tracebacks"]
        or dead
        or off_spec
    ):
        rc = 1
    elif result["errors"] or not events or st_rc not in (0, 1):
        rc = 2
    else:
        rc = 0
    if rc:
        print(f"\n(schemathesis's reports and output: {work})")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
