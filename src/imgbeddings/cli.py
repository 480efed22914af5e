"""The ``imgbeddings`` command line (Typer). The only module that prints or exits.

- Results go to stdout (an output path, a card as JSON, a model list); everything else to stderr.
- Usage errors (unknown option or command, missing or malformed value) print Typer's short
  message and exit 2, whatever Typer version (Typer runs in standalone mode and handles them).
- imgbeddings errors print one line and exit with the code of their class (``EXIT_CODES``);
  ``IMGBEDDINGS_DEBUG=1`` shows the traceback instead. Warnings print as one ``warning:`` line.
- ``embed`` logs each failed input on one line as it happens. On a terminal it shows a progress
  bar; when stderr is not a terminal (a log file, CI) it prints a plain progress line every
  ``PROGRESS_EVERY`` seconds instead. Lines are never wrapped (README, "Logs").
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from . import __version__, errors, settings

app = typer.Typer(
    name="imgbeddings",
    help="Image embeddings from CLIP-family models on ONNX Runtime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
# soft_wrap: never wrap a line (a grep for a file name must find the whole line)
err_console = Console(stderr=True, soft_wrap=True, highlight=False)

#: Seconds between plain progress lines when stderr is not a terminal.
PROGRESS_EVERY = 10.0

# Exit codes (README "Exit codes"). Most specific first: the first matching class decides.
EXIT_PARTIAL = 6  # the job finished, but some inputs failed (their rows say why)
EXIT_USAGE = 2
EXIT_CODES: list[tuple[type[BaseException], int, str]] = [
    (errors.AccuracyGateFailed, 4, "accuracy gate failed"),
    (errors.UnsupportedArchitecture, 3, "unsupported model"),
    (errors.ExportError, 3, "export failed"),
    (errors.ModelMismatch, 8, "output mismatch"),
    (errors.OutputLocked, 9, "output in use"),
    (errors.OutputError, 8, "output error"),
    (errors.ModelUnavailable, 5, "model unavailable"),
    (errors.ModelCorrupted, 5, "model corrupted"),
    (errors.ModelError, 5, "model error"),
    (errors.InputError, 7, "stopped at a bad input (--strict)"),
    (errors.OptionError, EXIT_USAGE, "invalid option"),
    (errors.MissingExtra, 1, "missing dependency"),
    (errors.ImgbeddingsError, 1, "error"),
]


def _stderr_is_terminal() -> bool:
    return err_console.is_terminal


def _message(exc: errors.ImgbeddingsError) -> str:
    """The one line a CLI user sees for ``exc`` (CLI advice where the library's is Python)."""
    if isinstance(exc, errors.ModelUnavailable) and exc.url:
        reason = exc.reason.rstrip(".")
        if not exc.filename:  # a whole checkpoint (export)
            return (
                f"cannot get checkpoint {exc.repo_id!r} (revision {exc.revision!r}): {reason}. To use a "
                f"local copy, download its files from {exc.url} into a folder and pass that folder as SRC"
            )
        return (
            f"cannot get model file {exc.filename!r} from Hugging Face repo {exc.repo_id!r} (revision "
            f"{exc.revision!r}): {reason}. To use a local copy, download {exc.url} and pass "
            f"--model /path/to/{Path(exc.filename).name}"
        )
    return str(exc)


def _show_warning(message: Any, category: type[Warning], *_: Any, **__: Any) -> None:
    err_console.print(f"warning: {message}", markup=False)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"imgbeddings {__version__}")
        raise typer.Exit()


