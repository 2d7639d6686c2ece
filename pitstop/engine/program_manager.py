"""Program bookkeeping for the scheduler: the program table, KV pins between turns, their expiry
and release, tool-duration learning and counters.

Pins (Continuum, arXiv 2511.02230): when a non-final turn of a program ends, its cached full KV
blocks stay referenced by the program for a TTL chosen by the TTL policy, so the next turn finds
them through the prefix cache instead of re-prefilling the whole context. A pinned block is never
evicted by LRU; a pin ends when the next turn is admitted (a *hit*), when its TTL runs out (an
*expiry*), when the engine needs the memory (a *release*: running requests must grow, or nothing
else can run), or when the program ends.

Programs end when their last turn finishes, when the client ends them (``end``; a turn still running
then pins nothing and the program goes with it), or when they sit idle (no running or waiting turn)
for ``idle_timeout`` seconds: clients crash and never say goodbye. ``max_programs`` bounds the table:
a new program over the bound ends the least recently active idle one, or is refused.
"""

from __future__ import annotations

from pitstop.engine.kv_cache_manager import KVCacheManager
from pitstop.program import MAX_TOOL_DURATIONS, Program, ProgramStats
from pitstop.request import Request, RequestStatus
from pitstop.policies.ttl_base import PinContext, TTLPolicy

_EWMA = 0.2


class TooManyPrograms(Exception):
    """A new program would exceed ``max_programs`` and no program is idle (the server answers 429)."""


