"""Numeric precision of a run: float32, or bfloat16 autocast where the hardware computes bfloat16 natively.

No fairseq here (the embedding API, the benchmarks and the command-line tools share it)::

    from maeast_fairseq.precision import resolve_precision
    prec = resolve_precision("auto", "cpu", width=768)   # -> bf16 on a CPU with AMX-BF16 / AVX512-BF16
    print(prec.describe())                                # the choice and why, for the log
    with prec.autocast("cpu"):
        out = model.extract_features(x)

``bf16`` means ``torch.autocast(<device>, dtype=torch.bfloat16)``: float32 weights (and optimizer state), the
matrix products (linear layers, attention, convolutions) in bfloat16 with float32 accumulation, normalisations and
the losses in float32 (``core.losses`` disables autocast). ``auto`` picks ``bf16`` where it pays:

* the device computes bfloat16 natively: a CUDA card of compute capability >= 8.0, or a CPU with AMX-BF16 or
  AVX512-BF16 (read from ``/proc/cpuinfo``; oneDNN emulates bfloat16 on other AVX-512 CPUs, slower than float32);
* the model is at least :data:`AUTO_MIN_WIDTH` wide: on a CPU the matrices of narrower models are too small for
  the bf16 units to win back the casts (measured on a 2-core Xeon with AMX: a 128-wide 4-layer step is 3 % *slower*
  in bf16; see BENCHMARKS.md). GPUs have no such floor.

Everything else gets ``fp32``; ``fp32`` / ``bf16`` force the choice (``bf16`` on a CPU without native units warns
in :meth:`Precision.describe` that it is emulated).
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch

PRECISIONS = ("auto", "fp32", "bf16")

#: ``auto`` picks bf16 on a CPU only for models at least this wide (embedding dimension)
AUTO_MIN_WIDTH = 384

#: /proc/cpuinfo flag -> name printed
_BF16_CPU_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}


@functools.cache
def _cpuinfo(key: str) -> Optional[str]:
    """The value of ``key`` for the first processor in ``/proc/cpuinfo`` (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> frozenset:
    """The CPU feature flags of the first processor in ``/proc/cpuinfo`` (empty where there is none)."""
    return frozenset((_cpuinfo("flags") or "").split())


def cpu_model_name() -> str:
    name = _cpuinfo("model name")
    if name:
        return name
    import platform

    return platform.processor() or "unknown CPU"


@dataclass(frozen=True)
class Bf16Support:
    """Whether ``device`` computes bfloat16 natively, the units that do it, and a one-line account."""

    device: str
    native: bool
    units: Tuple[str, ...]
    detail: str


def bf16_support(device: Union[str, torch.device] = "cpu") -> Bf16Support:
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return Bf16Support("cuda", False, (), "CUDA not available")
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(idx)
        name = torch.cuda.get_device_name(idx)
        native = major >= 8
        return Bf16Support("cuda", native, (f"sm_{major}{minor} tensor cores",) if native else (),
                           f"{name}, compute capability {major}.{minor}")
    if dev.type != "cpu":
        return Bf16Support(dev.type, False, (), f"no bf16 detection for device type {dev.type!r}")
    flags = cpu_flags()
    units = tuple(name for flag, name in _BF16_CPU_FLAGS.items() if flag in flags)
    onednn = bool(getattr(torch.backends, "mkldnn", None) and torch.backends.mkldnn.is_available())
    detail = f"{cpu_model_name()}; bf16 units: {', '.join(units) or 'none'}"
    if units and not onednn:
        detail += " (but this torch has no oneDNN: bf16 matmuls would not use them)"
    return Bf16Support("cpu", bool(units) and onednn, units, detail)


@dataclass(frozen=True)
class Precision:
    """A resolved choice: ``name`` is ``fp32`` or ``bf16``; ``requested`` what was asked; ``reason`` why."""

    name: str
    requested: str
    reason: str
    support: Optional[Bf16Support] = None

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def autocast(self, device: Union[str, torch.device]):
        """``torch.autocast(device, bfloat16)`` for bf16, a no-op context for fp32."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)

    def describe(self) -> str:
        what = "bfloat16 autocast (float32 weights)" if self.bf16 else "float32"
        how = "--precision fp32|bf16 to force" if self.requested == "auto" else "forced"
        return f"precision: {what} [{self.requested}: {self.reason}; {how}]"


def resolve_precision(requested: str, device: Union[str, torch.device] = "cpu",
                      width: Optional[int] = None) -> Precision:
    """``auto`` | ``fp32`` | ``bf16`` -> :class:`Precision` for ``device`` and a model ``width`` wide (see module doc)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    dev = torch.device(device)
    sup = bf16_support(dev)
    if requested == "fp32":
        return Precision("fp32", requested, "float32 asked for", sup)
    if requested == "bf16":
        note = sup.detail + ("" if sup.native else "; NOT native here: emulated, expect it slower than float32")
        return Precision("bf16", requested, note, sup)
    if not sup.native:
        return Precision("fp32", requested, f"{sup.detail}: no native bf16", sup)
    if dev.type == "cpu" and width is not None and width < AUTO_MIN_WIDTH:
        return Precision("fp32", requested, f"{sup.detail}, but the model is {width} wide (< {AUTO_MIN_WIDTH}: "
                                            "bf16 does not pay on a CPU at this size)", sup)
    return Precision("bf16", requested, sup.detail, sup)


def model_width(model: torch.nn.Module) -> Optional[int]:
    """The embedding dimension of a core model (``embed_dim`` of its config or attribute), if it has one."""
    for obj in (getattr(model, "cfg", None), model):
        w = getattr(obj, "embed_dim", None) if obj is not None else None
        if isinstance(w, int):
            return w
    return None