class OutputFormat(str, Enum):
    parquet = "parquet"
    npy = "npy"


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
    """Image embeddings from CLIP-family models on ONNX Runtime."""


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
) -> None:
    """Export a CLIP/SigLIP checkpoint's vision tower to a verified ONNX model with its card."""
    from .export import export_model

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
        if not (self.enabled and total and _stderr_is_terminal()):
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
        from .store import readable

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
            help="Image files, folders, .txt files listing paths (one per line), or - for stdin.",
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
    threads: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            metavar="N", min=1, help="ONNX Runtime threads (default: the CPUs this process may use)."
        ),
    ] = None,
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
) -> None:
    """Embed images into OUTPUT as resumable Parquet shards.

    Re-running the same command finishes an interrupted job and embeds only files that are new
    or changed. Exit code 0 when every input has its vector, 6 when some failed, in this run or
    an earlier one (the rest is written and the failures are in OUTPUT/failures.parquet), 7 when
    --strict stopped at a bad input, 8 when OUTPUT holds vectors made another way (model,
    --exact, --normalize, --pca), 130 when interrupted (what was done is kept).
    """
    from .job import embed_files

    reporter = _Progress(progress)
    try:
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
            npy=fmt is OutputFormat.npy,
            normalize=normalize,
            pca=pca,
            int8_fastpath=int8_fastpath,
            decode_budget=decode_budget,
            wait=(math.inf if wait_timeout is None else wait_timeout) if wait else None,
            on_start=reporter.start,
            on_batch=reporter.batch,
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
            f"in {result.seconds:.1f} s ({rate:.1f} img/s; {result.workers} decode "
            f"worker(s), {result.threads} ONNX Runtime thread(s))",
            markup=False,
        )
        err_console.print(
            f"time split: decode {t.decode:.1f} s, geometry {t.geometry:.1f} s (summed over workers), "
            f"to tensor {t.tensor:.1f} s, inference {t.inference:.1f} s",
            markup=False,
        )
    if result.extreme_aspect:
        from .images.preprocess import EXTREME_ASPECT

        shown = ", ".join(f"{_readable_path(p)} ({a:.1f}:1)" for p, a in result.extreme_aspect[:5])
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
        str,
        typer.Argument(
            metavar="MODEL|OUTPUT",
            help="A model (name, .onnx, .card.json, export folder; ./NAME for a local one) or an output.",
        ),
    ],
) -> None:
    """Show a model's card, or an output folder's model, size and failures."""
    import json

    from .store import MANIFEST, readable, summarize

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
    from .models.cards import ModelCard
    from .models.registry import resolve_model

    if target.endswith(".card.json"):
        card = ModelCard.load(target)
    else:
        card = resolve_model(target).card
    typer.echo(json.dumps(card.to_dict(), indent=2))
    typer.echo(f"fingerprint: {card.fingerprint()}")


# --- using the vectors (imgbeddings.analysis; the [analysis] extra) -------------------------------


def _readable_path(path: str) -> str:
    from .store import readable

    return readable(path) or ""


@app.command("index")
def index_cmd(
    output: Annotated[str, typer.Argument(metavar="OUTPUT", help="An output folder of imgbeddings embed.")],
    kind: Annotated[
        str, typer.Option(metavar="KIND", help="auto | flat (exact) | hnsw | ivf | ivf-flat | ivf-pq.")
    ] = "auto",
    memory_mb: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            metavar="MB", min=1, help="The most memory the index may take (default: half of what is free)."
        ),
    ] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Build from scratch.")] = False,
) -> None:
    """Build the nearest-neighbour index of OUTPUT (or bring it up to date); search and dedup use it."""
    from .analysis.index import build_index

    info = build_index(output, kind=kind, memory_budget_mb=memory_mb, rebuild=rebuild)
    recall = f", recall@10 {info.recall:.3f}" if info.recall is not None else ""
    err_console.print(
        f"index {info.action or 'read'}: {info.kind}, {info.rows} vectors x {info.dim}{recall}, "
        f"{info.size_bytes / 1e6:.1f} MB (+{info.added} -{info.removed}) in {info.seconds:.1f} s",
        markup=False,
    )
    typer.echo(str(info.path))


