"""Shared fixtures. Every test ends with balanced KV block accounting (autouse fixture below)."""

from __future__ import annotations

import os
import weakref

import pytest

from pitstop.engine.scheduler import Scheduler

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Test-only registry of every scheduler built during the session, so the fixture below can audit
# the KV accounting of engines built in fixtures of any scope.
_SCHEDULERS: "weakref.WeakSet[Scheduler]" = weakref.WeakSet()
_orig_init = Scheduler.__init__


def _tracking_init(self, *args, **kwargs):
    _orig_init(self, *args, **kwargs)
    _SCHEDULERS.add(self)


Scheduler.__init__ = _tracking_init


@pytest.fixture(autouse=True)
def kv_accounting_balances():
    """After each test: free + cached + in use == total, and no block referenced by an ended request."""
    yield
    for sched in list(_SCHEDULERS):
        sched.check_kv_accounting()


@pytest.fixture(scope="session")
def smollm2_dir():
    """The embedded default model converted to an HF folder (cached under PITSTOP_CACHE)."""
    from pitstop.model.resolve import resolve_model
    return resolve_model("SmolLM2-135M-Instruct")
