"""``imgbeddings serve``: the HTTP service (:mod:`imgbeddings.serve`; the ``[serve]`` extra)."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from .. import errors
from .app import ThreadsOpt, app, err_console


@app.command("serve")
def serve_cmd(
    model: Annotated[
        str, typer.Option("--model", "-m", metavar="NAME|REPO|FILE|DIR", help="The model to serve.")
    ] = "patch32_v1",
    text: Annotated[
        bool, typer.Option("--text", help="Also serve the text tower exported beside the model.")
    ] = False,
    index: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(metavar="OUTPUT", help="An output folder to answer /v1/search from (same model)."),
    ] = None,
    host: Annotated[
        str, typer.Option(metavar="HOST", help="Address to bind (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", min=0, max=65535, help="Port to bind.")] = 8000,
    max_batch: Annotated[int, typer.Option(metavar="N", min=1, help="Most images per model call.")] = 32,
    max_wait_ms: Annotated[
        float, typer.Option(metavar="MS", min=0.1, help="Longest wait for more images to join a batch.")
    ] = 5.0,
    max_items: Annotated[int, typer.Option(metavar="N", min=1, help="Most items per request (413).")] = 64,
    max_body_mb: Annotated[
        float, typer.Option(metavar="MB", min=0.001, help="Largest request body (413).")
    ] = 32.0,
    max_queue: Annotated[
        int, typer.Option(metavar="N", min=1, help="Most images in the service at once (503 + Retry-After).")
    ] = 256,
    request_timeout: Annotated[
        float, typer.Option(metavar="S", min=0.1, help="Request time limit (504).")
    ] = 30.0,
    decode_timeout: Annotated[
        float, typer.Option(metavar="S", min=0.1, help="Time limit to decode one image (that item fails).")
    ] = 10.0,
    max_pixels: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(metavar="N", min=1, help="Largest image in pixels, from its header (that item fails)."),
    ] = None,
    api_key_env: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(metavar="VAR", help="Require Authorization: Bearer $VAR on every endpoint but health."),
    ] = None,
    threads: ThreadsOpt = None,
) -> None:
    """Serve embeddings over HTTP: /v1/embeddings, /v1/embed, /v1/search, /v1/models, /healthz,
    /readyz, /metrics (README, "HTTP service")."""
    try:
        import uvicorn

        from ..serve.app import ServeConfig, create_app
    except ImportError as exc:
        raise errors.MissingExtra(
            f"the HTTP service needs FastAPI and uvicorn ({exc.name} is not installed): "
            "pip install 'imgbeddings[serve]'"
        ) from exc
    api_key = None
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise errors.OptionError(
                f"--api-key-env {api_key_env}: that environment variable is empty or unset"
            )
    config = ServeConfig(
        model=model,
        text=text,
        index=index,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_items=max_items,
        max_body_bytes=int(max_body_mb * (1 << 20)),
        max_queue=max_queue,
        request_timeout=request_timeout,
        decode_timeout=decode_timeout,
        max_pixels=max_pixels,
        api_key=api_key,
        threads=threads,
    )
    asgi = create_app(config)
    server = uvicorn.Server(uvicorn.Config(asgi, host=host, port=port, log_level="warning", lifespan="on"))
    err_console.print(f"serving {model} on http://{host}:{port}", markup=False)
    server.run()
