"""The attention backend interface (the factory by name is the package's ``get_attention_backend``).

A backend owns the KV-cache layout and the paged attention kernel. The model runner asks it
for the cache shape, builds one :class:`AttentionMetadata` per step (shared by all layers) and
every attention layer calls :meth:`AttentionBackend.forward`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from pitstop.model.attention.metadata import AttentionMetadata


class AttentionBackend(ABC):
    """Paged attention over a block-structured KV cache.

    Batch layout (see :class:`AttentionMetadata`): the ``T`` tokens of a step are flattened
    sequence after sequence, prefills (query length >= 1, listed first by the caller) then
    decodes (query length 1).
    """

    name: str = "abstract"

    @abstractmethod
    def kv_cache_shape(self, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int) -> tuple[int, ...]:
        """Shape of ONE of the two per-layer caches (K or V)."""

    @abstractmethod
    def build_metadata(
        self,
        query_lens: list[int],
        seq_lens: list[int],
        block_tables: list[list[int]],
        block_size: int,
        device: torch.device,
    ) -> AttentionMetadata:
        """Precompute slot mapping, gather indices and masks for one step.

        Args:
            query_lens: new tokens per sequence this step (prefills first, then decodes of 1).
            seq_lens: context length per sequence INCLUDING this step's new tokens; the new
                tokens occupy positions ``seq_lens[i] - query_lens[i] .. seq_lens[i] - 1``.
            block_tables: physical block ids per sequence, covering at least ``seq_lens[i]`` tokens.
            block_size: tokens per block.
            device: device of the returned tensors.

        Raises:
            ValueError: inconsistent lengths, or a block table too short for its sequence.
        """

    @abstractmethod
    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        """Write the new K/V into the cache, then attend causally over each sequence's context.

        Args:
            q: ``[T, Hq, D]`` queries (rotary already applied).
            k, v: ``[T, Hkv, D]`` keys / values of the new tokens (``Hq % Hkv == 0``, GQA).
            kv_cache: ``(k_cache, v_cache)`` each of :meth:`kv_cache_shape`; updated in place.
            meta: this step's metadata from :meth:`build_metadata`.
            scale: softmax scale (usually ``D ** -0.5``).

        Returns:
            ``[T, Hq, D]`` attention output, same dtype as ``q``.
        """
