"""oneDNN's primitive cache is bounded before the process's first primitive, and an explicit setting wins."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pitstop.model.onednn_cache import CAPACITY_ENV, DEFAULT_CAPACITY, bound_primitive_cache

_PROBE = "import os; from pitstop.model.cpu_features import cpu_features; cpu_features(); print(os.environ.get(%r))" \
    % CAPACITY_ENV


def _run(env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", _PROBE], env=env, check=True, text=True,
                          capture_output=True).stdout.strip()


def test_probing_the_cpu_bounds_the_cache_first() -> None:
    env = {k: v for k, v in os.environ.items() if k != CAPACITY_ENV}
    assert _run(env) == str(DEFAULT_CAPACITY)


def test_an_explicit_capacity_wins() -> None:
    assert _run({**os.environ, CAPACITY_ENV: "64"}) == "64"


def test_bound_returns_the_capacity_in_effect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CAPACITY_ENV, raising=False)
    assert bound_primitive_cache(100) == 100 and os.environ[CAPACITY_ENV] == "100"
    assert bound_primitive_cache(7) == 100  # already set: kept
    monkeypatch.setenv(CAPACITY_ENV, "not-a-number")
    assert bound_primitive_cache(9) == 9
