"""The HTTP service (``imgbeddings serve``; the ``[serve]`` extra: FastAPI, uvicorn).

>>> app = create_app(ServeConfig(model="patch32_v1"))   # a FastAPI app; run it with uvicorn

Endpoints: ``POST /v1/embeddings`` (OpenAI-style JSON: images as ``data:`` URLs, text when a text
tower is loaded), ``POST /v1/embed`` (multipart files, or one raw ``image/*`` body),
``POST /v1/search`` (top-k in the output loaded with ``index``), ``GET /v1/models``,
``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json``. README, "HTTP service", has the
shapes, the status codes and the limits.

Input is the request's bytes only: no URL or file path is ever fetched or opened. Every error
answers ``{"error": {"type", "message"}}`` and never a traceback; per-item failures are listed
with their index (HTTP 207 when some items succeeded, 422 when none did).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import json
import logging
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import Failure, ModelMismatch, OptionError
from .batcher import Batcher, Busy
from .metrics import Metrics, route_of

log = logging.getLogger("imgbeddings.serve")
_DATA_URL = re.compile(r"^data:(?:image/[A-Za-z0-9.+-]+|application/octet-stream)?;base64,", re.ASCII)
_OPEN = ("/healthz", "/readyz")
#: A real 1 x 1 PNG, as a data URL: the schema's example (a request made from it succeeds).
_EXAMPLE_PNG = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGM4kWIEAANWAV/oF4RSAAAAAElFTkSuQmCC"
)


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    what = {
        400: "the body is not valid JSON / multipart",
        401: "a valid API key is needed (Authorization: Bearer KEY)",
        404: "nothing here (search: no --index)",
        413: "body too large, or too many items",
        415: "unsupported Content-Type",
        422: "invalid request, or every item failed (errors lists them)",
        503: "busy: retry after Retry-After seconds",
        504: "the request took too long",
    }
    return {c: {"model": ErrorBody, "description": what[c]} for c in codes}


class EmbeddingsRequest(BaseModel):
    input: str | Annotated[list[str], Field(min_length=1)] = Field(
        description="Images as data URLs (data:image/jpeg;base64,...); with a text tower, "
        "other strings are text.",
        examples=[[_EXAMPLE_PNG]],
    )
    encoding_format: Literal["float", "base64"] = Field("float", description="base64: little-endian float32")
    normalize: bool = Field(False, strict=True, description="L2-normalise the vectors")
    model: str | None = Field(None, description="Ignored: the served model answers")


class ErrorDetail(BaseModel):
    type: str
    message: str


class ItemError(BaseModel):
    index: int
    type: str
    message: str


class ErrorBody(BaseModel):
    """Every answer other than 200/207: what went wrong (and, for per-item failures, each item)."""

    error: ErrorDetail
    errors: list[ItemError] | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingsResponse(BaseModel):
    """200; 207 when some items failed (then ``errors`` lists them)."""

    object: Literal["list"] = "list"
    model: str
    data: list[Embedding]
    usage: dict[str, int]
    errors: list[ItemError] | None = None


class SearchRequest(BaseModel):
    image: str | None = Field(None, description="A data URL")
    text: str | None = Field(None, description="Text (needs the text tower)")
    vector: list[float] | None = Field(None, description="A query vector of the model's width")
    k: int = Field(10, ge=1, le=1000)


@dataclass
class ServeConfig:
    """What ``imgbeddings serve`` runs (its options, same names)."""

    model: str = "patch32_v1"
    text: bool = False
    index: str | None = None
    mode: str = "fast"
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_items: int = 64
    max_body_bytes: int = 32 << 20
    max_queue: int = 256
    request_timeout: float = 30.0
    decode_timeout: float = 10.0
    max_pixels: int | None = None
    api_key: str | None = None
    threads: int | None = None
    decode_threads: int | None = None

    def check(self) -> None:
        for name in ("max_batch", "max_items", "max_body_bytes", "max_queue"):
            if getattr(self, name) < 1:
                raise OptionError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_wait_ms", "request_timeout", "decode_timeout"):
            if not getattr(self, name) > 0:
                raise OptionError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.api_key is not None and not self.api_key:
            raise OptionError("the API key is empty")


class HttpError(Exception):
    """An answer other than 200: status, error type, message, extra headers, extra body."""

    def __init__(
        self, status: int, kind: str, message: str, headers: dict | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.headers = headers or {}
        self.extra = extra


def _error_body(kind: str, message: str, **extra: Any) -> bytes:
    return json.dumps({"error": {"type": kind, "message": message}, **extra}).encode()


async def _send_json(send: Any, status: int, body: bytes, headers: dict | None = None) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class _Guard:
    """Outermost ASGI layer: API key, body size, request timeout, metrics, no tracebacks."""

    def __init__(self, app: Any, config: ServeConfig, metrics: Metrics) -> None:
        self.app, self.config, self.metrics = app, config, metrics
        self.batcher: Batcher | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [0]

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, sending, status)
        finally:
            self.metrics.observe(route_of(scope), status[0] or 500, time.perf_counter() - started)

    async def _guarded(self, scope: dict, receive: Any, send: Any, status: list[int]) -> None:
        headers = dict(scope.get("headers") or [])
        if self.config.api_key is not None and scope.get("path") not in _OPEN:
            given = headers.get(b"authorization", b"").decode("latin-1")
            expected = f"Bearer {self.config.api_key}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                body = _error_body("Unauthorized", "a valid API key is needed: Authorization: Bearer KEY")
                await _send_json(send, 401, body, {"WWW-Authenticate": "Bearer"})
                return
        limit = self.config.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _send_json(send, 413, _error_body("BodyTooLarge", f"the body is over {limit} bytes"))
            return
        received = [0]

        async def limited() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > limit:
                    raise HttpError(413, "BodyTooLarge", f"the body is over {limit} bytes")
            return message

        try:
            await asyncio.wait_for(self.app(scope, limited, send), self.config.request_timeout)
        except asyncio.TimeoutError:
            if not status[0]:
                body = _error_body("Timeout", f"the request took over {self.config.request_timeout:g} s")
                await _send_json(send, 504, body)
        except HttpError as exc:
            if not status[0]:
                await _send_json(send, exc.status, _error_body(exc.kind, exc.message), exc.headers)
        except Exception:  # never a traceback to the client; the log has it
            log.exception("unhandled error")
            if not status[0]:
                await _send_json(
                    send, 500, _error_body("InternalError", "internal error (see the server log)")
                )


def _decode_data_url(item: str) -> bytes:
    match = _DATA_URL.match(item)
    if match is None:
        raise ValueError(
            "not an image data URL (data:image/...;base64,...); URLs and paths are never fetched"
        )
    try:
        return base64.b64decode(item[match.end() :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"the data URL's base64 is invalid: {exc}") from None


def _vector_out(vector: np.ndarray, fmt: str, normalize: bool) -> Any:
    v = np.asarray(vector, dtype=np.float32)
    if normalize:
        norm = float(np.linalg.norm(v))
        v = v / norm if norm > 0 else v
    if fmt == "base64":
        return base64.b64encode(v.astype("<f4").tobytes()).decode()
    return v.tolist()


def create_app(config: ServeConfig) -> Any:
    """The ASGI app serving ``config`` (loads the model, and the text tower / index asked for):
    the FastAPI app (its ``.app``) inside the guard that enforces the API key, the body size and
    the request timeout. Run it with uvicorn.

    Raises :class:`OptionError` for bad limits, model errors as the Embedder does,
    :class:`~imgbeddings.errors.ModelNotFound` for ``text`` without a text tower, and
    :class:`ModelMismatch` when ``index`` holds vectors made otherwise.
    """
    from .. import settings
    from ..embedder import Embedder
    from ..images.decode import DEFAULT_MAX_PIXELS

    config.check()
    embedder = Embedder(
        config.model,
        mode=config.mode,  # type: ignore[arg-type]
        threads=config.threads,
        max_pixels=config.max_pixels or DEFAULT_MAX_PIXELS,
        spin=False,  # decoding threads share the CPUs: idle inference threads must not busy-wait
    )
    text_model = None
    if config.text:
        from ..text.embedder import TextEmbedder

        folder = Path(config.model) if Path(config.model).is_dir() else Path(embedder.model_path).parent
        text_model = TextEmbedder(folder, threads=config.threads)
    if config.index is not None:
        from ..shards import identity_of
        from ..store import describe_mismatch, read_manifest

        theirs = identity_of(read_manifest(config.index))
        if theirs != embedder.identity():
            raise ModelMismatch(describe_mismatch(Path(config.index), theirs, embedder.identity()))
        if text_model is not None:
            text_model.check_pair(read_manifest(config.index), config.index)
    batcher: Batcher
    metrics = Metrics(lambda: batcher.depth)
    batcher = Batcher(
        embedder,
        max_batch=config.max_batch,
        max_wait_ms=config.max_wait_ms,
        max_queue=config.max_queue,
        decode_timeout=config.decode_timeout,
        decode_threads=config.decode_threads or settings.available_cpus(),
        on_batch=metrics.batch_size.observe,
    )
    name = embedder.card.name

    @asynccontextmanager
    async def lifespan(_: Any) -> Any:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="imgbeddings",
        description="Image (and, with a text tower, text) embeddings from CLIP-family models "
        "on ONNX Runtime.",
        lifespan=lifespan,
    )

    @app.exception_handler(HttpError)
    async def _http_error(_: Request, exc: HttpError) -> Any:
        return JSONResponse({"error": {"type": exc.kind, "message": exc.message}, **exc.extra},
                            status_code=exc.status, headers=exc.headers)  # fmt: skip

    @app.exception_handler(StarletteHTTPException)
    async def _framework_error(_: Request, exc: StarletteHTTPException) -> Any:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, HttpError):  # raised while reading the body (the size limit)
            return await _http_error(_, cause)
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        return JSONResponse({"error": {"type": kind, "message": str(exc.detail)}},
                            status_code=exc.status_code, headers=exc.headers)  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Any:
        problems = "; ".join(
            f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors()[:5]
        )
        return JSONResponse({"error": {"type": "InvalidRequest", "message": problems}}, status_code=422)

    async def embed_items(items: list[tuple[str, Any]]) -> tuple[list[Any], list[dict]]:
        """items: ("image", bytes) | ("text", str) | ("error", message). Vectors or None, errors."""
        most = min(config.max_items, config.max_queue)  # more than the queue holds could never run
        if len(items) > most:
            raise HttpError(413, "TooManyItems", f"{len(items)} items; at most {most} per request")
        if not items:
            raise HttpError(422, "InvalidRequest", "no input items")
        vectors: list[Any] = [None] * len(items)
        errors: list[dict] = []
        images = [(i, v) for i, (kind, v) in enumerate(items) if kind == "image"]
        texts = [(i, v) for i, (kind, v) in enumerate(items) if kind == "text"]
        for i, (kind, v) in enumerate(items):
            if kind == "error":
                errors.append({"index": i, "type": "NotAnImage", "message": v})
        if images:
            try:
                results = await batcher.embed([b for _, b in images])
            except Busy as exc:
                raise HttpError(503, "Busy", str(exc), {"Retry-After": "1"}) from None
            for (i, _), result in zip(images, results, strict=True):
                if isinstance(result, Failure):
                    errors.append({"index": i, "type": result.error, "message": result.message})
                else:
                    vectors[i] = result
        if texts:
            assert text_model is not None
            got = await batcher.run_text(lambda: text_model.embed([t for _, t in texts]))
            for (i, _), vector in zip(texts, got, strict=True):
                vectors[i] = vector
        for e in errors:
            metrics.failed(e["type"])
        return vectors, sorted(errors, key=lambda e: e["index"])

    def answer(vectors: list[Any], errors: list[dict], fmt: str, normalize: bool, usage: dict) -> Any:
        data = [
            {"object": "embedding", "index": i, "embedding": _vector_out(v, fmt, normalize)}
            for i, v in enumerate(vectors)
            if v is not None
        ]
        body: dict[str, Any] = {"object": "list", "model": name, "data": data, "usage": usage}
        if errors and not data:
            first = errors[0]
            return JSONResponse(
                {"error": {"type": first["type"], "message": f"item {first['index']}: {first['message']}"},
                 "errors": errors},
                status_code=422,
            )  # fmt: skip
        if errors:
            body["errors"] = errors
        return JSONResponse(body, status_code=207 if errors else 200)

    def parse(item: str) -> tuple[str, Any]:
        if item.startswith("data:"):
            try:
                return ("image", _decode_data_url(item))
            except ValueError as exc:
                return ("error", str(exc))
        if text_model is not None:
            return ("text", item)
        return ("error", "not an image data URL (data:image/...;base64,...); URLs and paths are never "
                         "fetched, and text needs a server started with --text")  # fmt: skip

    @app.post(
        "/v1/embeddings",
        summary="Embed images (data URLs) and, with a text tower, text",
        response_model=EmbeddingsResponse,
        responses={207: {"model": EmbeddingsResponse, "description": "some items failed: see errors"},
                   **_errors(400, 401, 413, 422, 503, 504)},
    )  # fmt: skip
    async def embeddings(request: EmbeddingsRequest) -> Any:
        raw = [request.input] if isinstance(request.input, str) else request.input
        items = [parse(x) for x in raw]
        vectors, errors = await embed_items(items)
        usage = {"images": sum(k == "image" for k, _ in items), "texts": sum(k == "text" for k, _ in items)}
        return answer(vectors, errors, request.encoding_format, request.normalize, usage)

    @app.post(
        "/v1/embed",
        summary="Embed uploaded image files (multipart field 'files') or one raw image/* body",
        response_model=EmbeddingsResponse,
        responses={207: {"model": EmbeddingsResponse, "description": "some files failed: see errors"},
                   **_errors(400, 401, 413, 415, 422, 503, 504)},
        openapi_extra={"requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
                "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        }}},
    )  # fmt: skip
    async def embed(request: Request) -> Any:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=config.max_items + 1, max_fields=config.max_items + 16)
            files = form.getlist("files")
            blobs = [await f.read() for f in files if hasattr(f, "read")]
            if len(blobs) != len(files):
                raise HttpError(422, "InvalidRequest", "the field 'files' must hold files")
        elif ctype.startswith("image/") or ctype.startswith("application/octet-stream"):
            blobs = [await request.body()]
        else:
            raise HttpError(
                415, "UnsupportedMediaType", "send multipart/form-data (field 'files') or an image/* body"
            )
        vectors, errors = await embed_items([("image", b) for b in blobs])
        return answer(vectors, errors, "float", False, {"images": len(blobs), "texts": 0})

    @app.post(
        "/v1/search",
        summary="Top-k images of the loaded output for an image, a text or a vector (exactly one)",
        responses=_errors(400, 401, 404, 413, 422, 503, 504),
    )
    async def search(request: SearchRequest) -> Any:
        if config.index is None:
            raise HttpError(404, "NoIndex", "this server has no output to search: start it with --index OUT")
        given = [x for x in ("image", "text", "vector") if getattr(request, x) is not None]
        if len(given) != 1:
            raise HttpError(422, "InvalidRequest", "give exactly one of image, text, vector")
        if request.image is not None:
            vectors, errors = await embed_items([parse(request.image) if request.image.startswith("data:")
                                                 else ("error", "not an image data URL")])  # fmt: skip
            if errors:
                raise HttpError(422, errors[0]["type"], errors[0]["message"])
            query, label = vectors[0], "<image>"
        elif request.text is not None:
            if text_model is None:
                raise HttpError(422, "NoTextModel", "text search needs a server started with --text")
            query, label = (await batcher.run_text(lambda: text_model.embed([request.text])))[0], request.text
        else:
            query, label = np.asarray(request.vector, dtype=np.float32), "<vector>"
            if query.shape != (embedder.dim,) or not np.isfinite(query).all():
                raise HttpError(422, "InvalidRequest", f"vector must be {embedder.dim} finite numbers")
        from ..analysis.search import search as search_output

        results = await asyncio.to_thread(search_output, config.index, query[None, :], request.k)
        return {"query": label, "results": results[0].to_json()["results"]}

    @app.get("/v1/models", summary="The served model")
    async def models() -> Any:
        card = {"id": name, "object": "model", "dim": embedder.dim, "kind": embedder.card.output.kind}
        return {"object": "list", "data": [{**card, "text": text_model is not None}]}

    @app.get("/healthz", summary="Alive")
    async def healthz() -> Any:
        return {"status": "ok"}

    probe = _probe_image()

    @app.get("/readyz", summary="Ready: a real inference on a small image succeeds")
    async def readyz() -> Any:
        try:
            result = await asyncio.wait_for(batcher.embed([probe]), 5.0)
        except Busy:
            return JSONResponse({"status": "busy"}, status_code=503, headers={"Retry-After": "1"})
        except asyncio.TimeoutError:
            return JSONResponse({"status": "stuck: no inference within 5 s"}, status_code=503)
        if isinstance(result[0], Failure):
            return JSONResponse(
                {"status": f"failing: {result[0].error}: {result[0].message}"}, status_code=503
            )
        return {"status": "ready"}

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    )
    async def prometheus() -> Any:
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    guard = _Guard(app, config, metrics)
    guard.batcher = batcher  # for operators and tests: depth, and its executors
    return guard


def _probe_image() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (120, 80, 40)).save(buf, "PNG")
    return buf.getvalue()
