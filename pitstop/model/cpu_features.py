"""What this CPU can run, probed once per process by running each ISA-specific op on a tiny input.

The machines that run pitstop differ (Intel with AVX-512 and AMX; AMD with AVX2 only, where bf16
is emulated and 5-300x slower than fp32, and oneDNN's bf16 weight pre-packing raises). So nothing
is assumed from a machine seen before: every fast path is chosen here, at load, and falls back to
the portable path when its probe fails.

- ``native_bf16``: torch reports AMX or AVX512-BF16 (``torch.cpu._is_amx_tile_supported`` /
  ``_is_avx512_bf16_supported``), oneDNN's effective ISA supports bf16
  (``torch.ops.mkldnn._is_mkldnn_bf16_supported``: false when oneDNN is capped, e.g.
  ``ONEDNN_MAX_CPU_ISA=AVX2``) *and* a bf16 linear of SmolLM2's MLP shape (64 x 576 -> 1536) runs,
  agrees with fp32 and is at most 2x slower than fp32 (best of 5, interleaved with fp32 so load
  hits both alike). Native bf16 measured 0.2-0.7x the fp32 time, emulated 3-5x on small linears
  (300x on large matmuls), so the bound is far from both and the choice does not flip with noise.
- ``prepack``: oneDNN's bf16 weight reorder (``torch.ops.mkldnn._reorder_linear_weight``) and
  ``_linear_pointwise`` run and equal ``F.linear`` bit for bit.
- ``gemv``: a one-row bf16 linear with oneDNN switched off (ATen's native GEMV) runs and agrees.

``PITSTOP_PORTABLE=1`` in the environment makes :func:`choose_kernels` take every portable path
(float32 for ``dtype="auto"``, no pre-packing, no GEMV switch), so a machine with AVX-512 also
proves the path an AVX2-only machine takes.
"""

from __future__ import annotations

import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

from pitstop.model.onednn_cache import bound_primitive_cache

PORTABLE_ENV = "PITSTOP_PORTABLE"
DTYPE_CHOICES = ("auto", "bfloat16", "float32")
# /proc/cpuinfo flags worth naming for the kernels pitstop picks (x86; ARM shows its own).
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "avx512_fp16",
              "avx_vnni", "avx_ne_convert", "amx_tile", "amx_bf16", "amx_int8", "neon", "asimd", "sve", "bf16")
_BF16_SLOWDOWN_BOUND = 2.0  # bf16 may take at most this many times the fp32 time to count as native


@dataclass(frozen=True)
class Probe:
    """Outcome of one probe: whether the op ran and agreed with its reference, and why not."""

    ok: bool
    detail: str


@dataclass(frozen=True)
class CpuFeatures:
    """This CPU as pitstop sees it (see the module docstring for how each field is probed).

    Attributes:
        cpu_model: the model name from ``/proc/cpuinfo`` (or ``platform.processor()``).
        machine: ``platform.machine()``, e.g. ``x86_64``, ``aarch64``.
        isa_flags: the ISA extensions of interest this CPU reports, in a fixed order.
        torch_capability: the ATen kernel level torch dispatches to (``AVX512``, ``AVX2``, ``DEFAULT``...).
        torch_bf16_isa: torch reports AMX tiles or AVX512-BF16.
        onednn_bf16: oneDNN's effective ISA computes bf16 (``_is_mkldnn_bf16_supported``).
        bf16: the bf16-vs-fp32 linear probe.
        prepack: the oneDNN bf16 weight pre-packing probe.
        gemv: the one-row bf16 linear with oneDNN off probe.
    """

    cpu_model: str
    machine: str
    isa_flags: tuple[str, ...]
    torch_capability: str
    torch_bf16_isa: bool
    onednn_bf16: bool
    bf16: Probe
    prepack: Probe
    gemv: Probe

    @property
    def native_bf16(self) -> bool:
        """bf16 is computed natively: torch and oneDNN report the ISA and the probe confirms it runs."""
        return self.torch_bf16_isa and self.onednn_bf16 and self.bf16.ok

    def as_dict(self) -> dict:
        """Plain-JSON form (for ``pitstop info --json`` and benchmark metadata)."""
        return dict(asdict(self), native_bf16=self.native_bf16)


