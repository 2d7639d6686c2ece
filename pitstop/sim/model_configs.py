"""Model configs the simulator knows by name (``pitstop/data/model_configs/*.json``, HF ``config.json`` subsets).

A config is turned into ``pitstop.model.shape.ModelShape`` (the same shape the roofline benchmark uses).
"""

from __future__ import annotations

import json
from pathlib import Path

from pitstop.model.shape import ModelShape

CONFIG_DIR = Path(__file__).resolve().parents[1] / "data" / "model_configs"
ALIASES = {"smollm2-135m-instruct": "SmolLM2-135M"}


def known_models() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json") if ".profile" not in p.name)


def model_config_path(name: str | Path) -> Path:
    """Path of the config named ``name`` (file stem, case-insensitive) or ``name`` itself if it is a file."""
    p = Path(name)
    if p.is_file():
        return p
    if p.is_dir() and (p / "config.json").is_file():
        return p / "config.json"
    key = ALIASES.get(str(name).lower(), str(name)).lower()
    for stem in known_models():
        if stem.lower() == key:
            return CONFIG_DIR / f"{stem}.json"
    raise ValueError(f"unknown model config {name!r} (known: {', '.join(known_models())}, or a config.json path)")


def load_model_config(name: str | Path) -> dict:
    """The config dict (HF ``config.json`` keys)."""
    return json.loads(model_config_path(name).read_text())


def load_model_shape(name: str | Path) -> ModelShape:
    return ModelShape.from_hf_config(load_model_config(name))


def canonical_name(name: str | Path) -> str:
    return model_config_path(name).stem
