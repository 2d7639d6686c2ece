"""Hardware specs for the roofline cost model (``pitstop/data/hardware/*.yaml``).

Each spec gives peak dense bf16 FLOP/s, memory bandwidth and size from the vendor datasheet (cited in the YAML),
and achievable-efficiency factors as GenZ (Bambhaniya et al., arXiv 2406.01698) and Vidur (MLSys'24) use them:
predicted compute time = FLOPs / (peak * flops_efficiency), memory time = bytes / (bandwidth * bandwidth_efficiency).
``CPU-this-machine.yaml`` holds this machine's peaks measured with ``pitstop.bench.roofline.measure_peaks``
(efficiency 1.0: measured peaks are already achieved rates).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from pitstop.model.shape import ModelShape

HARDWARE_DIR = Path(__file__).resolve().parents[1] / "data" / "hardware"


@dataclass(frozen=True)
class HardwareSpec:
    """One accelerator (a replica may span ``tp`` of them).

    Attributes:
        name: spec name.
        peak_bf16_flops: dense bf16 matmul peak, FLOP/s.
        memory_bandwidth: memory read bandwidth, bytes/s.
        memory_bytes: device memory, bytes.
        interconnect_bandwidth: device-to-device bandwidth per direction, bytes/s (tensor-parallel all-reduce,
            prefill->decode KV transfer).
        flops_efficiency / bandwidth_efficiency: achievable fractions of the peaks (0..1].
        step_overhead_s: fixed cost of one step, seconds (CPU scheduling, launches, sampling).
        seq_overhead_s: extra cost per sequence in a step, seconds.
        gpu_memory_utilization: share of memory given to weights + KV cache.
    """

    name: str
    peak_bf16_flops: float
    memory_bandwidth: float
    memory_bytes: float
    interconnect_bandwidth: float = 0.0
    flops_efficiency: float = 1.0
    bandwidth_efficiency: float = 1.0
    step_overhead_s: float = 0.0
    seq_overhead_s: float = 0.0
    gpu_memory_utilization: float = 0.9

    def __post_init__(self) -> None:
        for name in ("peak_bf16_flops", "memory_bandwidth", "memory_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"hardware {self.name}: {name} must be > 0")
        for name in ("flops_efficiency", "bandwidth_efficiency", "gpu_memory_utilization"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"hardware {self.name}: {name} must be in (0, 1]")

    def to_dict(self) -> dict:
        return asdict(self)

    def kv_cache_tokens(self, shape: ModelShape, tp: int = 1, dtype_bytes: int = 2) -> int:
        """Tokens of KV cache that fit on ``tp`` devices after the weights:
        ``(tp * memory * utilization - weights) / kv_bytes_per_token``."""
        budget = tp * self.memory_bytes * self.gpu_memory_utilization - shape.total_params() * dtype_bytes
        if budget <= 0:
            raise ValueError(f"{shape.total_params() * dtype_bytes / 1e9:.1f} GB of weights do not fit in "
                             f"{tp} x {self.name} ({self.memory_bytes / 1e9:.0f} GB, utilization "
                             f"{self.gpu_memory_utilization}): raise --tp")
        return int(budget // shape.kv_bytes_per_token(dtype_bytes))


def known_hardware() -> list[str]:
    return sorted(p.stem for p in HARDWARE_DIR.glob("*.yaml"))


def load_hardware(name: str | Path) -> HardwareSpec:
    """A spec by name (YAML stem, case-insensitive) or path to a YAML file."""
    p = Path(name)
    if not p.is_file():
        match = [s for s in known_hardware() if s.lower() == str(name).lower()]
        if not match:
            raise ValueError(f"unknown hardware {name!r} (known: {', '.join(known_hardware())}, or a YAML path)")
        p = HARDWARE_DIR / f"{match[0]}.yaml"
    data = yaml.safe_load(p.read_text())
    allowed = {f.name for f in fields(HardwareSpec)}
    unknown = set(data) - allowed - {"source", "measured"}
    if unknown:
        raise ValueError(f"{p}: unknown keys {sorted(unknown)}")
    return HardwareSpec(**{k: (v if k == "name" else float(v)) for k, v in data.items() if k in allowed})