class ProgramManager:
    """Args: kv: the KV cache manager; ttl_policy: decides pin lifetimes; idle_timeout: seconds after
    which a program with no running or waiting turn is ended (None: never); max_programs: most live
    programs (None: unbounded)."""

    def __init__(self, kv: KVCacheManager, ttl_policy: TTLPolicy, idle_timeout: float | None = None,
                 max_programs: int | None = None) -> None:
        self.kv = kv
        self.ttl_policy = ttl_policy
        self.idle_timeout = idle_timeout
        self.max_programs = max_programs
        self.programs: dict[str, Program] = {}
        self.totals = ProgramStats()
        self.idle_ended = 0  # programs ended by the idle timeout or to make room (engine-wide counter)
        self._next_idle_check = float("-inf")  # the idle scan runs at most once a second (seconds)
        self.prefill_rate = 2000.0  # tokens/s, EWMA over steps with prefill
        self.queue_delay = 0.0  # seconds, EWMA over admissions
        self.gap_overhead = 0.0  # seconds, EWMA of (gap between turns - reported tool time); see PinContext
        self._pinned: dict[str, Program] = {}

    # ---- lifecycle of turns ------------------------------------------------------------------
    def check_new_program(self, program_id: str | None) -> None:
        """Make room for ``program_id`` if it is new and the table is full: end the least recently
        active idle program.

        Raises:
            TooManyPrograms: the table holds ``max_programs`` programs and none is idle.
        """
        if program_id is None or program_id in self.programs or self.max_programs is None:
            return
        if len(self.programs) < self.max_programs:
            return
        idle = [p for p in self.programs.values() if p.active == 0]
        if not idle:
            raise TooManyPrograms(f"{len(self.programs)} programs are live (max_programs={self.max_programs}) "
                                  f"and none is idle")
        self.end(min(idle, key=lambda q: q.last_active).program_id)
        self.idle_ended += 1

    def on_arrival(self, req: Request) -> None:
        """A turn arrived: create the program on its first turn; learn the tool time from the gap."""
        if req.program_id is None:
            return
        p = self.programs.get(req.program_id)
        if p is None:
            p = self.programs[req.program_id] = Program(req.program_id, req.arrival_time)
        elif p.last_turn_end is not None and not p.tool_reported and p.last_tool is not None:
            self.ttl_policy.observe_tool(p.last_tool, req.arrival_time - p.last_turn_end)
        elif p.last_turn_end is not None and p.tool_reported:
            outside = max(0.0, req.arrival_time - p.last_turn_end - p.gap_tool_s)
            self.gap_overhead += _EWMA * (outside - self.gap_overhead)
        p.tool_reported, p.gap_tool_s = False, 0.0
        p.ended = False  # a turn after an end keeps the id in use
        p.turn_waiting = p.has_pin
        p.last_active = max(p.last_active, req.arrival_time)
        p.active += 1
        self._count(p, "turns")

    def on_admit(self, req: Request, num_cached: int, now: float) -> None:
        """First admission of a turn: count reuse / re-prefill; a pin is consumed by its next turn."""
        self.queue_delay += _EWMA * ((now - req.arrival_time) - self.queue_delay)
        p = self.programs.get(req.program_id) if req.program_id is not None else None
        if p is None:
            return
        self._count(p, "reused_tokens", num_cached)
        if p.last_context_len:
            self._count(p, "reprefilled_tokens", max(0, min(req.num_prompt_tokens, p.last_context_len) - num_cached))
        if p.has_pin:
            if num_cached >= p.pin_tokens:
                self._count(p, "pin_hits")
            self._unpin(p)

    def on_compute(self, req: Request, num_tokens: int) -> None:
        p = self.programs.get(req.program_id) if req.program_id is not None else None
        if p is not None:
            p.attained_service += num_tokens

    def on_finish(self, req: Request, status: RequestStatus, now: float) -> bool:
        """A turn ended. Returns True if its blocks were taken by a pin (else the caller frees them)."""
        p = self.programs.get(req.program_id) if req.program_id is not None else None
        if p is None:
            return False
        p.active -= 1
        p.last_active = max(p.last_active, now)
        if status is RequestStatus.FINISHED_ABORTED:
            if p.active == 0:
                p.turn_waiting = False  # the waiting turn is gone: its pin may expire again
            return False
        p.last_turn_end, p.last_tool = now, req.tool_name or "unknown"
        p.last_context_len = req.num_tokens
        if req.is_last_turn or p.ended:
            return False
        return self._pin(p, req, now)

    def after_finish(self, req: Request) -> None:
        """Drop a program once its last turn (or any turn, once ended) has finished and nothing of it runs."""
        p = self.programs.get(req.program_id) if req.program_id is not None else None
        if p is not None and (req.is_last_turn or p.ended) and p.active == 0:
            self.end(p.program_id)

    # ---- pins ----------------------------------------------------------------------------------
    def _context(self, p: Program, tool: str, num_blocks: int, now: float) -> PinContext:
        pool = self.kv.pool
        return PinContext(tool_name=tool, context_tokens=num_blocks * self.kv.block_size, num_blocks=num_blocks,
                          total_blocks=pool.num_blocks, usage=pool.num_used_blocks / pool.num_blocks,
                          prefill_rate=self.prefill_rate, queue_delay=self.queue_delay, now=now,
                          gap_overhead=self.gap_overhead)

    def _pin(self, p: Program, req: Request, now: float) -> bool:
        held = self.kv.req_blocks.get(req.request_id, [])
        n = 0
        while n < len(held) and held[n].block_hash is not None:
            n += 1
        if n == 0:
            return False
        ttl = self.ttl_policy.ttl(self._context(p, p.last_tool, n, now))
        if ttl <= 0:
            return False
        if p.has_pin:
            self._unpin(p)
        p.pinned = self.kv.pin_blocks(req)
        p.pin_tokens = len(p.pinned) * self.kv.block_size
        p.pin_tool, p.pin_created, p.pin_expiry = p.last_tool, now, now + ttl
        self._pinned[p.program_id] = p
        self._count(p, "pins")
        return True

    def adopt_pin(self, program_id: str, blocks: list, ttl_s: float, tool_name: str, now: float) -> None:
        """A migrated program's KV arrived (``blocks``: one reference each, counted as pinned by the KV manager):
        the program is created here if new (first arrival ``now``) and pins them for ``ttl_s`` seconds, as its
        own last turn would have; a pin it held before is released."""
        p = self.programs.get(program_id)
        if p is None:
            p = self.programs[program_id] = Program(program_id, first_arrival=now, last_active=now)
        if p.has_pin:
            self._unpin(p)
        p.pinned = list(blocks)
        p.pin_tokens = len(blocks) * self.kv.block_size
        p.last_tool = tool_name
        p.pin_tool, p.pin_created, p.pin_expiry = tool_name, now, now + max(ttl_s, 0.0)
        self._pinned[program_id] = p

    def retag(self, program_id: str, tool_name: str, now: float) -> None:
        """The tool of a pinned program became known (parsed from its output): recompute the TTL."""
        p = self.programs.get(program_id)
        if p is None:
            return
        p.last_tool = tool_name
        if p.has_pin and p.pin_tool != tool_name:
            ttl = self.ttl_policy.ttl(self._context(p, tool_name, len(p.pinned), now))
            p.pin_tool, p.pin_expiry = tool_name, p.pin_created + max(ttl, 0.0)

    def _unpin(self, p: Program) -> None:
        self.kv.release_pin(p.pinned)
        p.pinned, p.pin_tokens, p.turn_waiting = [], 0, False
        self._pinned.pop(p.program_id, None)

    def expire(self, now: float) -> None:
        """Release every pin whose TTL has run out, except those whose next turn already arrived
        (the TTL bounds the tool's run; a turn waiting for admission is about to use the pin); end
        programs idle for ``idle_timeout`` seconds."""
        for p in [p for p in self._pinned.values() if p.pin_expiry <= now and not p.turn_waiting]:
            self._unpin(p)
            self._count(p, "pin_expiries")
        if self.idle_timeout is None or now < self._next_idle_check:
            return
        self._next_idle_check = now + min(1.0, self.idle_timeout)
        limit = now - self.idle_timeout
        for p in [p for p in self.programs.values() if p.active == 0 and p.last_active <= limit]:
            self.end(p.program_id)
            self.idle_ended += 1

    def release_one(self, exclude: str | None = None) -> bool:
        """Memory pressure: release the pin that would expire last, pins whose next turn is already
        waiting last of all. Returns False if none."""
        cands = [p for p in self._pinned.values() if p.program_id != exclude]
        if not cands:
            return False
        p = max(cands, key=lambda q: (not q.turn_waiting, q.pin_expiry))
        self._unpin(p)
        self._count(p, "pin_releases")
        return True

    @property
    def has_pins(self) -> bool:
        return bool(self._pinned)

    # ---- client reports ------------------------------------------------------------------------
    def report_tool(self, program_id: str, tool_name: str, duration_s: float, now: float | None = None) -> None:
        """A client reports a finished tool run (duration in seconds; ``now``: engine clock, marks activity)."""
        self.ttl_policy.observe_tool(tool_name, duration_s)
        p = self.programs.get(program_id)
        if p is not None:
            p.tool_reported = True
            p.gap_tool_s = max(p.gap_tool_s, duration_s)  # parallel tools overlap: the longest bounds the gap
            self._count(p, "tool_reports")
            p.tool_durations = [*p.tool_durations[-(MAX_TOOL_DURATIONS - 1):], (tool_name, duration_s)]
            if now is not None:
                p.last_active = max(p.last_active, now)

    def end(self, program_id: str) -> bool:
        """End a program: release its pin at once; forget it now if none of its turns is running, else
        when the last one ends (which then pins nothing). False if the program is unknown."""
        p = self.programs.get(program_id)
        if p is None:
            return False
        if p.has_pin:
            self._unpin(p)
        if p.active == 0:
            del self.programs[program_id]
        else:
            p.ended = True
        return True

    def observe_step(self, num_prefill_tokens: int, step_time_s: float) -> None:
        """Update the prefill-rate estimate (tokens/s) from a step with prefill tokens."""
        if num_prefill_tokens >= 16 and step_time_s > 0:
            self.prefill_rate += _EWMA * (num_prefill_tokens / step_time_s - self.prefill_rate)

    def _count(self, p: Program, name: str, n: int = 1) -> None:
        setattr(p.stats, name, getattr(p.stats, name) + n)
        setattr(self.totals, name, getattr(self.totals, name) + n)

    def pinned_refs(self) -> int:
        return sum(len(p.pinned) for p in self._pinned.values())
