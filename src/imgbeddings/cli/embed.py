"""Commands that make and inspect embeddings: ``export``, ``embed``, ``models``, ``info``.

``embed`` logs each failed input on one line as it happens. On a terminal it shows a progress
bar; when stderr is not a terminal (a log file, CI) it prints a plain progress line every
``PROGRESS_EVERY`` seconds instead.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .. import errors
from .app import EXIT_PARTIAL, ThreadsOpt, app, err_console, readable_path, stderr_is_terminal

#: Seconds between plain progress lines when stderr is not a terminal.
PROGRESS_EVERY = 10.0


class Engine(str, Enum):
    local = "local"
    ray = "ray"


class OutputFormat(str, Enum):
    parquet = "parquet"
    npy = "npy"


@app.command("export")
def export_cmd(
    src: Annotated[
        str, typer.Argument(metavar="SRC", help="Hugging Face model id or local checkpoint folder.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", metavar="DIR", help="Output folder (created).")],
    kind: Annotated[
        str,
        typer.Option(
            metavar="KIND",
            help="projection (CLIP image-text space) | legacy (original imgbeddings pooling) | pooled.",
        ),
    ] = "projection",
    legacy_layers: Annotated[
        Optional[int],  # noqa: UP045 - typer needs Optional on 3.10
        typer.Option(
            metavar="N",
            help="Hidden states pooled by --kind legacy (default: 6 for patch-32 models, else 1).",
        ),
    ] = None,
    quantize: Annotated[
        str,
        typer.Option(
            metavar="RECIPE",
            help="int8 (default: static scales, batch-invariant) | int8-dynamic | int8-original (QUInt8, "
            "the 0.1.0 recipe) | int8-plain | none.",
        ),
    ] = "int8",
    resize_mode: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            metavar="MODE",
            help="Override the card's geometry: pad | crop | squash (default: from the checkpoint).",
        ),
    ] = None,
    name: Annotated[Optional[str], typer.Option(metavar="NAME", help="Model name in the card.")] = None,  # noqa: UP045
    revision: Annotated[Optional[str], typer.Option(metavar="REV", help="Hub revision of SRC.")] = None,  # noqa: UP045
    opset: Annotated[int, typer.Option(metavar="N", help="ONNX opset.")] = 20,
    min_int8_cosine: Annotated[
        float, typer.Option(metavar="X", help="Fail if INT8 vs fp32 cosine falls below this.")
    ] = 0.99,
    min_fp32_cosine: Annotated[
        float, typer.Option(metavar="X", help="Fail if ONNX vs PyTorch cosine falls below this.")
    ] = 0.99999,
    text: Annotated[
        bool,
        typer.Option(
            "--text",
            help="Also export the text tower (text_model.onnx, its tokenizer, text card) for text "
            "search and zero-shot labels.",
        ),
    ] = False,
) -> None:
    """Export a CLIP/SigLIP checkpoint's vision tower to a verified ONNX model with its card."""
    from ..export import export_model

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("imgbeddings.export")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # onnxruntime's quantiser configures the root logger: print once
    try:
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
            text=text,
        )
    finally:
        log.removeHandler(handler)
        log.propagate = True
    typer.echo(str(result.model_path))


