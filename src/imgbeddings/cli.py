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
) -> None:
    """Near-duplicate groups in OUTPUT, each around the image it keeps (nothing is moved unless asked)."""
    import json

    from .analysis.dedup import dedup
    from .analysis.dedup_files import move_to as move_files
    from .analysis.dedup_files import write_report

    result = dedup(output, threshold=threshold)
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
