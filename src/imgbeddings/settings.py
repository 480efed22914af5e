"""Environment variables and machine facts, resolved lazily (never at import time).

Tests and users may set ``HF_HUB_OFFLINE`` or ``IMGBEDDINGS_*`` after importing the package;
every function here reads the environment when called.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

TRUE_VALUES = {"1", "true", "yes", "on", "y", "t"}


def env_flag(name: str, default: bool = False) -> bool:
    """True when the environment variable ``name`` is set to a true-ish value."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in TRUE_VALUES


def is_offline() -> bool:
    """Offline mode: ``HF_HUB_OFFLINE`` (or ``IMGBEDDINGS_OFFLINE``) is true."""
    return env_flag("HF_HUB_OFFLINE") or env_flag("IMGBEDDINGS_OFFLINE")


def hub_endpoint() -> str | None:
    """The Hugging Face endpoint to use, or None for huggingface_hub's default."""
    return os.environ.get("IMGBEDDINGS_HF_ENDPOINT") or os.environ.get("HF_ENDPOINT") or None


def cache_dir() -> Path | None:
    """Cache folder for model downloads (``IMGBEDDINGS_CACHE``), or None for the HF cache."""
    value = os.environ.get("IMGBEDDINGS_CACHE")
    return Path(value).expanduser() if value else None


def int8_fastpath() -> bool:
    """Run original-format INT8 files on the fast kernels (default); ``IMGBEDDINGS_INT8_FASTPATH=0``
    turns it off (see :mod:`imgbeddings.int8`)."""
    return env_flag("IMGBEDDINGS_INT8_FASTPATH", default=True)


def debug() -> bool:
    """``IMGBEDDINGS_DEBUG=1`` asks the CLI for full tracebacks."""
    return env_flag("IMGBEDDINGS_DEBUG")


def _cgroup_cpu_quota() -> float | None:
    """CPUs granted by the cgroup (v2 ``cpu.max`` or v1 ``cfs_quota``), None if unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    except (OSError, ValueError):
        pass
    return None


def available_cpus() -> int:
    """CPUs this process may really use: affinity mask, capped by the cgroup quota.

    ``IMGBEDDINGS_NUM_THREADS`` overrides the result.
    """
    override = os.environ.get("IMGBEDDINGS_NUM_THREADS")
    if override:
        try:
            return max(1, int(override))
        except ValueError:
            pass
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def decode_budget_mp() -> float | None:
    """``IMGBEDDINGS_DECODE_BUDGET_MP``: megapixels being decoded at once across all decode workers
    (see :func:`imgbeddings.budget.default_decode_budget`); None when unset or empty."""
    value = os.environ.get("IMGBEDDINGS_DECODE_BUDGET_MP", "").strip()
    if not value:
        return None
    try:
        budget = float(value)
    except ValueError:
        budget = math.nan
    if not budget > 0 or math.isinf(budget):
        from .errors import OptionError

        raise OptionError(f"IMGBEDDINGS_DECODE_BUDGET_MP must be a number of megapixels > 0, got {value!r}")
    return budget


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().split()[0]
    except (OSError, IndexError):
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def _cgroup_memory_left(
    root: Path = Path("/sys/fs/cgroup"), own: Path = Path("/proc/self/cgroup")
) -> int | None:
    """Bytes the cgroup may still allocate (limit - usage), None if unlimited or unknown. cgroup v2:
    the tightest of this process's own cgroup (named in ``own``) and its ancestors; else v1."""
    path = ""
    try:
        for line in own.read_text().splitlines():
            if line.startswith("0::"):  # v2: "0::/path/of/the/cgroup"
                path = line[3:].strip().strip("/")
    except OSError:
        pass
    parts = path.split("/") if path else []
    left = []
    for depth in range(len(parts), -1, -1):  # own folder, its parents, the root
        folder = root.joinpath(*parts[:depth])
        limit = _read_int(folder / "memory.max")
        if limit is not None:
            left.append(max(0, limit - (_read_int(folder / "memory.current") or 0)))
    if left:
        return min(left)
    limit = _read_int(root / "memory" / "memory.limit_in_bytes")
    if limit is not None and limit < 1 << 60:  # v1 reports "no limit" as a huge number
        return max(0, limit - (_read_int(root / "memory" / "memory.usage_in_bytes") or 0))
    return None


def available_memory() -> int | None:
    """Bytes this process can still use: ``MemAvailable`` (Linux), capped by what the cgroup's
    memory limit leaves; None where neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    cgroup = _cgroup_memory_left()
    if cgroup is not None:
        found.append(cgroup)
    return min(found) if found else None
