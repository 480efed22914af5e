"""A dedup result as a report file, and its duplicates moved aside and back.

- :func:`write_report` / :func:`read_report`: one row per group member, ``path, group, keep,
  score``, as Parquet or CSV.
- :func:`move_to` moves every member that is not kept into a folder and writes a manifest (JSON)
  first; :func:`undo` reads it and moves the files back. Nothing is ever deleted or overwritten.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import OptionError

if TYPE_CHECKING:
    from .dedup import DedupResult


# --- report ---------------------------------------------------------------------------------


def write_report(result: DedupResult, path: str | os.PathLike[str]) -> Path:
    """Write one row per group member, ``path, group, keep, score`` (``keep``: the group's kept
    image), as Parquet or CSV by the file's extension. Parquet holds names that are not UTF-8
    with ``\\xNN`` escapes; CSV (UTF-8) holds their exact bytes."""
    from ..shards import atomic_write_bytes, atomic_write_table, readable

    target = Path(path)
    rows = result.rows()
    if target.suffix.lower() == ".parquet":
        import pyarrow as pa

        table = pa.table(
            {
                "path": pa.array([readable(r[0]) for r in rows], pa.string()),
                "group": pa.array([r[1] for r in rows], pa.int32()),
                "keep": pa.array([readable(r[2]) for r in rows], pa.string()),
                "score": pa.array([r[3] for r in rows], pa.float32()),
            }
        )
        atomic_write_table(table, target)
    elif target.suffix.lower() == ".csv":
        text = io.StringIO(newline="")
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["path", "group", "keep", "score"])
        writer.writerows(rows)
        atomic_write_bytes(target, text.getvalue().encode("utf-8", "surrogateescape"))
    else:
        raise OptionError(f"a report is .parquet or .csv, got {target.name!r}")
    return target


def read_report(path: str | os.PathLike[str]) -> list[tuple[str, int, str, float]]:
    """The rows :func:`write_report` wrote: ``(path, group, keep, score)``."""
    source = Path(path)
    if source.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(source)
        columns = [table.column(c).to_pylist() for c in ("path", "group", "keep", "score")]
        return list(zip(*columns, strict=True))
    with open(source, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        return [(p, int(g), keep, float(s)) for p, g, keep, s in reader]


# --- moving duplicates aside, and back ------------------------------------------------------

MANIFEST_VERSION = 1


@dataclass
class MoveReport:
    """What :func:`move_to` or :func:`undo` did: ``done`` ``(from, to)`` pairs, ``skipped``
    ``(path, reason)``, and the manifest that records it."""

    manifest: Path
    done: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _unique_target(target: Path, planned: set[Path]) -> Path:
    candidate, n = target, 0
    while candidate in planned or os.path.lexists(candidate):
        n += 1
        candidate = target.with_name(f"{target.stem}~{n}{target.suffix}")
    planned.add(candidate)
    return candidate


def _move_file(src: str, dst: str) -> None:
    """Move ``src`` to ``dst`` (a new name: never overwrites), across file systems too."""
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(dst):
        raise FileExistsError(f"{dst} exists")
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # another file system: copy, then remove the original
            raise
        tmp = f"{dst}.imgbeddings-tmp"
        shutil.copy2(src, tmp, follow_symlinks=False)
        if os.path.lexists(dst):
            os.unlink(tmp)
            raise FileExistsError(f"{dst} exists") from None
        os.replace(tmp, dst)
        os.unlink(src)


def _write_manifest(path: Path, record: dict[str, Any]) -> None:
    from ..shards import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(record, indent=1) + "\n").encode())


def move_to(
    result: DedupResult, dest: str | os.PathLike[str], *, manifest: str | os.PathLike[str] | None = None
) -> MoveReport:
    """Move every group member that is not kept into ``dest`` (nothing is deleted), under
    their path below the folder all group members share (``photos/2020/a.jpg`` with members
    in ``photos/`` goes to ``dest/2020/a.jpg``), and write a manifest (JSON, by default
    ``dest/imgbeddings-dedup-<UTC time>.json``) that :func:`undo` reads to move them back.

    A file already gone, or already inside ``dest``, is skipped; a name taken in ``dest`` gets
    ``~1``, ``~2``... The manifest lists every planned move before the first one, and what
    happened after the last (also when a move raises), so an interrupted run can be undone.
    """
    folder = Path(dest).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    record_path = (
        Path(manifest) if manifest else _unique_target(folder / f"imgbeddings-dedup-{stamp}.json", set())
    )
    moves = [(m["path"], g) for g in result.groups for m in g["members"][1:]]
    folders = {os.path.dirname(os.path.abspath(m["path"])) for g in result.groups for m in g["members"]}
    root = os.path.commonpath(sorted(folders)) if folders else os.sep
    entries, planned, report = [], set(), MoveReport(record_path)
    for src, g in moves:
        absolute = os.path.abspath(src)
        if Path(absolute).is_relative_to(folder):
            report.skipped.append((src, f"already inside {folder}"))
            continue
        target = _unique_target(folder / os.path.relpath(absolute, root), planned)
        score = next(m["score"] for m in g["members"] if m["path"] == src)
        entries.append(
            {"from": absolute, "to": str(target), "group": g["group"], "keep": g["keep"], "score": score}
        )
        entries[-1]["state"] = "planned"
    record = {"imgbeddings_dedup_manifest": MANIFEST_VERSION, "created": stamp, "dest": str(folder)}
    record.update(threshold=result.threshold, moves=entries)
    _write_manifest(record_path, record)
    try:
        for entry in entries:
            try:
                if not os.path.lexists(entry["from"]):
                    raise FileNotFoundError("no such file (moved or deleted since)")
                _move_file(entry["from"], entry["to"])
            except OSError as exc:
                entry["state"], entry["reason"] = "skipped", str(exc)
                report.skipped.append((entry["from"], str(exc)))
            else:
                entry["state"] = "moved"
                report.done.append((entry["from"], entry["to"]))
    finally:
        _write_manifest(record_path, record)
    return report


def undo(manifest: str | os.PathLike[str]) -> MoveReport:
    """Move the files a :func:`move_to` manifest records back where they were. A file is only
    moved back when it is where the manifest put it and its old name is free; anything else is
    skipped with the reason (nothing is overwritten or deleted). Moves of an interrupted run
    (still ``planned``) are judged by where the files are."""
    record_path = Path(manifest)
    try:
        record = json.loads(record_path.read_text())
        entries = record["moves"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OptionError(f"{record_path} is not a dedup manifest: {exc}") from exc
    report = MoveReport(record_path)
    try:
        for entry in entries:
            src, dst = entry["to"], entry["from"]
            if entry.get("state") not in ("moved", "planned"):
                continue  # never moved: its "to" may be another file
            try:
                if not os.path.lexists(src):
                    raise FileNotFoundError(f"not in {Path(src).parent} any more")
                _move_file(src, dst)
            except OSError as exc:
                if entry["state"] == "planned" and os.path.lexists(dst) and not os.path.lexists(src):
                    continue  # an interrupted run never moved it
                report.skipped.append((src, str(exc)))
            else:
                entry["state"] = "restored"
                report.done.append((src, dst))
    finally:
        _write_manifest(record_path, record)
    return report
