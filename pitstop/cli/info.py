"""``pitstop info``: this CPU, what torch reports, and the dtype and kernels pitstop picks on it."""

from __future__ import annotations

import argparse
import json
import os
import platform


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("info", help="this CPU, its ISA, and the dtype and kernels pitstop chooses on it")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="the dtype to resolve (default: %(default)s)")
    p.add_argument("--num-threads", type=int, default=None, help="torch intra-op threads for --peaks")
    p.add_argument("--peaks", action="store_true",
                   help="also measure matmul peaks (fp32, bf16) and memory read bandwidth (~10 s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


def collect(dtype: str = "auto", peaks: bool = False) -> dict:
    """Everything ``pitstop info`` reports, as plain JSON-able values."""
    import torch

    from pitstop.model.cpu_features import PORTABLE_ENV, choose_kernels, cpu_features
    from pitstop.model.onednn_cache import CAPACITY_ENV

    feats = cpu_features()
    k = choose_kernels(dtype, feats)
    out = {"cpu": feats.as_dict(), "cpus": os.cpu_count(), "python": platform.python_version(),
           "torch": {"version": torch.__version__, "threads": torch.get_num_threads(),
                     "onednn": torch.backends.mkldnn.is_available(),
                     "onednn_primitive_cache": os.environ.get(CAPACITY_ENV)},
           "portable": {"env": PORTABLE_ENV, "set": k.portable},
           "choice": {"requested_dtype": k.requested_dtype, "dtype": k.dtype, "reason": k.reason,
                      "linear": k.linear_kernel, "one_row_linear": k.gemv_kernel, "warning": k.warning,
                      "summary": k.summary()}}
    out["cpp_kernels"] = _cpp_kernels()
    if peaks:
        from pitstop.bench.roofline import measure_peaks
        out["peaks"] = measure_peaks().to_dict()
    return out


def format_text(info: dict) -> str:
    """Human-readable form of :func:`collect`'s result."""
    cpu, ch, tt = info["cpu"], info["choice"], info["torch"]
    lines = [
        f"cpu:          {cpu['cpu_model']} ({cpu['machine']}, {info['cpus']} CPUs)",
        f"isa:          {' '.join(cpu['isa_flags']) or '(none of interest reported)'}",
        f"torch:        {tt['version']}, ATen kernels {cpu['torch_capability']}, {tt['threads']} threads, "
        f"oneDNN {'yes' if tt['onednn'] else 'no'} (primitive cache {tt['onednn_primitive_cache']} entries)",
        f"native bf16:  {'yes' if cpu['native_bf16'] else 'no'} (torch reports AMX/AVX512-BF16: "
        f"{_yes(cpu['torch_bf16_isa'])}; oneDNN bf16: {_yes(cpu['onednn_bf16'])}; probe: {_probe(cpu['bf16'])})",
        f"probes:       oneDNN bf16 pre-packing {_probe(cpu['prepack'])}; 1-row GEMV {_probe(cpu['gemv'])}",
        f"portable:     {info['portable']['env']}={'1 (every portable path forced)' if info['portable']['set'] else 'unset'}",
        f"dtype:        {ch['requested_dtype']} -> {ch['dtype']} ({ch['reason']})",
        f"kernels:      linear {ch['linear']}, 1-row linear {ch['one_row_linear']} (PyTorch's)",
        f"c++ kernels:  {_cpp_line(info['cpp_kernels'])}",
    ]
    if ch["warning"]:
        lines.append(f"warning:      {ch['warning']}")
    if "peaks" in info:
        p = info["peaks"]
        lines.append(f"peaks:        matmul fp32 {p['fp32_gflops']:.0f} GFLOP/s, bf16 {p['bf16_gflops']:.1f} GFLOP/s; "
                     f"memory read {p['read_gbs']:.1f} GB/s, copy {p['copy_gbs']:.1f} GB/s ({p['threads']} threads)")
    return "\n".join(lines)


def _cpp_kernels() -> dict:
    """pitstop's C++ kernels here: off and why, or on, with the build folder and whether it is built (not built by
    this command: the first engine builds it)."""
    from pitstop.model.cpu_kernels import build_dir, kernels_disabled

    why = kernels_disabled()
    if why is not None:
        return {"enabled": False, "reason": why}
    folder = build_dir()
    return {"enabled": True, "build_dir": str(folder), "built": any(folder.glob("*.so"))}


def _cpp_line(k: dict) -> str:
    if not k["enabled"]:
        return f"off ({k['reason']}): PyTorch paths for attention and linears"
    state = "built" if k["built"] else "built by the first engine (about 40 s), then cached"
    return (f"on where they build and pass their probe: decode attention in place, float32 linears of <= 16 rows, "
            f"int8 and GGUF Q4 linears, residual add + RMSNorm; {state} in {k['build_dir']}")


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _probe(p: dict) -> str:
    return f"{'ok' if p['ok'] else 'FAILED'} ({p['detail']})"


def run(args: argparse.Namespace) -> int:
    if args.num_threads:
        import torch
        torch.set_num_threads(args.num_threads)
    info = collect(args.dtype, args.peaks)
    print(json.dumps(info, indent=2) if args.json else format_text(info))
    return 0
