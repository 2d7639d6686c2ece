"""The executor interface: the only way the engine loop talks to a model (real or simulated)."""

from __future__ import annotations

from typing import Protocol

from pitstop.engine.scheduler_output import ExecutorResult, SchedulerOutput


class Executor(Protocol):
    """Runs one step.

    ``execute`` computes the K/V of every scheduled token into the blocks named by the scheduler
    and samples one token for each scheduled request whose ``sample`` flag is set.
    """

    def execute(self, scheduler_output: SchedulerOutput) -> ExecutorResult: ...
