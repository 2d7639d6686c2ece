"""The executor interface: the only way the engine loop talks to a model (real or simulated)."""

from __future__ import annotations

from typing import Protocol

from pitstop.scheduler_output import ExecutorResult, SchedulerOutput


class Executor(Protocol):
    """Runs one step.

    ``execute`` computes the K/V of every scheduled token into the blocks named by the scheduler
    and samples one token for each scheduled request whose ``sample`` flag is set.
    """

    def execute(self, scheduler_output: SchedulerOutput) -> ExecutorResult: ...


class StepTimeModel(Protocol):
    """Predicts the duration of one step (what ``SimulatedRunner`` needs of a cost model; the simulator's
    ``pitstop.sim.cost_models.CostModel`` implements it)."""

    def step_time(self, scheduler_output: SchedulerOutput) -> float:
        """Seconds the step would take."""
        ...
