"""Runtime settings: CPU count from affinity and cgroup quota, provider selection, env vars."""

from __future__ import annotations

import warnings

import pytest

from imgbeddings import settings
from imgbeddings.errors import ProviderError
from imgbeddings.runtime import select_providers


def test_available_cpus_respects_cgroup_quota(monkeypatch):
    monkeypatch.setattr(settings.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(settings, "_cgroup_cpu_quota", lambda: 2.5)
    assert settings.available_cpus() == 3
    monkeypatch.setattr(settings, "_cgroup_cpu_quota", lambda: None)
    assert settings.available_cpus() == 16
    monkeypatch.setattr(settings, "_cgroup_cpu_quota", lambda: 0.2)
    assert settings.available_cpus() == 1


def test_cgroup_v2_file_is_parsed(monkeypatch, tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    real_path = settings.Path
    monkeypatch.setattr(
        settings, "Path", lambda p: cpu_max if p == "/sys/fs/cgroup/cpu.max" else real_path(p)
    )
    assert settings._cgroup_cpu_quota() == 1.5
    cpu_max.write_text("max 100000\n")
    assert settings._cgroup_cpu_quota() is None


def test_thread_override_and_flags(monkeypatch):
    monkeypatch.setenv("IMGBEDDINGS_NUM_THREADS", "5")
    assert settings.available_cpus() == 5
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not settings.is_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    assert settings.is_offline()


def test_provider_selection():
    assert select_providers() == ["CPUExecutionProvider"]
    assert select_providers(provider="CPUExecutionProvider") == ["CPUExecutionProvider"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert select_providers(gpu=True) == ["CPUExecutionProvider"]
    assert "onnxruntime-gpu" in str(caught[0].message)
    with pytest.raises(ProviderError, match="available here"):
        select_providers(provider=["Bogus"])
