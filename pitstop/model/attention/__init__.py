"""Paged attention backends behind one interface, chosen by name (``get_attention_backend``)."""

from pitstop.model.attention.backend import AttentionBackend
from pitstop.model.attention.metadata import AttentionMetadata
from pitstop.model.attention.cpu_paged import CpuPagedAttention
from pitstop.model.attention.torch_paged import TorchPagedAttention


def get_attention_backend(name: str = "torch") -> AttentionBackend:
    """Return a backend instance by name.

    ``"torch"``: :class:`TorchPagedAttention` (plain PyTorch ops); ``"cpu"``: :class:`CpuPagedAttention` (decodes
    read KV blocks in place with pitstop's C++ kernel; the torch path where the kernel is unavailable).

    Raises:
        ValueError: unknown backend name.
    """
    backends: dict[str, type[AttentionBackend]] = {"torch": TorchPagedAttention, "cpu": CpuPagedAttention}
    if name not in backends:
        raise ValueError(f"unknown attention backend {name!r} (known: {', '.join(sorted(backends))})")
    return backends[name]()


__all__ = ["AttentionBackend", "AttentionMetadata", "get_attention_backend"]
