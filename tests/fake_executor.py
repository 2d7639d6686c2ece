"""A test double of the model runner: it stores token ids in a paged "KV cache" and derives the next
token from the context it reads back through the block table, so wrong block tables, slot mappings
or prefix-cache hits change the output (the real model path is tested in test_engine_*.py)."""

from __future__ import annotations

from pitstop.scheduler_output import ExecutorResult, SchedulerOutput


class PagedEchoExecutor:
    def __init__(self, num_blocks: int, block_size: int, vocab: int = 1000) -> None:
        self.block_size = block_size
        self.vocab = vocab
        self.slots: list[int | None] = [None] * (num_blocks * block_size)
        self.computed_tokens = 0
        self.steps: list[SchedulerOutput] = []

    def execute(self, so: SchedulerOutput) -> ExecutorResult:
        self.steps.append(so)
        sampled = {}
        bs = self.block_size
        for s in so.scheduled:
            req = s.request
            for pos in range(s.start, s.start + s.num_tokens):
                self.slots[s.block_ids[pos // bs] * bs + pos % bs] = req.all_token_ids[pos]
            self.computed_tokens += s.num_tokens
            if s.sample:
                end = s.start + s.num_tokens
                ctx = [self.slots[s.block_ids[p // bs] * bs + p % bs] for p in range(end)]
                assert ctx == req.all_token_ids[:end], f"KV of {req.request_id} does not hold its tokens"
                sampled[req.request_id] = self.next_token(ctx)
        return ExecutorResult(sampled=sampled, step_time_s=0.0)

    kv_bytes_per_block = 64  # what migrating a block "costs" (tests of the byte count)

    def read_kv_blocks(self, block_ids: list[int]) -> list[list[int | None]]:
        """The stored tokens of each block (the KV payload of a migration)."""
        bs = self.block_size
        return [self.slots[b * bs:(b + 1) * bs] for b in block_ids]

    def write_kv_blocks(self, block_ids: list[int], data: list, positions: list[int]) -> None:
        bs = self.block_size
        for b, p in zip(block_ids, positions):
            self.slots[b * bs:(b + 1) * bs] = data[p]

    def next_token(self, ctx: list[int]) -> int:
        return (sum(ctx) * 31 + len(ctx)) % self.vocab


class Clock:
    """A manual clock (seconds)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 0.001
        return self.t
