"""Workload loaders parse the vendored samples; length and time scaling keep their promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from pitstop.workloads import (
    RequestSpec,
    length_scale_factor,
    load_azure,
    load_dataset,
    load_sharegpt,
    poisson_arrivals,
    random_specs,
    sample_specs,
    scale_lengths,
    scale_time,
    scale_time_to_rate,
)
from pitstop.workloads.azure import parse_timestamp

DATA = Path(__file__).resolve().parents[1] / "pitstop" / "data" / "traces"
AZURE_CONV = DATA / "azure2023" / "AzureLLMInferenceTrace_conv.csv"
AZURE_CODE = DATA / "azure2023" / "AzureLLMInferenceTrace_code.csv"
SHAREGPT = DATA / "sharegpt_stats" / "sharegpt_8k_filtered_stats_llama2_tokenizer.csv"


@pytest.mark.parametrize("path", [AZURE_CONV, AZURE_CODE])
def test_azure_sample_parses(path: Path) -> None:
    specs = load_azure(path=path)
    assert len(specs) == 2000
    assert specs[0].arrival_s == 0.0
    assert all(b.arrival_s >= a.arrival_s for a, b in zip(specs, specs[1:]))
    assert all(s.input_len >= 1 and s.output_len >= 1 for s in specs)


def test_azure_first_rows() -> None:
    specs = load_azure(path=AZURE_CONV, limit=2)
    assert (specs[0].input_len, specs[0].output_len) == (374, 44)
    assert specs[1].arrival_s == pytest.approx(4.3145789, abs=1e-6)


def test_parse_timestamp_seven_digit_fraction() -> None:
    a = parse_timestamp("2023-11-16 18:15:46.6805900")
    b = parse_timestamp("2023-11-16 18:15:47")
    assert b - a == pytest.approx(0.31941, abs=1e-6)


def test_sharegpt_sample_parses() -> None:
    specs = load_sharegpt(path=SHAREGPT)
    assert len(specs) == 2000
    assert specs[0] == RequestSpec(0.0, 74, 918)
    assert all(s.arrival_s == 0.0 for s in specs)


@pytest.mark.parametrize("name", ["azure-conv", "azure-code", "sharegpt"])
def test_default_paths_load(name: str) -> None:
    assert len(load_dataset(name, limit=10)) == 10


@pytest.mark.parametrize("path", [AZURE_CONV, AZURE_CODE, SHAREGPT])
@pytest.mark.parametrize("max_model_len", [64, 512, 2048])
def test_scale_lengths_fit_context(path: Path, max_model_len: int) -> None:
    specs = load_sharegpt(path=path) if path == SHAREGPT else load_azure(path=path)
    scaled, factor = scale_lengths(specs, max_model_len)
    assert 0 < factor <= 1.0
    assert factor == pytest.approx(length_scale_factor(specs, max_model_len))
    assert len(scaled) == len(specs)
    for s in scaled:
        assert s.input_len >= 1 and s.output_len >= 1
        assert s.input_len + s.output_len <= max_model_len
    assert [s.arrival_s for s in scaled] == [s.arrival_s for s in specs]


def test_scale_lengths_explicit_factor_and_no_stretch() -> None:
    specs = [RequestSpec(0.0, 10, 4), RequestSpec(1.0, 1, 1)]
    scaled, factor = scale_lengths(specs, 100)
    assert factor == 1.0 and scaled == specs
    half, f = scale_lengths(specs, 100, factor=0.5)
    assert f == 0.5
    assert half == [RequestSpec(0.0, 5, 2), RequestSpec(1.0, 1, 1)]


def test_scale_lengths_clips_outliers() -> None:
    specs = [RequestSpec(0.0, 5000, 900)]
    scaled, _ = scale_lengths(specs, 100, factor=1.0)
    assert scaled[0].input_len == 99 and scaled[0].output_len == 1


def test_time_scaling() -> None:
    specs = [RequestSpec(float(i), 3, 3) for i in range(11)]
    assert [s.arrival_s for s in scale_time(specs, 0.5)][-1] == 5.0
    rescaled, factor = scale_time_to_rate(specs, 4.0)
    assert factor == pytest.approx(0.25)
    assert rescaled[-1].arrival_s == pytest.approx(2.5)


def test_poisson_arrivals_seeded_and_increasing() -> None:
    specs = [RequestSpec(0.0, 3, 3)] * 50
    a = poisson_arrivals(specs, 2.0, seed=1)
    assert a == poisson_arrivals(specs, 2.0, seed=1)
    assert a[0].arrival_s == 0.0
    assert all(y.arrival_s > x.arrival_s for x, y in zip(a, a[1:]))


def test_sample_specs_seeded() -> None:
    specs = load_azure(path=AZURE_CODE)
    a, b = sample_specs(specs, 64, seed=3), sample_specs(specs, 64, seed=3)
    assert a == b and len(a) == 64
    assert a != sample_specs(specs, 64, seed=4)
    window = sample_specs(specs, 10, seed=3, contiguous=True)
    assert window[0].arrival_s == 0.0 and len(window) == 10
    assert len(sample_specs(specs[:5], 12, seed=0)) == 12  # with replacement


def test_random_specs_range() -> None:
    specs = random_specs(100, 200, 50, range_ratio=0.5, seed=0)
    assert all(100 <= s.input_len <= 300 and 25 <= s.output_len <= 75 for s in specs)
    assert random_specs(3, 8, 4) == [RequestSpec(0.0, 8, 4)] * 3


def test_vendored_licences_present() -> None:
    for folder in ("azure2023", "sharegpt_stats"):
        names = {p.name for p in (DATA / folder).iterdir()}
        assert "ATTRIBUTION.md" in names
        assert any(n.startswith("LICENSE") for n in names)
