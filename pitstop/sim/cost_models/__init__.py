"""Cost models: predicted step time from a batch shape. ``roofline`` (analytical) and ``profiled`` (fitted)."""

from __future__ import annotations

from pathlib import Path

from pitstop.sim.cost_models.interface import CostModel, StepShape
from pitstop.sim.cost_models.profiled import ProfiledCostModel
from pitstop.sim.cost_models.roofline import RooflineCostModel

COST_MODELS = ("roofline", "profiled")


def profile_path(model: str, machine: str = "cpu") -> Path:
    """Where ``pitstop profile`` saves the fit of ``model`` on ``machine``: next to the model config."""
    from pitstop.sim.model_configs import CONFIG_DIR, canonical_name
    try:
        stem = canonical_name(model)
    except ValueError:
        stem = Path(str(model)).name
    return CONFIG_DIR / f"{stem}.profile.{machine}.json"


def build_cost_model(kind: str, model: str, hardware: str | None = None, tp: int = 1,
                     profile: str | Path | None = None) -> CostModel:
    """``roofline``: needs ``hardware`` (name or YAML) and the model config; ``profiled``: the JSON written by
    ``pitstop profile`` (``profile``, default ``profile_path(model)``)."""
    if kind == "roofline":
        from pitstop.sim.hardware import load_hardware
        from pitstop.sim.model_configs import load_model_shape
        return RooflineCostModel(load_hardware(hardware or "H100-SXM"), load_model_shape(model), tp=tp)
    if kind == "profiled":
        path = Path(profile) if profile else profile_path(model)
        if not path.is_file():
            raise ValueError(f"no profile at {path}: run `pitstop profile --model {model}` first")
        return ProfiledCostModel.load(path)
    raise ValueError(f"unknown cost model {kind!r} (known: {', '.join(COST_MODELS)})")


__all__ = ["COST_MODELS", "CostModel", "ProfiledCostModel", "RooflineCostModel", "StepShape", "build_cost_model",
           "profile_path"]
