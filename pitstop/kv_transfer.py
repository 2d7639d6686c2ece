"""A program's KV moved between engines (Llumnix-style live migration of a waiting program, Sun et al., OSDI'24):
what the source engine exports and the target engine imports.

The blocks are a program's pin: the full, prefix-cached blocks its last turn left between turns. ``token_ids``
and ``salt`` rebuild the chained block hashes on the target (``pitstop.engine.block_pool.prefix_block_hashes``
names them identically in every process), so the program's next turn finds them there by prefix lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ProgramKV:
    """A waiting program's pinned KV, exported by ``LLMEngine.export_program_kv``.

    Attributes:
        program_id: the program (the engine's id).
        token_ids: tokens of the pinned blocks (``num_blocks * block_size`` tokens, prefix order).
        salt: the first block's hash extra (``stable_salt`` of the turn's ``cache_salt``; 0: none).
        block_size: tokens per block.
        data: the executor's payload of the blocks' K/V (``read_kv_blocks``; None from a simulated executor).
        num_bytes: bytes of K/V the blocks hold (what moving them costs; set also without ``data``).
        ttl_s: seconds left on the pin's TTL at export (the target pins for as long).
        tool_name: the tool the pin waits for.
    """

    program_id: str
    token_ids: list[int]
    salt: int
    block_size: int
    data: Any
    num_bytes: int
    ttl_s: float
    tool_name: str = "unknown"

    @property
    def num_blocks(self) -> int:
        return len(self.token_ids) // self.block_size