@app.command("search")
def search_cmd(
    output: Annotated[str, typer.Argument(metavar="OUTPUT", help="An output folder of imgbeddings embed.")],
    queries: Annotated[
        list[str],
        typer.Argument(
            metavar="QUERY...", help="Image files (embedded with OUTPUT's model) or paths in OUTPUT."
        ),
    ],
    k: Annotated[int, typer.Option("-k", metavar="K", min=1, help="Results per query.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per query on stdout.")] = False,
    exclude_self: Annotated[
        bool, typer.Option("--exclude-self", help="Leave a stored query out of its results.")
    ] = False,
) -> None:
    """The most similar images in OUTPUT to each QUERY (cosine similarity)."""
    import json

    from .analysis.search import search

    results = search(output, queries, k, exclude_self=exclude_self)
    failed = 0
    for result in results:
        if not result.ok:
            failed += 1
            err_console.print(f"failed {_readable_path(result.query)}: {result.error}", markup=False)
        if as_json:
            typer.echo(json.dumps(result.to_json(), ensure_ascii=False))
            continue
        if result.ok:
            typer.echo(f"{_readable_path(result.query)}  ({result.source}, {result.method})")
            for hit in result.results:
                typer.echo(f"  {hit.rank:>3}  {hit.score:.4f}  {_readable_path(hit.path)}")
    if failed:
        raise typer.Exit(EXIT_PARTIAL)


@app.command("dedup")
def dedup_cmd(
    output: Annotated[str, typer.Argument(metavar="OUTPUT", help="An output folder of imgbeddings embed.")],
    threshold: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            metavar="T",
            min=-1,
            max=1,
            help="Cosine at or above which images are near-duplicates (default: calibrated).",
        ),
    ] = None,
    report: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            metavar="FILE", help="Write the groups to FILE.parquet or FILE.csv (path, group, keep, score)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per group on stdout.")] = False,
    move_to: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            metavar="DIR", help="Move the images that are not kept into DIR (writes a manifest to undo it)."
        ),
    ] = None,
    center: Annotated[
        bool, typer.Option("--center", help="Compare mean-centred vectors instead of raw cosine.")
    ] = False,
    sample: Annotated[
        int, typer.Option(metavar="N", min=1, help="Images whose altered copies calibrate the threshold.")
    ] = 64,
    model: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--model",
            "-m",
            metavar="NAME|FILE",
            help="The model OUTPUT was made with, for calibration (default: the one it records).",
        ),
    ] = None,
    pca: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(metavar="FILE", exists=True, dir_okay=False, help="The PCA OUTPUT was made with."),
    ] = None,
) -> None:
    """Near-duplicate groups in OUTPUT, each around the image it keeps (nothing is moved unless asked).

    Exit code 0; 8 when OUTPUT is empty or the model given differs from OUTPUT's.
    """
    import json

    from .analysis.dedup import dedup
    from .analysis.dedup_files import move_to as move_files
    from .analysis.dedup_files import write_report

    embedder = None
    if threshold is None and (model is not None or pca is not None):
        from .analysis.query import embedder_for

        embedder = embedder_for(output, model=model, pca=pca)
    result = dedup(output, threshold=threshold, center=center, sample=sample, embedder=embedder)
    how = "given" if result.calibration is None else "calibrated on the collection"
    err_console.print(
        f"threshold {result.threshold:.4f} ({how}); {result.compared} images compared ({result.method}), "
        f"{len(result.groups)} group(s), {result.duplicates} near-duplicate(s)",
        markup=False,
    )
    if result.calibration is not None and not result.calibration.separated:
        err_console.print(
            "warning: altered copies and distinct images overlap in similarity: the threshold is a "
            "compromise; check the groups or pass --threshold",
            markup=False,
        )
    for group in result.groups:
        if as_json:
            typer.echo(json.dumps(group, ensure_ascii=False))
        else:
            typer.echo(f"group {group['group']}: keep {_readable_path(group['keep'])}")
            for member in group["members"][1:]:
                typer.echo(f"  {member['score']:.4f}  {_readable_path(member['path'])}")
    if report is not None:
        err_console.print(f"report: {write_report(result, report)}", markup=False)
    if move_to is not None:
        moved = move_files(result, move_to)
        err_console.print(
            f"moved {len(moved.done)} file(s) to {move_to} ({len(moved.skipped)} skipped); undo with the "
            f"manifest {moved.manifest}",
            markup=False,
        )


