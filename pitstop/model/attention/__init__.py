"""Paged attention backends."""

from pitstop.model.attention.backend import AttentionBackend, get_attention_backend
from pitstop.model.attention.metadata import AttentionMetadata

__all__ = ["AttentionBackend", "AttentionMetadata", "get_attention_backend"]
