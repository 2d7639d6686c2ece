"""One-time conversion of a GGUF file into a standard float32 safetensors HF folder.

transformers dequantizes the GGUF (``from_pretrained(dir, gguf_file=name)``); because
``save_pretrained`` refuses a GGUF-quantized model, the weights are copied into a fresh model
built ``from_config`` with ``quantization_config`` dropped, then saved with the tokenizer
(chat template included). Output goes to a temp folder renamed atomically into place, under a
file lock, so concurrent converters are safe. The network is never used (HF_HUB_OFFLINE=1,
``local_files_only=True``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

_DONE_FILES = ("config.json", "model.safetensors")


def converted_dir(gguf: Path, models_dir: Path) -> Path:
    """Target folder of ``gguf``: ``models_dir/<stem>``."""
    return models_dir / gguf.stem


def is_converted(folder: Path) -> bool:
    """True when ``folder`` holds a finished conversion."""
    return all((folder / f).is_file() for f in _DONE_FILES)


def convert_gguf(gguf: Path, models_dir: Path) -> Path:
    """Return the HF folder for ``gguf``, converting it on first use.

    Raises:
        ValueError: transformers could not load or convert the file (one-line message).
    """
    from filelock import FileLock

    target = converted_dir(gguf, models_dir)
    if is_converted(target):
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models_dir / f".{gguf.stem}.lock")):
        if is_converted(target):
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{gguf.stem}.tmp-", dir=models_dir))
        try:
            _convert_into(gguf, tmp)
            if target.exists():  # stale partial folder from an older, non-atomic writer
                shutil.rmtree(target)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Temporarily set HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _convert_into(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` with transformers and save model (fp32 safetensors) + tokenizer to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, name = str(gguf.parent), gguf.name
    with _offline():
        try:
            loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name, local_files_only=True)
        except Exception as e:  # transformers raises many types for unsupported GGUFs
            msg = " ".join(str(e).split())[:300]
            raise ValueError(f"cannot convert GGUF {str(gguf)!r}: {type(e).__name__}: {msg}") from None
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.float32
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict())
        fresh.generation_config = loaded.generation_config
        fresh.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        _check_chat_template(tokenizer, out)


def _check_chat_template(tokenizer, out: Path) -> None:
    """Make sure a chat template in the GGUF survives the save (write chat_template.jinja if not)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return
    from transformers import AutoTokenizer

    if not getattr(AutoTokenizer.from_pretrained(out, local_files_only=True), "chat_template", None):
        (out / "chat_template.jinja").write_text(template)