@app.command("dedup-undo")
def dedup_undo_cmd(
    manifest: Annotated[
        Path,
        typer.Argument(
            metavar="MANIFEST", exists=True, dir_okay=False, help="The manifest dedup --move-to wrote."
        ),
    ],
) -> None:
    """Move the files a dedup --move-to run moved back where they were (nothing is overwritten).

    Exit code 0 when every file is back, 6 when some were skipped (each is named with the reason).
    """
    from .analysis.dedup_files import undo

    report = undo(manifest)
    for src, reason in report.skipped:
        err_console.print(f"skipped {_readable_path(src)}: {reason}", markup=False)
    err_console.print(f"moved {len(report.done)} file(s) back, {len(report.skipped)} skipped", markup=False)
    if report.skipped:
        raise typer.Exit(EXIT_PARTIAL)


@app.command("cluster")
def cluster_cmd(
    output: Annotated[str, typer.Argument(metavar="OUTPUT", help="An output folder of imgbeddings embed.")],
    k: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--k", "-k", metavar="N", min=1, help="Number of clusters (k-means)."),
    ] = None,
    auto: Annotated[
        bool, typer.Option("--auto", help="Find the clusters and their number (HDBSCAN on a 5-d UMAP).")
    ] = False,
    out_file: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--output", "-o", metavar="FILE", help="Clusters file (default: OUTPUT/clusters.parquet)."
        ),
    ] = None,
    sheets: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            metavar="DIR", help="Folder for one contact sheet PNG per cluster (default: OUTPUT/clusters)."
        ),
    ] = None,
    no_sheets: Annotated[bool, typer.Option("--no-sheets", help="Write no contact sheets.")] = False,
    per_sheet: Annotated[int, typer.Option(metavar="N", min=1, help="Thumbnails per sheet.")] = 36,
    min_cluster_size: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(metavar="N", min=2, help="With --auto: smallest cluster (default: from N images)."),
    ] = None,
    seed: Annotated[int, typer.Option(metavar="N", help="Random state (same seed, same clusters).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per cluster on stdout.")] = False,
) -> None:
    """Cluster OUTPUT's images (k-means with --k, HDBSCAN with --auto), a contact sheet per cluster.

    Prints one line per cluster: id, size, contact sheet (tab-separated); --json for objects.

    Exit code 0; 2 for neither or both of --k and --auto; 8 when OUTPUT holds too few vectors.
    """
    import json

    from .analysis.cluster import cluster, contact_sheets, write_clusters
    from .analysis.vectors import VectorSet

    if (k is None) == (not auto):
        raise errors.OptionError("give either --k N (k-means) or --auto (HDBSCAN), not both and not neither")
    started = time.perf_counter()
    vs = VectorSet.from_output(output)
    result = cluster(vs, k=k, auto=auto, seed=seed, min_cluster_size=min_cluster_size)
    target = write_clusters(result, out_file or Path(output) / "clusters.parquet")
    written = (
        [] if no_sheets else contact_sheets(result, sheets or Path(output) / "clusters", per_sheet=per_sheet)
    )
    by_id = {(-1 if p.stem == "noise" else int(p.stem.split("_")[1])): p for p in written}
    noise = f", {result.n_noise} noise" if auto else ""
    err_console.print(
        f"{result.method}: {result.n_clusters} cluster(s){noise} over {len(result)} images in "
        f"{time.perf_counter() - started:.1f} s; clusters: {target}"
        + (f"; contact sheets: {written[0].parent}" if written else ""),
        markup=False,
    )
    for cluster_id, size in result.sizes().items():
        sheet = by_id.get(cluster_id)
        if as_json:
            nearest = [result.paths[i] for i in result.members(cluster_id)[:5]]
            record = {"cluster": cluster_id, "size": size, "sheet": str(sheet) if sheet else None}
            typer.echo(json.dumps(record | {"nearest": nearest}, ensure_ascii=False))
        else:
            name = "noise" if cluster_id < 0 else str(cluster_id)
            typer.echo(f"{name}\t{size}\t{sheet or ''}")


