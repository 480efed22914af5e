"""The ``imgbeddings`` Typer app, its exit codes and its entry point (``main``).

The commands live beside it (:mod:`.embed`: export, embed, models, info; :mod:`.analysis`:
index, search, dedup, cluster, map, classify, pca) and register on :data:`app`. The ``cli``
package is the only code that prints or exits:

- Results go to stdout (an output path, a card as JSON, a model list); everything else to stderr.
- Usage errors (unknown option or command, missing or malformed value) print Typer's short
  message and exit 2, whatever Typer version (Typer runs in standalone mode and handles them).
- imgbeddings errors print one line and exit with the code of their class (``EXIT_CODES``);
  ``IMGBEDDINGS_DEBUG=1`` shows the traceback instead. Warnings print as one ``warning:`` line.
  Lines are never wrapped (README, "Logs").
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from .. import __version__, errors, settings

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
    (errors.StoreUnavailable, 1, "store unavailable"),
    (errors.OptionError, EXIT_USAGE, "invalid option"),
    (errors.MissingExtra, 1, "missing dependency"),
    (errors.ImgbeddingsError, 1, "error"),
]


#: The --threads option of the commands that run a model.
ThreadsOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(metavar="N", min=1, help="ONNX Runtime threads (default: the CPUs this process may use)."),
]


def stderr_is_terminal() -> bool:
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


def readable_path(path: str) -> str:
    """A path as printed: undecodable bytes shown as ``\\xNN``."""
    from ..store import readable

    return readable(path) or ""


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
    """Image embeddings from CLIP-family models on ONNX Runtime."""


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
