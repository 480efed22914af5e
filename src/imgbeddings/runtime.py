"""ONNX Runtime sessions: providers (with a clear fallback), threads, input/output names.

Every session that embeds images is created here (:class:`OnnxModel`); the exporter's
quantiser and :mod:`imgbeddings.int8`'s checks use ONNX Runtime through it or its own API.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from . import int8, settings
from .errors import ModelError, ProviderError
from .int8 import Int8Rewrite

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def select_providers(gpu: bool = False, provider: str | Sequence[str] | None = None) -> list[str]:
    """The execution providers to ask for, CPU always last as the fallback.

    ``provider`` (a name or a list, e.g. ``"CUDAExecutionProvider"``) wins over ``gpu``;
    ``gpu=True`` means CUDA. A provider ONNX Runtime has never heard of raises
    :class:`ProviderError`; one it knows but this install lacks (CUDA on the CPU wheel) is
    dropped with a warning that says how to get it.
    """
    if provider:
        wanted = [provider] if isinstance(provider, str) else list(provider)
    else:
        wanted = [CUDA] if gpu else []
    known, available = ort.get_all_providers(), ort.get_available_providers()
    chosen: list[str] = []
    for name in wanted:
        if name not in known:
            raise ProviderError(
                f"unknown ONNX Runtime execution provider {name!r}; available here: {available}"
            )
        if name in available:
            chosen.append(name)
        else:
            hint = " Install onnxruntime-gpu (and CUDA/cuDNN) for GPU inference." if name == CUDA else ""
            warnings.warn(
                f"{name} is not available in this onnxruntime install (available: {available}); "
                f"falling back to {CPU}.{hint}",
                RuntimeWarning,
                stacklevel=3,
            )
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


def session_options(threads: int | None = None, spin: bool = True) -> ort.SessionOptions:
    """Session options: full graph optimisation, ``threads`` intra-op threads (default:
    the CPUs this process may really use, cgroup quota included), one inter-op thread.

    ``spin=False`` stops idle ONNX Runtime threads from busy-waiting, which leaves the CPUs to
    decode workers running beside it (the streaming pipeline does this).
    """
    opts = ort.SessionOptions()
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or settings.available_cpus()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


class OnnxModel:
    """One ONNX Runtime session over an image model: ``run(pixels) -> vectors``.

    On the CPU, an original-format INT8 file (uint8 ``MatMulInteger`` weights, as the built-in
    ``patch*_v1`` files) runs rewritten for ONNX Runtime's faster kernels with bit-identical
    outputs (see :mod:`imgbeddings.int8`); ``int8_fastpath=False`` or
    ``IMGBEDDINGS_INT8_FASTPATH=0`` turns that off. ``int8_rewrite`` says what happened:
    None (nothing to rewrite, turned off, or not on this CPU), else an
    :class:`~imgbeddings.int8.Int8Rewrite`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        output_name: str | None = None,
        threads: int | None = None,
        gpu: bool = False,
        provider: str | Sequence[str] | None = None,
        spin: bool = True,
        int8_fastpath: bool = True,
    ) -> None:
        self.path = Path(path)
        providers = select_providers(gpu, provider)
        options = session_options(threads, spin)

        def open_session(model: str | bytes) -> ort.InferenceSession:
            return ort.InferenceSession(model, options, providers=providers)

        self.int8_rewrite: Int8Rewrite | None = None
        try:
            session = None
            if int8_fastpath and providers == [CPU] and settings.int8_fastpath():
                session, self.int8_rewrite = int8.prepare(
                    self.path, open_session, runtime_version=ort.__version__
                )
            self.session = open_session(str(self.path)) if session is None else session
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ModelError(f"ONNX Runtime cannot load {self.path}: {exc}") from exc
        active = self.session.get_providers()
        missing = [p for p in providers if p != CPU and p not in active]
        if missing:
            warnings.warn(
                f"{missing} could not be initialised; running on {active}.", RuntimeWarning, stacklevel=2
            )
        self.providers = active
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{self.path} has {len(inputs)} inputs; an image model must have exactly one")
        self.input_name = inputs[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        if output_name is not None and output_name not in outputs:
            raise ModelError(
                f"{self.path} has no output {output_name!r} (outputs: {outputs}); check its card"
            )
        self.output_name = output_name or outputs[0]

    def signature(self) -> tuple[list[tuple[str, list]], list[tuple[str, list]]]:
        """The graph's (name, shape) inputs and outputs; symbolic dims are strings."""
        ins = [(i.name, list(i.shape)) for i in self.session.get_inputs()]
        outs = [(o.name, list(o.shape)) for o in self.session.get_outputs()]
        return ins, outs

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """Run a float32 (N, 3, S, S) batch; returns float32 (N, D)."""
        out = self.session.run([self.output_name], {self.input_name: pixels})[0]
        return np.asarray(out, dtype=np.float32)