class ColorBy(str, Enum):
    cluster = "cluster"
    label = "label"
    folder = "folder"
    none = "none"


@app.command("map")
def map_cmd(
    output: Annotated[str, typer.Argument(metavar="OUTPUT", help="An output folder of imgbeddings embed.")],
    png: Annotated[Path, typer.Option("--output", "-o", metavar="FILE.png", help="The map to draw.")],
    color_by: Annotated[
        ColorBy,
        typer.Option(
            help="cluster (k-means with --k, or --labels FILE of imgbeddings cluster) | label (--labels "
            "FILE) | folder (parent folder) | none.",
        ),
    ] = ColorBy.cluster,
    labels: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            metavar="FILE",
            exists=True,
            dir_okay=False,
            help="Parquet with path and label (classify predict) or cluster (cluster) columns.",
        ),
    ] = None,
    k: Annotated[
        int, typer.Option("--k", "-k", metavar="N", min=1, help="Clusters for --color-by cluster.")
    ] = 8,
    sample: Annotated[
        int, typer.Option(metavar="N", min=0, help="Most points mapped, sampled with --seed (0: all).")
    ] = 10_000,
    seed: Annotated[int, typer.Option(metavar="N", help="Random state of the sample, PCA and UMAP.")] = 0,
    thumbnails: Annotated[
        bool, typer.Option("--thumbnails/--no-thumbnails", help="Draw image thumbnails (else dots only).")
    ] = True,
    coords: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(metavar="FILE", help="Also write the 2-D coordinates (Parquet: path, x, y, group)."),
    ] = None,
    html: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(metavar="FILE", help="Also write a standalone HTML map (paths shown on hover)."),
    ] = None,
    title: Annotated[Optional[str], typer.Option(metavar="TEXT", help="Title above the map.")] = None,  # noqa: UP045
) -> None:
    """Draw a 2-D map (UMAP) of OUTPUT's images: thumbnails at their positions, coloured by group."""
    from .analysis.mapping import make_map, read_labels
    from .analysis.vectors import VectorSet

    if color_by is ColorBy.label and labels is None:
        raise errors.OptionError("--color-by label needs --labels FILE (a predictions or clusters file)")
    if png.suffix.lower() != ".png":
        raise errors.OptionError(f"the map is a PNG: give -o a .png name, not {png.name!r}")
    started = time.perf_counter()
    vs = VectorSet.from_output(output)
    mode: Any = None if color_by is ColorBy.none else color_by.value
    mapping_labels = read_labels(labels) if labels is not None and mode in ("cluster", "label") else None
    if mode == "cluster" and mapping_labels is not None:
        mode = "label"
    result = make_map(
        vs,
        png,
        color_by=mode,
        labels=mapping_labels,
        sample=sample or None,
        seed=seed,
        thumbnails=thumbnails,
        k=k,
        title=title,
        coords_out=coords,
        html_out=html,
    )
    shown = (
        f"{len(result)} of {result.total} images (sample, seed {seed})"
        if result.sampled
        else (f"{len(result)} images")
    )
    groups = f", {len(set(result.groups))} group(s)" if result.groups else ""
    err_console.print(
        f"map: {shown}{groups}, {result.thumbnails} thumbnail(s), in {time.perf_counter() - started:.1f} s"
        + (f"; coordinates: {coords}" if coords else "")
        + (f"; html: {html}" if html else ""),
        markup=False,
    )
    typer.echo(str(png))