@dataclass(frozen=True)
class KernelChoice:
    """The dtype and the CPU kernels one model runner uses.

    Attributes:
        requested_dtype: what the user asked for (``auto``, ``bfloat16`` or ``float32``).
        dtype: the dtype used, ``bfloat16`` or ``float32``.
        reason: why that dtype (one phrase).
        prepack: bf16 linear weights are pre-packed for oneDNN (``pitstop.model.cpu_packed_linear``).
        gemv_switch: one-row steps run with oneDNN off (ATen's GEMV).
        portable: ``PITSTOP_PORTABLE`` forced every portable path.
        warning: one line to show the user (an emulated bf16 asked for explicitly), or None.
    """

    requested_dtype: str
    dtype: str
    reason: str
    prepack: bool
    gemv_switch: bool
    portable: bool
    warning: str | None = None

    @property
    def linear_kernel(self) -> str:
        """Name of the linear path of steps with more than one row."""
        return "onednn-prepacked" if self.prepack else "aten"

    @property
    def gemv_kernel(self) -> str:
        """Name of the linear path of one-row steps (a batch-1 decode)."""
        return "aten-gemv" if self.gemv_switch else "aten"

    def summary(self) -> str:
        """The one startup line: dtype, why, and the kernels chosen."""
        extra = f", {PORTABLE_ENV}=1" if self.portable else ""
        return (f"dtype={self.dtype} ({self.reason}{extra}); linear={self.linear_kernel}, "
                f"1-row linear={self.gemv_kernel}")


def portable_requested() -> bool:
    """True when ``PITSTOP_PORTABLE`` is set to something other than ``''``/``0``/``false``."""
    return os.environ.get(PORTABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


@cache
def cpu_features() -> CpuFeatures:
    """Probe this CPU once per process (about 10-50 ms; cached: the CPU does not change).

    Bounds oneDNN's primitive cache first (``pitstop.model.onednn_cache``): the probes are the process's
    first oneDNN primitives, and oneDNN reads the bound only then.
    """
    bound_primitive_cache()
    flags = _cpuinfo_flags()
    return CpuFeatures(
        cpu_model=_cpu_model(), machine=platform.machine(), isa_flags=tuple(f for f in _ISA_FLAGS if f in flags),
        torch_capability=torch.backends.cpu.get_cpu_capability(), torch_bf16_isa=_torch_reports_bf16(),
        onednn_bf16=_onednn_bf16(), bf16=probe_bf16(), prepack=probe_prepack(), gemv=probe_gemv())


def choose_kernels(requested_dtype: str = "auto", features: CpuFeatures | None = None,
                   portable: bool | None = None) -> KernelChoice:
    """Resolve ``requested_dtype`` and pick the kernels for this CPU.

    Args:
        requested_dtype: ``auto`` (bf16 where native, fp32 elsewhere), ``bfloat16`` or ``float32``.
        features: the probed CPU (default: :func:`cpu_features`).
        portable: force the portable paths (default: :func:`portable_requested`).

    Raises:
        ValueError: an unknown dtype name.
    """
    if requested_dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}; got {requested_dtype!r}")
    feats = features or cpu_features()
    portable = portable_requested() if portable is None else portable
    native = feats.native_bf16 and not portable
    dtype, reason, warning = _resolve_dtype(requested_dtype, feats, native, portable)
    fast_bf16 = dtype == "bfloat16" and native
    return KernelChoice(requested_dtype=requested_dtype, dtype=dtype, reason=reason,
                        prepack=fast_bf16 and feats.prepack.ok, gemv_switch=fast_bf16 and feats.gemv.ok,
                        portable=portable, warning=warning)


def _resolve_dtype(requested: str, feats: CpuFeatures, native: bool, portable: bool) -> tuple[str, str, str | None]:
    if requested == "float32":
        return "float32", "asked for", None
    if requested == "auto":
        if native:
            return "bfloat16", "auto: native bf16", None
        why = "portable" if portable else ("bf16 not native: " + _bf16_why_not(feats))
        return "float32", f"auto: {why}", None
    if native:
        return "bfloat16", "asked for", None
    why = "portable paths forced" if portable else _bf16_why_not(feats)
    return "bfloat16", f"asked for, emulated ({why})", (
        f"pitstop: dtype=bfloat16 is emulated on this CPU ({why}) and much slower than float32; "
        f"use --dtype auto or float32")