class _Progress:
    """Progress and failure lines of one ``embed`` run (see the module docstring)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.task: Any = None
        self.total = self.done = self.failed = 0
        self.t0 = self.last = time.perf_counter()

    def start(self, total: int, skipped: int) -> None:
        self.total, self.t0 = total, time.perf_counter()
        self.last = self.t0
        if skipped and total:
            err_console.print(f"{skipped} file(s) already done: skipped", markup=False)
        if not (self.enabled and total and stderr_is_terminal()):
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]embedding"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} img/s"),
            TextColumn("[red]{task.fields[failed]} failed"),
            TimeRemainingColumn(),
            console=err_console,
            transient=False,
        )
        self.bar.start()
        self.task = self.bar.add_task("embed", total=total, rate="-", failed=0)

    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.t0, 1e-9)

    def batch(self, done: int, failures: list[errors.Failure]) -> None:
        self.done += done
        self.failed += len(failures)
        from ..store import readable

        for f in failures:
            err_console.print(f"failed {readable(f.source)}: {f.error}: {f.message}", markup=False)
        if self.bar is not None:
            self.bar.update(self.task, advance=done, rate=f"{self.rate():.1f}", failed=self.failed)
        elif self.enabled and time.perf_counter() - self.last >= PROGRESS_EVERY and self.done < self.total:
            self.last = time.perf_counter()
            rate = self.rate()
            eta = time.strftime("%H:%M:%S", time.gmtime((self.total - self.done) / rate)) if rate else "?"
            err_console.print(
                f"progress {self.done}/{self.total} ({100 * self.done / self.total:.0f} %), "
                f"{rate:.1f} img/s, ETA {eta}, {self.failed} failed",
                markup=False,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@app.command("embed")
def embed_cmd(
    paths: Annotated[
        list[str],
        typer.Argument(
            metavar="PATH...",
            help="Image files, folders, .txt files listing paths (one per line), URIs "
            "(s3://bucket/prefix/, gs://..., through fsspec), or - for stdin.",
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="DIR", help="Output folder (created, or resumed).")
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", metavar="NAME|REPO|FILE", help="Built-in name, hub repo, or .onnx file."
        ),
    ] = "patch32_v1",
    batch_size: Annotated[int, typer.Option(metavar="N", min=1, help="Images per ONNX Runtime call.")] = 32,
    workers: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            metavar="N", min=0, help="Decode worker processes (default: one per CPU; 0 = decode in-process)."
        ),
    ] = None,
    threads: ThreadsOpt = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Walk sub-folders too.")] = False,
    fast: Annotated[
        bool,
        typer.Option(
            "--fast/--exact", help="fast: reduced-scale JPEG decoding (default); exact: reference pixels."
        ),
    ] = True,
    normalize: Annotated[bool, typer.Option("--normalize", help="L2-normalise the vectors.")] = False,
    pca: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            metavar="FILE", exists=True, dir_okay=False, help="Project the vectors with a saved PCA (.npz)."
        ),
    ] = None,
    fmt: Annotated[
        OutputFormat,
        typer.Option(
            "--format",
            help="parquet (shards) | npy (shards + embeddings.npy/paths.txt, kept current by later runs).",
        ),
    ] = OutputFormat.parquet,
    strict: Annotated[
        bool, typer.Option("--strict", help="Stop at the first bad input (exit code 7).")
    ] = False,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Embed again files that failed in an earlier run.")
    ] = False,
    shard_size: Annotated[
        int, typer.Option(metavar="N", min=1, help="Rows per Parquet shard (the most a kill can lose).")
    ] = 4096,
    wait: Annotated[
        bool, typer.Option("--wait", help="If another run is writing OUTPUT, wait for it instead of exit 9.")
    ] = False,
    wait_timeout: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(metavar="SECONDS", min=0, help="With --wait: give up after this long (exit 9)."),
    ] = None,
    decode_budget: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            metavar="MP",
            min=0.001,
            help="Megapixels decoded at once across workers (default: from the memory available).",
        ),
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show progress on stderr.")
    ] = True,
    int8_fastpath: Annotated[
        bool,
        typer.Option(
            "--int8-fastpath/--no-int8-fastpath",
            help="Run original-format INT8 files on the faster kernels (identical vectors).",
        ),
    ] = True,
    engine: Annotated[
        Engine,
        typer.Option(help="local (this machine) | ray (a Ray cluster; the [ray] extra; same output)."),
    ] = Engine.local,
    address: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            metavar="auto|ray://HOST:PORT", help="With --engine ray: the cluster (default: a local one)."
        ),
    ] = None,
    actors: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(metavar="N", min=1, help="With --engine ray: actors (default: the cluster's CPUs / K)."),
    ] = None,
    cpus_per_actor: Annotated[
        int,
        typer.Option(metavar="K", min=1, help="With --engine ray: CPUs (ONNX Runtime threads) per actor."),
    ] = 1,
) -> None:
    """Embed images into OUTPUT as resumable Parquet shards.

    Re-running the same command finishes an interrupted job and embeds only files that are new
    or changed. Exit code 0 when every input has its vector, 6 when some failed, in this run or
    an earlier one (the rest is written and the failures are in OUTPUT/failures.parquet), 7 when
    --strict stopped at a bad input, 8 when OUTPUT holds vectors made another way (model,
    --exact, --normalize, --pca), 130 when interrupted (what was done is kept).
    """
    from ..job import embed_files

    reporter = _Progress(progress)
    common: dict[str, Any] = dict(
        model=model,
        mode="fast" if fast else "exact",
        batch_size=batch_size,
        recursive=recursive,
        retry_failed=retry_failed,
        shard_size=shard_size,
        npy=fmt is OutputFormat.npy,
        normalize=normalize,
        pca=pca,
        wait=(math.inf if wait_timeout is None else wait_timeout) if wait else None,
        on_start=reporter.start,
        on_batch=reporter.batch,
    )
    if engine is Engine.ray:
        local_only = {"--strict": strict, "--workers": workers is not None, "--threads": threads is not None,
                      "--decode-budget": decode_budget is not None}  # fmt: skip
        given = [name for name, on in local_only.items() if on]
        if given:
            raise errors.OptionError(
                f"{', '.join(given)}: options of the local engine; with --engine ray use --actors and "
                "--cpus-per-actor"
            )
    elif address is not None or actors is not None or cpus_per_actor != 1:
        raise errors.OptionError("--address, --actors and --cpus-per-actor are for --engine ray")
    try:
        if engine is Engine.ray:
            from ..ray_engine import embed_files_ray

            result = embed_files_ray(
                paths,
                output,
                actors=actors,
                cpus_per_actor=cpus_per_actor,
                address=address,
                quiet=not os.environ.get("IMGBEDDINGS_DEBUG"),  # our own progress and summary
                **common,
            )
        else:
            result = embed_files(
                paths,
                output,
                workers=workers,
                threads=threads,
                strict=strict,
                int8_fastpath=int8_fastpath,
                decode_budget=decode_budget,
                **common,
            )
    except KeyboardInterrupt:
        reporter.close()
        err_console.print(
            f"interrupted: the {reporter.done} input(s) done in this run are kept in {output} "
            f"({reporter.failed} of them failed); run the same command again to finish the rest",
            markup=False,
        )
        raise typer.Exit(130) from None
    finally:
        reporter.close()
    c, t = result.counts, result.timings
    rate = result.images_per_second
    if rate is None:
        err_console.print(f"nothing to embed: {c.skipped} file(s) already done in {output}", markup=False)
    else:
        err_console.print(
            f"embedded {c.embedded}, skipped {c.skipped} (already done), failed {c.failed} "
            f"in {result.seconds:.1f} s ({rate:.1f} img/s; "
            + (
                f"{result.workers} Ray actor(s) x {result.threads} CPU(s))"
                if engine is Engine.ray
                else f"{result.workers} decode worker(s), {result.threads} ONNX Runtime thread(s))"
            ),
            markup=False,
        )
        if engine is Engine.local:  # the Ray engine's work happens in its actors: no split here
            err_console.print(
                f"time split: decode {t.decode:.1f} s, geometry {t.geometry:.1f} s (summed over workers), "
                f"to tensor {t.tensor:.1f} s, inference {t.inference:.1f} s",
                markup=False,
            )
    if result.extreme_aspect:
        from ..images.preprocess import EXTREME_ASPECT

        shown = ", ".join(f"{readable_path(p)} ({a:.1f}:1)" for p, a in result.extreme_aspect[:5])
        more = f" and {len(result.extreme_aspect) - 5} more" if len(result.extreme_aspect) > 5 else ""
        err_console.print(
            f"warning: {len(result.extreme_aspect)} image(s) are more than {EXTREME_ASPECT:g}:1 "
            f"(long side to short): the model sees a square (padded or cropped), so their vectors are "
            f"less reliable (README, Design notes): {shown}{more}",
            markup=False,
        )
    if c.failed:
        err_console.print(f"{c.failed} input(s) failed: see {output / 'failures.parquet'}", markup=False)
    if result.failed_before:
        err_console.print(
            f"{result.failed_before} input(s) failed in an earlier run and are unchanged: not retried "
            f"(--retry-failed retries them; see {output / 'failures.parquet'})",
            markup=False,
        )
    typer.echo(str(output))
    if not result.complete:
        raise typer.Exit(EXIT_PARTIAL)


@app.command("models")
def models_cmd() -> None:
    """List the built-in models and whether each is in the local cache."""
    from ..hub import cached_model_file
    from ..models.registry import builtin_cards

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
        str,
        typer.Argument(
            metavar="MODEL|OUTPUT",
            help="A model (name, .onnx, .card.json, export folder; ./NAME for a local one) or an output.",
        ),
    ],
) -> None:
    """Show a model's card, or an output folder's model, size and failures."""
    import json

    from ..store import MANIFEST, readable, summarize

    folder = Path(target)  # a string, not a Path parameter: "./patch32_v1" must keep its "./"
    if folder.is_dir() and (folder / MANIFEST).is_file():
        info = summarize(folder)
        m = info["manifest"]
        ident = m.get("identity", {})
        typer.echo(f"output       {target}")
        typer.echo(f"model        {m.get('model')} (card {ident.get('card', m.get('fingerprint'))})")
        extra = (", L2-normalised" if ident.get("normalize") else "") + (
            f", PCA {ident['pca']}" if ident.get("pca") else ""
        )
        typer.echo(f"made with    mode {m.get('mode')}{extra} (fingerprint {m.get('fingerprint')})")
        typer.echo(f"vectors      {info['vectors']} x {m.get('dim')} float32 in {info['shards']} shard(s)")
        typer.echo(f"failures     {len(info['failures'])}")
        for f in info["failures"][:10]:
            typer.echo(f"  {readable(f.source)}: {f.error}: {f.message}")
        if info.get("writer"):
            w = info["writer"]
            typer.echo(
                f"writer       PID {w.get('pid')} on {w.get('host')}, writing since {w.get('started')}"
            )
        if info.get("quarantined"):
            typer.echo(f"quarantined  {len(info['quarantined'])} file(s) in {folder / 'quarantine'}")
        for name in info.get("stale", []):
            typer.echo(
                f"stale        {name} (out of date: rebuilt by the next embed; load() reads the shards)"
            )
        for name, reason in info.get("damaged", []):
            typer.echo(f"damaged      {name}: {reason}")
        if info.get("damaged"):
            err_console.print(
                f"output error: {len(info['damaged'])} damaged shard(s) in {folder}: run imgbeddings embed "
                "again with the same inputs and output; it moves them to quarantine/ and embeds their "
                "inputs again",
                markup=False,
            )
            raise typer.Exit(8)
        return
    from ..models.cards import ModelCard
    from ..models.registry import resolve_model

    if target.endswith(".card.json"):
        card = ModelCard.load(target)
    else:
        card = resolve_model(target).card
    typer.echo(json.dumps(card.to_dict(), indent=2))
    typer.echo(f"fingerprint: {card.fingerprint()}")