classify_app = typer.Typer(
    name="classify",
    help="Linear-probe classifiers: train on a folder per class, predict on an output.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(classify_app)


def _confusion_lines(classes: list[str], confusion: list[list[int]]) -> list[str]:
    width = max(8, *(len(c) for c in classes))
    head = " " * width + "  " + "  ".join(f"{c[:width]:>{width}}" for c in classes)
    rows = [
        f"{c:>{width}}  " + "  ".join(f"{n:>{width}}" for n in row)
        for c, row in zip(classes, confusion, strict=True)
    ]
    return ["confusion (rows: true class, columns: predicted; cross-validated):", head, *rows]


@classify_app.command("train")
def classify_train_cmd(
    folder: Annotated[
        str,
        typer.Argument(
            metavar="DIR|OUTPUT",
            help="A folder with one sub-folder of images per class, or an output embedded from one.",
        ),
    ],
    probe_file: Annotated[
        Path, typer.Option("--output", "-o", metavar="FILE.json", help="The probe to write.")
    ],
    model: Annotated[
        str,
        typer.Option("--model", "-m", metavar="NAME|REPO|FILE", help="Model to embed DIR with."),
    ] = "patch32_v1",
    like: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            metavar="OUTPUT",
            help="Embed DIR the way OUTPUT was made (model, mode, normalisation, PCA): the probe then "
            "applies to OUTPUT.",
        ),
    ] = None,
    fast: Annotated[
        bool, typer.Option("--fast/--exact", help="Preprocessing mode (as for imgbeddings embed).")
    ] = True,
    normalize: Annotated[bool, typer.Option("--normalize", help="L2-normalise the vectors.")] = False,
    pca: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(metavar="FILE", exists=True, dir_okay=False, help="Project with a saved PCA (.npz)."),
    ] = None,
    balanced: Annotated[
        bool, typer.Option("--balanced", help="Weight classes inversely to their sizes.")
    ] = False,
    folds: Annotated[int, typer.Option(metavar="N", min=2, help="Cross-validation folds.")] = 5,
    seed: Annotated[int, typer.Option(metavar="N", help="Fold shuffling and solver random state.")] = 0,
) -> None:
    """Train a linear probe (logistic regression, C chosen by cross-validation) on one folder of
    images per class; prints its cross-validated accuracy and confusion matrix.

    Exit code 0; 6 when some images failed to embed (the probe is written without them; each is
    named); 2 for fewer than 2 classes or a class with fewer than 2 images.
    """
    from .analysis.classify import train_probe
    from .analysis.vectors import VectorSet
    from .store import MANIFEST

    if Path(folder, MANIFEST).is_file():
        if like is not None or pca is not None:
            raise errors.OptionError(
                "DIR is an embedded output: its vectors are used as they are (drop --like/--pca)"
            )
        probe = train_probe(
            VectorSet.from_output(folder),
            labels="folder",
            class_weight="balanced" if balanced else None,
            folds=folds,
            seed=seed,
        )
    else:
        if like is not None:
            from .analysis.query import embedder_for

            embedder = embedder_for(like, pca=pca)
        else:
            from .embedder import Embedder

            embedder = Embedder(model, mode="fast" if fast else "exact", normalize=normalize, pca=pca)
        probe = train_probe(
            folder,
            embedder=embedder,
            class_weight="balanced" if balanced else None,
            folds=folds,
            seed=seed,
            progress=_stderr_is_terminal(),
        )
    for f in probe.failures:
        err_console.print(f"failed {_readable_path(f.source)}: {f.error}: {f.message}", markup=False)
    counts = ", ".join(f"{c} {n}" for c, n in probe.counts.items())
    err_console.print(
        f"probe: {len(probe.classes)} classes ({counts}), C={probe.C:g}, cross-validated accuracy "
        f"{probe.cv_accuracy:.3f} ({probe.cv_folds} folds)",
        markup=False,
    )
    for line in _confusion_lines(probe.classes, probe.confusion or []):
        err_console.print(line, markup=False)
    typer.echo(str(probe.save(probe_file)))
    if probe.failures:
        err_console.print(f"{len(probe.failures)} image(s) failed and were left out", markup=False)
        raise typer.Exit(EXIT_PARTIAL)