def _bf16_why_not(feats: CpuFeatures) -> str:
    if not feats.torch_bf16_isa:
        return "no AMX or AVX512-BF16"
    if not feats.onednn_bf16:
        return "oneDNN's ISA has no bf16"
    return feats.bf16.detail


def probe_bf16(rows: int = 64, in_features: int = 576, out_features: int = 1536, repeats: int = 5) -> Probe:
    """Run a bf16 and an fp32 linear of the same shape; ok when bf16 agrees and is at most 2x slower.

    Returns:
        ``Probe(ok, detail)``; ``detail`` gives both times (microseconds) or the error.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, in_features, generator=gen)
    w = torch.randn(out_features, in_features, generator=gen) / in_features ** 0.5
    xb, wb = x.bfloat16(), w.bfloat16()
    try:
        got = F.linear(xb, wb).float()
    except RuntimeError as e:
        return Probe(False, f"bf16 linear raised: {_first_line(e)}")
    if not torch.allclose(got, F.linear(xb.float(), wb.float()), rtol=2e-2, atol=2e-2):
        return Probe(False, "bf16 linear disagrees with fp32")
    t_bf16, t_fp32 = _best_times([lambda: F.linear(xb, wb), lambda: F.linear(x, w)], repeats)
    ratio = t_bf16 / t_fp32
    detail = f"bf16 {t_bf16 * 1e6:.0f} us vs fp32 {t_fp32 * 1e6:.0f} us ({ratio:.2f}x)"
    return Probe(ratio <= _BF16_SLOWDOWN_BOUND, detail)


def probe_prepack(dtype: torch.dtype = torch.bfloat16) -> Probe:
    """Pack a tiny weight of ``dtype`` for oneDNN and run it; ok when it equals ``F.linear``: bit for bit in bf16
    (the same oneDNN kernel), to 1e-5 in float32 (oneDNN's sums against MKL's)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return Probe(False, "oneDNN is not in this torch build")
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(48, 32, generator=gen).to(dtype)
    x = torch.randn(3, 32, generator=gen).to(dtype)
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w)
        got = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    except RuntimeError as e:
        return Probe(False, f"raised: {_first_line(e)}")
    ref = F.linear(x, w)
    exact = dtype == torch.bfloat16
    if not (torch.equal(got, ref) if exact else torch.allclose(got, ref, atol=1e-5, rtol=1e-5)):
        return Probe(False, "packed result differs from F.linear")
    return Probe(True, "ran, bit-identical to F.linear" if exact else "ran, agrees with F.linear")


def probe_gemv() -> Probe:
    """Run a one-row bf16 linear with oneDNN off (ATen's GEMV); ok when it agrees with fp32."""
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(40, 24, generator=gen).bfloat16()
    x = torch.randn(1, 24, generator=gen).bfloat16()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.backends.mkldnn.flags(enabled=False):
                got = F.linear(x, w).float()
    except RuntimeError as e:
        return Probe(False, f"raised: {_first_line(e)}")
    if not torch.allclose(got, F.linear(x.float(), w.float()), rtol=2e-2, atol=2e-2):
        return Probe(False, "disagrees with fp32")
    return Probe(True, "ran, agrees with fp32")


def _best_times(fns: list, repeats: int) -> list[float]:
    """Best wall time (seconds) of each of ``fns``, run in turn ``repeats`` times after a warm-up."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats + 1):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def _torch_reports_bf16() -> bool:
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def _onednn_bf16() -> bool:
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(torch.backends.mkldnn.is_available() and check is not None and check())


def _cpuinfo_flags() -> set[str]:
    text = _read_cpuinfo()
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features"):
            return set(line.split(":", 1)[1].split())
    return set()


def _cpu_model() -> str:
    for line in _read_cpuinfo().splitlines():
        if line.split(":", 1)[0].strip().lower() in ("model name", "cpu model", "hardware"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
