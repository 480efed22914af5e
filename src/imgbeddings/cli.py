"""The ``imgbeddings`` command line (Typer). The only module that prints or exits.

Errors are mapped to one line on stderr and an exit code (tracebacks only with
``IMGBEDDINGS_DEBUG=1``); results go to stdout, progress and messages to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from . import errors, settings

app = typer.Typer(
    name="imgbeddings",
    help="Image embeddings from CLIP-family models on ONNX Runtime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)

# Most specific first: the first matching class decides the message prefix and exit code.
EXIT_CODES: list[tuple[type[BaseException], int, str]] = [
    (errors.AccuracyGateFailed, 4, "accuracy gate failed"),
    (errors.UnsupportedArchitecture, 3, "unsupported model"),
    (errors.ExportError, 3, "export failed"),
    (errors.ModelUnavailable, 5, "model unavailable"),
    (errors.ModelCorrupted, 5, "model corrupted"),
    (errors.ModelError, 5, "model error"),
    (errors.InputError, 2, "bad input"),
    (errors.ImgbeddingsError, 1, "error"),
]


@app.command("export")
def export_cmd(
    src: Annotated[str, typer.Argument(help="Hugging Face model id or local checkpoint folder.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (created).")],
    kind: Annotated[
        str,
        typer.Option(
            help="projection (CLIP image-text space) | legacy (original imgbeddings pooling) | pooled."
        ),
    ] = "projection",
    legacy_layers: Annotated[
        Optional[int],  # noqa: UP045 - typer needs Optional on 3.10
        typer.Option(help="Hidden states pooled by --kind legacy (default: 6 for patch-32 models, else 1)."),
    ] = None,
    quantize: Annotated[
        str,
        typer.Option(
            help="int8 (default recipe) | int8-original (QUInt8, the 0.1.0 recipe) | int8-plain | none."
        ),
    ] = "int8",
    resize_mode: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Override the card's geometry: pad | crop | squash (default: from the checkpoint)."
        ),
    ] = None,
    name: Annotated[Optional[str], typer.Option(help="Model name in the card.")] = None,  # noqa: UP045
    revision: Annotated[Optional[str], typer.Option(help="Hub revision of SRC.")] = None,  # noqa: UP045
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 20,
    min_int8_cosine: Annotated[
        float, typer.Option(help="Fail if INT8 vs fp32 cosine falls below this.")
    ] = 0.99,
    min_fp32_cosine: Annotated[
        float, typer.Option(help="Fail if ONNX vs PyTorch cosine falls below this.")
    ] = 0.99999,
) -> None:
    """Export a CLIP/SigLIP checkpoint's vision tower to a verified ONNX model with its card."""
    from .export import export_model

    result = export_model(
        src,
        output,
        kind=kind,
        legacy_layers=legacy_layers,
        quantize_recipe=quantize,
        resize_mode=resize_mode,
        name=name,
        revision=revision,
        opset=opset,
        min_int8_cosine=min_int8_cosine,
        min_fp32_cosine=min_fp32_cosine,
        log=lambda msg: err_console.print(msg, highlight=False),
    )
    typer.echo(str(result.model_path))


@app.callback()
def _root() -> None:
    """Image embeddings from CLIP-family models on ONNX Runtime."""


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning imgbeddings errors into one line + exit code."""
    try:
        app(args=argv, standalone_mode=False)
    except errors.ImgbeddingsError as exc:
        if settings.debug():
            raise
        code, label = next((c, lbl) for cls, c, lbl in EXIT_CODES if isinstance(exc, cls))
        err_console.print(f"[bold red]{label}:[/] {exc}", highlight=False)
        err_console.print("[dim]Set IMGBEDDINGS_DEBUG=1 for the full traceback.[/]")
        sys.exit(code)
    except (typer.Exit, typer.Abort) as exc:  # pragma: no cover - click handles these
        sys.exit(getattr(exc, "exit_code", 1))
    except Exception as exc:
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