@classify_app.command("predict")
def classify_predict_cmd(
    output: Annotated[str, typer.Argument(metavar="OUTPUT", help="An output folder of imgbeddings embed.")],
    probe_file: Annotated[
        Path,
        typer.Option("--probe", metavar="FILE.json", exists=True, dir_okay=False, help="A trained probe."),
    ],
    out_file: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--output",
            "-o",
            metavar="FILE.parquet",
            help="Write path, label, probability and p:<class> columns (default: print path<TAB>label"
            "<TAB>probability lines).",
        ),
    ] = None,
) -> None:
    """Label OUTPUT's images with a trained probe.

    Exit code 0; 8 when OUTPUT's vectors were made differently from the probe's training vectors.
    """
    from collections import Counter

    from .analysis.classify import Probe, write_predictions
    from .analysis.vectors import VectorSet

    probe = Probe.load(probe_file)
    prediction = probe.predict(VectorSet.from_output(output))
    tally = Counter(prediction.labels)
    err_console.print(
        f"predicted {len(prediction)} image(s): "
        + ", ".join(f"{c} {tally.get(c, 0)}" for c in probe.classes),
        markup=False,
    )
    if out_file is not None:
        typer.echo(str(write_predictions(prediction, out_file)))
        return
    for path, label, p in zip(
        prediction.paths, prediction.labels, prediction.confidence.tolist(), strict=True
    ):
        typer.echo(f"{_readable_path(path)}\t{label}\t{p:.4f}")


pca_app = typer.Typer(
    name="pca",
    help="PCA of an output's vectors (apply it with imgbeddings embed --pca).",
    no_args_is_help=True,
)
app.add_typer(pca_app)


@pca_app.command("fit")
def pca_fit_cmd(
    output: Annotated[str, typer.Argument(metavar="OUTPUT", help="An output folder embedded without --pca.")],
    dim: Annotated[int, typer.Option(metavar="N", min=1, help="Components to keep.")] = 128,
    pca_file: Annotated[
        Path, typer.Option("--output", "-o", metavar="FILE.npz", help="The PCA to write.")
    ] = Path("pca.npz"),
    whiten: Annotated[bool, typer.Option("--whiten", help="Scale components to unit variance.")] = False,
    sample: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(metavar="N", min=1, help="Fit on N rows drawn with --seed (default: all)."),
    ] = None,
    seed: Annotated[int, typer.Option(metavar="N", help="Random state.")] = 0,
) -> None:
    """Fit a PCA on OUTPUT's vectors and save it as a portable .npz (arrays only, no pickle).

    Apply it when embedding: imgbeddings embed ... --pca FILE.npz (and Embedder(pca=FILE) in
    Python); the original imgbeddings(pca=...) reads the file too.
    """
    from .analysis.reduce import fit_pca_on
    from .analysis.vectors import VectorSet

    vs = VectorSet.from_output(output)
    model = fit_pca_on(vs, dim, whiten=whiten, sample=sample, seed=seed)
    written = model.save(pca_file)
    explained = model.total_explained_variance
    err_console.print(
        f"PCA {model.in_dim} -> {model.out_dim}"
        + (" (whitened)" if whiten else "")
        + f" fitted on {len(vs) if sample is None else min(sample, len(vs))} vectors, explains "
        f"{100 * (explained or 0):.1f} % of their variance; apply it with: imgbeddings embed ... "
        f"--pca {written}",
        markup=False,
    )
    typer.echo(str(written))


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning imgbeddings errors into one line + exit code.

    Typer runs in standalone mode, so usage errors, ``--help``, ``typer.Exit`` and Ctrl-C are
    handled by Typer itself (exit 2, 0, the code, 130) with any Typer/Click version.
    """
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        app(args=argv, prog_name="imgbeddings")
    except errors.ImgbeddingsError as exc:
        if settings.debug():
            raise
        code, label = next((c, lbl) for cls, c, lbl in EXIT_CODES if isinstance(exc, cls))
        err_console.print(f"{label}: {_message(exc)}", markup=False)
        err_console.print("Set IMGBEDDINGS_DEBUG=1 for the full traceback.", style="dim", markup=False)
        sys.exit(code)
    finally:
        warnings.showwarning = previous
