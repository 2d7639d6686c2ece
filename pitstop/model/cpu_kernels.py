"""pitstop's C++ CPU kernels (issue 18): built once per machine with ``torch.utils.cpp_extension``, cached on disk.

Kernels (source: ``pitstop/data/csrc/cpu_kernels.cpp``, plain C++ loops the compiler vectorizes):

- ``paged_decode_attention(q [B, Hq, D], k_cache, v_cache [num_blocks, block_size, Hkv, D], block_tables [B, W]
  int32/int64, seq_lens [B] int64, scale) -> [B, Hq, D]``: single-token attention that reads each sequence's K/V
  blocks where they lie in the paged cache (the torch backend first gathers every block of the padded batch into a
  new tensor). Used by the ``cpu`` attention backend (``pitstop.model.attention.cpu_paged``).
- ``int8_linear(x [M, K], w [N, K] int8, scale [N] or [N, groups] float32, bias [N] | None, gemv_rows) -> [M, N]``:
  weight-only int8 linear, one scale per row or per equal group of a row (``pitstop.model.int8_linear``).
- ``linear_rows(x [M, K], w [N, K] float32, bias [N] | None) -> [M, N]``: float32 linear for few rows
  (``pitstop.model.few_row_linear``).
- ``q4_linear(x [M, K], qs [N, K / 2] uint8, d [N, K / 32] float32, m [N, K / 32] float32, bias [N] | None,
  gemv_rows) -> [M, N]``: 4-bit weights kept in GGUF's Q4_0 / Q4_1 blocks (``pitstop.model.gguf_linear``).
- ``add_rms_norm(h [T, D], residual [T, D] | None, weight [D], eps) -> (out, r)``: float32 residual add and RMSNorm
  in one call, ``r = h + residual``, ``out = weight * r / rms(r)`` (``pitstop.model.layers.RMSNorm.add_forward``).

Build: ``-O3 -march=native -fopenmp-simd`` (vectorized for *this* CPU), so the build folder's name carries a hash of
the source, torch's version and install folder, the compiler flags and this CPU's model and ISA flags: a cache
shared between machines never hands one CPU another's binary, and two virtualenvs do not rebuild one folder in
turn. The source is copied into the build folder first, so checkouts at other paths share the build. Folder:
``$PITSTOP_CACHE/cpu_kernels/<hash>`` (``~/.cache/pitstop``). First build: about 30-60 s on 2 cores; later loads: well under a second. Concurrent builders wait on
``cpp_extension``'s lock file.

Fallbacks: :func:`cpu_kernels` returns None, and every caller takes its portable PyTorch path, when
``PITSTOP_PORTABLE`` is set, ``PITSTOP_NO_CPU_KERNELS`` is set, the device is not a CPU build of torch with a C++
compiler, the build raises, or the built module fails its probe (a tiny attention and linear against PyTorch). The
reason is kept in :func:`kernel_status` and logged once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from functools import cache
from pathlib import Path
from types import ModuleType

import torch

from pitstop.model.cpu_features import cpu_features, portable_requested

log = logging.getLogger("pitstop")
DISABLE_ENV = "PITSTOP_NO_CPU_KERNELS"
SOURCE = Path(__file__).resolve().parent.parent / "data" / "csrc" / "cpu_kernels.cpp"
CFLAGS = ("-O3", "-march=native", "-fopenmp-simd")

_status: dict[str, str] = {}


def kernel_status() -> str:
    """Why the kernels are or are not in use (``"ok: <build folder>"`` or the reason), after :func:`cpu_kernels`."""
    return _status.get("status", "not loaded yet")


def kernels_disabled() -> str | None:
    """The reason the kernels must not be used in this process, or None."""
    if portable_requested():
        return "PITSTOP_PORTABLE is set"
    if os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return f"{DISABLE_ENV} is set"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler (c++ / $CXX) on PATH"
    return None


@cache
def cpu_kernels() -> ModuleType | None:
    """The built and probed kernel module, or None (see the module docstring; the reason is in
    :func:`kernel_status`). Cached per process."""
    why = kernels_disabled()
    if why is not None:
        return _give_up(why)
    try:
        with torch.device("cpu"):  # the model (and so its attention backend) may be built under torch.device("meta")
            module = build()  # (build_key probes the CPU's features with tensors on first use)
    except Exception as e:  # a compiler or linker error, a missing header: keep the portable path
        return _give_up(f"build failed: {type(e).__name__}: {_first_line(e)}")
    try:
        with torch.device("cpu"):
            problem = probe(module)
    except Exception as e:
        problem = f"raised {type(e).__name__}: {_first_line(e)}"
    if problem:
        return _give_up(f"probe failed: {problem}")
    _status["status"] = f"ok: {build_dir()}"
    return module


def build_key() -> str:
    """Hash of everything the binary depends on: source, torch (version and install: another virtualenv's headers
    make ninja rebuild), flags, this CPU's model and ISA flags."""
    feats = cpu_features()
    text = "\n".join([SOURCE.read_text(), torch.__version__, str(Path(torch.__file__).parent), " ".join(CFLAGS),
                      feats.cpu_model, " ".join(feats.isa_flags), feats.torch_capability, _all_cpu_flags()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_dir() -> Path:
    """``$PITSTOP_CACHE/cpu_kernels/<build_key()>``."""
    from pitstop.model.resolve import cache_dir

    return cache_dir() / "cpu_kernels" / build_key()


def build() -> ModuleType:
    """Compile (or load the cached build of) the extension.

    Raises:
        Exception: whatever ``torch.utils.cpp_extension.load`` raises (compiler missing, compile error).
    """
    from torch.utils.cpp_extension import load

    folder = build_dir()
    folder.mkdir(parents=True, exist_ok=True)
    # build from a copy inside the build folder: the build does not depend on where this checkout lies (ninja
    # rebuilds when a source path changes, so two checkouts would otherwise rebuild the shared folder in turn)
    source = folder / SOURCE.name
    if not source.exists() or source.read_text() != SOURCE.read_text():
        tmp = folder / f".{SOURCE.name}.{os.getpid()}"
        tmp.write_text(SOURCE.read_text())
        tmp.replace(source)
    return load(name=f"pitstop_cpu_kernels_{build_key()}", sources=[str(source)], extra_cflags=list(CFLAGS),
                build_directory=str(folder), verbose=False)


def probe(module: ModuleType) -> str | None:
    """Run both kernels on tiny inputs against PyTorch; returns what disagreed, or None."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, 8, generator=gen)
    kc, vc = torch.randn(140, 4, 2, 8, generator=gen), torch.randn(140, 4, 2, 8, generator=gen)
    long_table = torch.randperm(135, generator=gen)[:132] + 5  # 525 tokens: the AVX2 one-pass path
    tables = torch.zeros(3, 132, dtype=torch.int32)
    tables[0, :2], tables[1, :2], tables[2] = torch.tensor([3, 1]), torch.tensor([0, 4]), long_table
    lens = torch.tensor([8, 3, 525])  # 8: a full vector of the AVX2 path's exp
    got = module.paged_decode_attention(q, kc, vc, tables, lens, 0.35)
    for b in range(3):
        k = kc[tables[b].long()].reshape(-1, 2, 8)[: lens[b]].repeat_interleave(2, 1).transpose(0, 1)
        v = vc[tables[b].long()].reshape(-1, 2, 8)[: lens[b]].repeat_interleave(2, 1).transpose(0, 1)
        ref = ((q[b].unsqueeze(1) @ k.transpose(1, 2)) * 0.35).softmax(-1) @ v
        if not torch.allclose(got[b], ref.squeeze(1), atol=1e-5, rtol=1e-5):
            return "paged_decode_attention disagrees with PyTorch"
    w = torch.randint(-127, 128, (24, 40), generator=gen, dtype=torch.int8)
    bias = torch.randn(24, generator=gen)
    for groups in (1, 5):  # per row; groups of 8 weights
        scale = torch.rand(24, groups, generator=gen) / 100
        wf = (w.float().view(24, groups, -1) * scale[..., None]).view(24, 40)
        for rows in (1, 7):
            x = torch.randn(rows, 40, generator=gen)
            ref = torch.nn.functional.linear(x, wf, bias)
            for gemv_rows in (0, 8):
                if not torch.allclose(module.int8_linear(x, w, scale, bias, gemv_rows), ref, atol=1e-4, rtol=1e-4):
                    return "int8_linear disagrees with PyTorch"
            if not torch.allclose(module.linear_rows(x, wf, bias), ref, atol=1e-4, rtol=1e-4):
                return "linear_rows disagrees with PyTorch"
    return _probe_q4(module, gen) or _probe_norm(module, gen)


def _probe_norm(module: ModuleType, gen: torch.Generator) -> str | None:
    """``add_rms_norm`` against ``F.rms_norm`` (with and without a residual)."""
    h, res, w = torch.randn(3, 40, generator=gen), torch.randn(3, 40, generator=gen), torch.randn(40, generator=gen)
    for residual in (None, res):
        r = h if residual is None else h + residual
        out, got_r = module.add_rms_norm(h, residual, w, 1e-5)
        if not (torch.equal(got_r, r) and torch.allclose(out, torch.nn.functional.rms_norm(r, (40,), w, 1e-5),
                                                         atol=1e-5, rtol=1e-5)):
            return "add_rms_norm disagrees with PyTorch"
    return None


def _probe_q4(module: ModuleType, gen: torch.Generator) -> str | None:
    """``q4_linear`` against the same weights dequantized by PyTorch (few rows and the tiled many-row path)."""
    qs = torch.randint(0, 256, (24, 32), generator=gen, dtype=torch.uint8)
    d, m = torch.rand(24, 2, generator=gen) / 50, torch.randn(24, 2, generator=gen) / 10
    groups = qs.view(24, 2, 16)  # byte j of a group: weight j in the low nibble, weight j + 16 in the high one
    w = (torch.cat([groups & 15, groups >> 4], dim=2) * d[..., None] + m[..., None]).view(24, 64)
    bias = torch.randn(24, generator=gen)
    for rows in (1, 7):
        x = torch.randn(rows, 64, generator=gen)
        ref = torch.nn.functional.linear(x, w, bias)
        for gemv_rows in (0, 8):
            if not torch.allclose(module.q4_linear(x, qs, d, m, bias, gemv_rows), ref, atol=1e-4, rtol=1e-4):
                return "q4_linear disagrees with PyTorch"
    return None


def _give_up(reason: str) -> None:
    _status["status"] = f"off: {reason}"
    log.info("pitstop: C++ CPU kernels off (%s); portable PyTorch paths", reason)
    return None


def _all_cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return ""


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
