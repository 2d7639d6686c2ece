"""Attention metadata: how the flattened batch of one step maps onto sequences and KV slots."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """Per-step description of a flattened batch, built by an attention backend's ``build_metadata``.

    The step's ``T`` tokens are laid out sequence after sequence: the ``num_prefills``
    prefill sequences first (any query length, with or without earlier context: chunked
    prefill and prefix-cache hits), then the ``num_decodes`` decode sequences (query length 1).

    Attributes:
        slot_mapping: ``[T]`` int64, flat KV slot (``block_id * block_size + offset``) where
            each new token's K and V are written.
        num_prefills / num_prefill_tokens / num_decodes: the layout above.
        backend_data: backend-specific tensors (gather indices, masks), opaque to the runner.
    """

    slot_mapping: torch.Tensor
    num_prefills: int
    num_prefill_tokens: int
    num_decodes: int
    backend_data: dict
