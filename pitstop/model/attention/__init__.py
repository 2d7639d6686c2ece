"""Paged attention backends behind one interface, chosen by name (``get_attention_backend``)."""

from pitstop.model.attention.backend import AttentionBackend
from pitstop.model.attention.metadata import AttentionMetadata
from pitstop.model.attention.torch_paged import TorchPagedAttention


def get_attention_backend(name: str = "torch") -> AttentionBackend:
    """Return a backend instance by name (``"torch"``: :class:`TorchPagedAttention`).

    Raises:
        ValueError: unknown backend name.
    """
    backends: dict[str, type[AttentionBackend]] = {"torch": TorchPagedAttention}
    if name not in backends:
        raise ValueError(f"unknown attention backend {name!r} (known: {', '.join(sorted(backends))})")
    return backends[name]()


__all__ = ["AttentionBackend", "AttentionMetadata", "get_attention_backend"]
