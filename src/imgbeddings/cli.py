"""The ``imgbeddings`` command line (Typer). The only module that prints or exits.

Errors are mapped to one line on stderr and an exit code (tracebacks only with
``IMGBEDDINGS_DEBUG=1``); results go to stdout, progress and messages to stderr.
"""

from __future__ import annotations

import sys
import time
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
    rich_markup_mode="markdown",
)
err_console = Console(stderr=True)

# Exit codes (README "Exit codes"). Most specific first: the first matching class decides.
EXIT_PARTIAL = 6  # the job finished, but some inputs failed (their rows say why)
EXIT_CODES: list[tuple[type[BaseException], int, str]] = [
    (errors.AccuracyGateFailed, 4, "accuracy gate failed"),
    (errors.UnsupportedArchitecture, 3, "unsupported model"),
    (errors.ExportError, 3, "export failed"),
    (errors.ModelMismatch, 8, "output holds another model"),
    (errors.OutputError, 8, "output error"),
    (errors.ModelUnavailable, 5, "model unavailable"),
    (errors.ModelCorrupted, 5, "model corrupted"),
    (errors.ModelError, 5, "model error"),
    (errors.InputError, 7, "stopped at a bad input (--strict)"),
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


@app.command("embed")
def embed_cmd(
    paths: Annotated[
        list[str],
        typer.Argument(help="Image files, folders, .txt files listing paths (one per line), or - for stdin."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (created, or resumed).")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Built-in name, hub repo, or .onnx file.")
    ] = "patch32_v1",
    batch_size: Annotated[int, typer.Option(help="Images per ONNX Runtime call.")] = 32,
    workers: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Decode worker processes (default: one per CPU; 0 = decode in-process)."),
    ] = None,
    threads: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="ONNX Runtime threads (default: the CPUs this process may use)."),
    ] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Walk sub-folders too.")] = False,
    fast: Annotated[
        bool,
        typer.Option(
            "--fast/--exact", help="fast: reduced-scale JPEG decoding (default); exact: reference pixels."
        ),
    ] = True,
    fmt: Annotated[
        str, typer.Option("--format", help="parquet (shards) | npy (shards + embeddings.npy/paths.txt).")
    ] = "parquet",
    strict: Annotated[bool, typer.Option(help="Stop at the first bad input (exit code 7).")] = False,
    retry_failed: Annotated[
        bool, typer.Option(help="Embed again files that failed in an earlier run.")
    ] = False,
    shard_size: Annotated[
        int, typer.Option(help="Rows per Parquet shard (the most a kill can lose).")
    ] = 4096,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Embed images into OUTPUT as resumable Parquet shards.

    Re-running the same command finishes an interrupted job and embeds only files that are new
    or changed. Exit code 0 when every input worked, 6 when some failed (the rest is written
    and the failures are in OUTPUT/failures.parquet), 7 when --strict stopped at a bad input.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .job import embed_files

    if fmt not in ("parquet", "npy"):
        raise typer.BadParameter(f"--format must be parquet or npy, got {fmt!r}")
    bar = Progress(
        TextColumn("[bold]embedding"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} img/s"),
        TextColumn("[red]{task.fields[failed]} failed"),
        TimeRemainingColumn(),
        console=err_console,
        disable=not progress,
        transient=False,
    )
    state = {"task": None, "failed": 0, "t0": 0.0}

    def on_start(total: int, skipped: int) -> None:
        if skipped:
            err_console.print(f"{skipped} file(s) already in {output}: skipped", highlight=False)
        state["t0"] = time.perf_counter()
        if total:
            state["task"] = bar.add_task("embed", total=total, rate="-", failed=0)

    def on_batch(done: int, failed: int) -> None:
        state["failed"] += failed
        task = bar.tasks[0]
        rate = (task.completed + done) / max(time.perf_counter() - state["t0"], 1e-9)
        bar.update(state["task"], advance=done, rate=f"{rate:.1f}", failed=state["failed"])

    with bar:
        result = embed_files(
            paths,
            output,
            model=model,
            mode="fast" if fast else "exact",
            batch_size=batch_size,
            workers=workers,
            threads=threads,
            recursive=recursive,
            strict=strict,
            retry_failed=retry_failed,
            shard_size=shard_size,
            npy=fmt == "npy",
            on_start=on_start,
            on_batch=on_batch,
        )
    c, t = result.counts, result.timings
    err_console.print(
        f"embedded {c.embedded}, skipped {c.skipped} (already done), failed {c.failed} "
        f"in {result.seconds:.1f} s ({result.images_per_second:.1f} img/s; {result.workers} decode "
        f"worker(s), {result.threads} ONNX Runtime thread(s))",
        highlight=False,
    )
    err_console.print(
        f"[dim]time split: decode {t.decode:.1f} s, geometry {t.geometry:.1f} s (summed over workers), "
        f"to tensor {t.tensor:.1f} s, inference {t.inference:.1f} s[/]",
        highlight=False,
    )
    for f in result.failures[:20]:
        err_console.print(f"[red]failed[/] {f.source}: {f.error}: {f.message}", highlight=False)
    if len(result.failures) > 20:
        err_console.print(f"... and {len(result.failures) - 20} more: see {output / 'failures.parquet'}")
    typer.echo(str(output))
    if c.failed:
        raise typer.Exit(EXIT_PARTIAL)


@app.command("models")
def models_cmd() -> None:
    """List the built-in models and whether each is in the local cache."""
    from .hub import cached_model_file
    from .models.registry import builtin_cards

    for name, card in builtin_cards().items():
        cached = cached_model_file(card.file.repo_id or "", card.file.filename, card.file.revision or "main")
        where = str(cached) if cached else "not downloaded"
        typer.echo(
            f"{name:<12} {card.architecture:<9} {card.output.dim:>5}-d  {card.output.kind:<10} "
            f"{card.file.repo_id}/{card.file.filename}  [{where}]"
        )


@app.command("info")
def info_cmd(
    target: Annotated[
        Path, typer.Argument(help="A model (.onnx, .card.json, export folder) or an output folder.")
    ],
) -> None:
    """Show a model's card, or an output folder's model, size and failures."""
    import json

    from .store import MANIFEST, summarize

    if target.is_dir() and (target / MANIFEST).is_file():
        info = summarize(target)
        m = info["manifest"]
        typer.echo(f"output       {target}")
        typer.echo(
            f"model        {m.get('model')} (fingerprint {m.get('fingerprint')}, mode {m.get('mode')})"
        )
        typer.echo(f"vectors      {info['vectors']} x {m.get('dim')} float32 in {info['shards']} shard(s)")
        typer.echo(f"failures     {len(info['failures'])}")
        for f in info["failures"][:10]:
            typer.echo(f"  {f['path']}: {f['error']}: {f['message']}")
        return
    from .models.cards import ModelCard
    from .models.registry import resolve

    if target.name.endswith(".card.json"):
        card = ModelCard.load(target)
    else:
        resolved = resolve(target)
        if resolved.card is None:
            from .embedder import Embedder

            card = Embedder(target).card  # infers the card of a bare legacy-layout file
        else:
            card = resolved.card
    typer.echo(json.dumps(card.to_dict(), indent=2))
    typer.echo(f"fingerprint: {card.fingerprint()}")


@app.callback()
def _root() -> None:
    """Image embeddings from CLIP-family models on ONNX Runtime."""


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning imgbeddings errors into one line + exit code."""
    try:
        code = app(args=argv, standalone_mode=False)  # returns typer.Exit's code instead of exiting
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
    if isinstance(code, int) and code:
        sys.exit(code)
