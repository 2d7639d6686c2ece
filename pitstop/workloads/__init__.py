"""Workloads: request-length traces (Azure 2023, ShareGPT) and synthetic ones, as ``RequestSpec`` lists."""

from __future__ import annotations

from pathlib import Path

from pitstop.workloads.azure import load_azure
from pitstop.workloads.lengths import (
    RequestSpec,
    length_scale_factor,
    poisson_arrivals,
    random_specs,
    rebase_time,
    sample_specs,
    scale_lengths,
    scale_time,
    scale_time_to_rate,
    summarize,
)
from pitstop.workloads.sharegpt import load_sharegpt

DATASETS = ("azure-conv", "azure-code", "sharegpt", "random")


def load_dataset(name: str, path: str | Path | None = None, limit: int | None = None) -> list[RequestSpec]:
    """Load a named trace: ``azure-conv``, ``azure-code`` or ``sharegpt`` (``random`` has no file)."""
    if name == "azure-conv":
        return load_azure("conv", path, limit)
    if name == "azure-code":
        return load_azure("code", path, limit)
    if name == "sharegpt":
        return load_sharegpt(path, limit)
    raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS[:-1]} (or 'random' via random_specs)")


__all__ = [
    "DATASETS", "RequestSpec", "load_azure", "load_dataset", "load_sharegpt", "length_scale_factor",
    "poisson_arrivals", "random_specs", "rebase_time", "sample_specs", "scale_lengths", "scale_time",
    "scale_time_to_rate", "summarize",
]
