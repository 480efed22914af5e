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
