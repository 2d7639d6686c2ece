"""Async front of the synchronous ``LLMEngine``: one engine thread, per-request asyncio streams.

The engine loop (schedule -> execute -> update) runs in a background thread. The event loop never
touches the engine: it posts commands (add, abort, inspect) to a thread-safe queue and awaits
per-request ``asyncio.Queue`` streams that the engine thread feeds with ``loop.call_soon_threadsafe``.
Text deltas come from the engine's incremental detokenizer (stop-string safe, see
``pitstop/engine/detokenizer.py``). Admission is bounded: at most ``max_num_seqs + max_queue``
requests are outstanding; beyond that ``add_request`` raises ``QueueFull`` (the server answers 429).
Design as vLLM's ``AsyncLLM`` (an engine core loop plus output queues per request), in one process.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from pitstop.engine.detokenizer import IncrementalDetokenizer
from pitstop.engine.llm_engine import LLMEngine, StepFailed
from pitstop.outputs import Logprob, RequestOutput
from pitstop.sampling_params import SamplingParams

log = logging.getLogger("pitstop.server")


class QueueFull(Exception):
    """The admission queue is full (the server answers 429)."""


class EngineDead(Exception):
    """The engine thread has stopped (shutdown or a failed step)."""


@dataclass
class CompletionDelta:
    """What one completion (index ``index`` of ``n``) produced since the previous update.

    Attributes:
        text: new text (stop strings already trimmed; may lag token ids by held-back characters).
        token_ids: new token ids.
        logprobs: one dict (token id -> Logprob) per new token, when requested.
        finish_reason: "stop", "length", "abort" once finished, else None.
        stop_reason: the matched stop string or stop token id.
    """

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


@dataclass
class StreamUpdate:
    """One message on a request's stream: the deltas of a step, plus the full output at the end."""

    deltas: list[CompletionDelta]
    finished: bool = False
    output: RequestOutput | None = None
    error: BaseException | None = None


@dataclass
class _Tracked:
    """Engine-thread state of one request."""

    queue: asyncio.Queue
    detoks: list[IncrementalDetokenizer | None]
    sent: list[int]
    done: list[bool]
    want_logprobs: bool


class _FailOnce:
    """An executor whose next ``execute`` raises, then hands the engine its executor back (fault injection)."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine, self.executor = engine, engine.executor

    def execute(self, so: Any) -> Any:
        self.engine.executor = self.executor
        raise RuntimeError("injected step fault")


class AsyncEngine:
    """Runs ``engine`` in a thread; add and abort requests and read their streams from asyncio.

    Args:
        engine: a built ``LLMEngine`` (owned by this object from now on).
        max_queue: requests allowed to wait beyond the ``max_num_seqs`` that can run at once.
        on_finish: called in the engine thread with each finished request's output (metrics).
        on_death: called in the engine thread if it dies (an error outside a model step); the server
            uses it to exit non-zero instead of serving 503s forever.
    """

    def __init__(self, engine: LLMEngine, max_queue: int = 256,
                 on_finish: Callable[[RequestOutput], None] | None = None,
                 on_death: Callable[[BaseException], None] | None = None) -> None:
        self.engine = engine
        self.max_outstanding = engine.config.max_num_seqs + max(0, max_queue)
        self.on_finish = on_finish
        self.on_death = on_death  # called in the dying engine thread (the server exits non-zero)
        self.num_outstanding = 0  # event-loop side: admitted and not yet released
        self.stats: dict[str, Any] = {}
        self._cmds: deque[Callable[[], None]] = deque()
        self._cv = threading.Condition()
        self._tracked: dict[str, _Tracked] = {}
        self._stop = False
        self._dead: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.idle_tick_s = 1.0  # while idle, pins and idle programs are checked this often (seconds)
        self._paused = False  # test-only (--debug-endpoints): no step runs while set
        self.step_delay_s = 0.0  # test-only: seconds slept before each step
        self._snapshot()

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the engine thread (call from the event loop that will read the streams)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="pitstop-engine", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the thread: unfinished requests are aborted and their streams get ``EngineDead``."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._dead is None

    # ---- event-loop API ----------------------------------------------------------------------
    def check_admission(self, num: int = 1) -> None:
        """Raise ``QueueFull`` unless ``num`` more requests fit; ``EngineDead`` if stopped."""
        if not self.is_running:
            raise EngineDead("the engine is not running (shutting down or failed)")
        if self.num_outstanding + num > self.max_outstanding:
            raise QueueFull(f"{self.num_outstanding} requests outstanding, limit {self.max_outstanding} "
                            f"(max_num_seqs + max_queue)")

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    **engine_kwargs: Any) -> "RequestHandle":
        """Admit a request and return its handle; the caller must ``close()`` it when done.

        ``engine_kwargs`` go to ``LLMEngine.add_request`` (priority, cache_salt, program_id,
        is_last_turn, tool_name).

        Raises:
            QueueFull / EngineDead: see ``check_admission``. Validation errors arrive on the stream.
        """
        self.check_admission()
        self.num_outstanding += 1
        queue: asyncio.Queue = asyncio.Queue()
        self._post(lambda: self._add(request_id, prompt_token_ids, params, engine_kwargs, queue))
        return RequestHandle(self, request_id, queue, prompt_token_ids)

    def _release(self, request_id: str, abort: bool) -> None:
        self.num_outstanding -= 1
        if abort:
            self._post(lambda: self._abort(request_id))

    async def call(self, fn: Callable[[LLMEngine], Any]) -> Any:
        """Run ``fn(engine)`` in the engine thread between steps and return its result."""
        if not self.is_running:
            raise EngineDead("the engine is not running")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def run() -> None:
            try:
                res = fn(self.engine)
                loop.call_soon_threadsafe(_set_result, fut, res, None)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                loop.call_soon_threadsafe(_set_result, fut, None, e)

        self._post(run)
        return await fut

    # ---- engine thread ------------------------------------------------------------------------
    def _post(self, cmd: Callable[[], None]) -> None:
        with self._cv:
            self._cmds.append(cmd)
            self._cv.notify()

    def _push(self, tracked: _Tracked, update: StreamUpdate) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(tracked.queue.put_nowait, update)

    def _add(self, rid: str, ids: list[int], params: SamplingParams, engine_kwargs: dict,
             queue: asyncio.Queue) -> None:
        eng = self.engine
        try:
            eng.add_request(rid, None, params, prompt_token_ids=ids, **engine_kwargs)
        except Exception as e:  # noqa: BLE001 - validation errors go back to the caller
            assert self._loop is not None
            self._loop.call_soon_threadsafe(queue.put_nowait, StreamUpdate([], error=e))
            return
        self._tracked[rid] = _Tracked(queue=queue, detoks=[eng.detokenizer(rid, i) for i in range(params.n)],
                                      sent=[0] * params.n, done=[False] * params.n,
                                      want_logprobs=params.logprobs is not None)

    def _abort(self, rid: str) -> None:
        if self._tracked.pop(rid, None) is not None:
            self.engine.abort_request(rid)

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as e:  # noqa: BLE001 - the thread is dying: say so, never hang
            self._dead = e
            log.critical("engine thread died: %r", e, exc_info=e)
            try:
                self._fail_all(EngineDead("the engine stopped (see the server log)"))
            finally:
                if self.on_death is not None:
                    self.on_death(e)

    def _serve(self) -> None:
        eng = self.engine
        while True:
            with self._cv:
                while not self._cmds and not self._stop and (self._paused or not eng.has_unfinished_requests()):
                    if not self._cv.wait(self.idle_tick_s):
                        break  # idle: expire pins and idle programs below
                cmds, self._cmds = list(self._cmds), deque()
                stopping = self._stop
            for cmd in cmds:
                cmd()
            if stopping:
                self._fail_all(EngineDead("the server is shutting down"))
                self._snapshot()
                return
            if self._paused or not eng.has_unfinished_requests():
                eng.expire_programs()
                self._snapshot()
                continue
            if self.step_delay_s:
                time.sleep(self.step_delay_s)
            try:
                outputs = eng.step()
            except StepFailed as e:  # the executor failed: only that step's requests end
                log.error("engine step failed; aborted %s", e.request_ids, exc_info=e.__cause__)
                self._fail_some(e.request_ids, RuntimeError("engine step failed (see the server log)"))
                outputs = []
            except Exception as e:  # noqa: BLE001 - fail the in-flight requests, keep serving
                log.exception("engine step failed")
                self._fail_all(RuntimeError(f"engine step failed ({type(e).__name__}; see the server log)"))
                outputs = []
            for out in outputs:
                self._dispatch(out)
            self._snapshot()

    def _dispatch(self, out: RequestOutput) -> None:
        tracked = self._tracked.get(out.request_id)
        if tracked is None:
            return  # aborted earlier
        if out.error is not None:  # the engine ended this request alone (e.g. its detokenization failed)
            self._tracked.pop(out.request_id, None)
            own = out.error_type == "invalid_request_error"  # its own input (a grammar that did not compile): a 400
            if not own:  # the 500's body names no cause: the log does
                log.error("request %s failed in the engine: %s", out.request_id, out.error)
            self._push(tracked, StreamUpdate([], error=(ValueError if own else RuntimeError)(out.error)))
            return
        deltas = []
        for i, comp in enumerate(out.outputs):
            if tracked.done[i]:
                continue
            start = tracked.sent[i]
            new_ids = comp.token_ids[start:]
            tracked.sent[i] = len(comp.token_ids)
            detok = tracked.detoks[i]
            text = detok.get_delta() if detok is not None else ""
            lps = (comp.logprobs or [])[start:] if tracked.want_logprobs else None
            if comp.finish_reason is not None:
                tracked.done[i] = True
            if new_ids or text or comp.finish_reason is not None:
                deltas.append(CompletionDelta(i, text, list(new_ids), lps, comp.finish_reason, comp.stop_reason))
        if out.finished:
            self._tracked.pop(out.request_id, None)
            if self.on_finish is not None:
                try:
                    self.on_finish(out)
                except Exception:  # noqa: BLE001 - metrics must never break serving
                    log.exception("on_finish failed")
        self._push(tracked, StreamUpdate(deltas, finished=out.finished, output=out if out.finished else None))

    def _fail_some(self, request_ids: list[str], err: BaseException) -> None:
        """Post ``err`` on the streams of ``request_ids`` (already aborted in the engine)."""
        for rid in request_ids:
            tracked = self._tracked.pop(rid, None)
            if tracked is not None:
                self._push(tracked, StreamUpdate([], error=err))

    def set_paused(self, paused: bool) -> None:
        """Test-only: hold the engine between steps (requests are still admitted and aborted, none runs)."""
        self._post(lambda: setattr(self, "_paused", paused))

    def set_step_delay(self, seconds: float) -> None:
        """Test-only: sleep ``seconds`` before every step, a lower bound on each step's duration."""
        self._post(lambda: setattr(self, "step_delay_s", max(0.0, float(seconds))))

    def inject_fault(self, kind: str) -> None:
        """Test-only (``--debug-endpoints``): ``step`` makes the executor raise in the next step; ``thread``
        raises in the engine thread outside any step, which kills it.

        Raises:
            ValueError: an unknown ``kind``.
        """
        if kind == "step":
            self._post(lambda: setattr(self.engine, "executor", _FailOnce(self.engine)))
        elif kind == "thread":
            def die() -> None:
                raise RuntimeError("injected engine-thread fault")
            self._post(die)
        else:
            raise ValueError(f"fault kind must be 'step' or 'thread', got {kind!r}")

    def _fail_all(self, err: BaseException) -> None:
        ids = list(self._tracked)
        for rid in ids:
            tracked = self._tracked.pop(rid)
            self.engine.abort_request(rid)
            self._push(tracked, StreamUpdate([], error=err))
        if isinstance(err, EngineDead):
            self._dead = err

    def _snapshot(self) -> None:
        """Copy the gauges the metrics endpoint reads (so it never touches live engine state)."""
        eng = self.engine
        kv, sched = eng.kv_manager, eng.scheduler
        self.stats = {
            "num_running": sched.num_running, "num_waiting": sched.num_waiting,
            "num_preemptions": sched.num_preemptions, "kv_num_blocks": kv.num_blocks,
            "kv_free_blocks": kv.num_free_blocks, "kv_used_blocks": kv.num_blocks - kv.num_free_blocks,
            "kv_usage": kv.usage, "prefix_queries": kv.prefix_queries, "prefix_hits": kv.prefix_hits,
            **{f"program_{k}": v for k, v in sched.programs.totals.as_dict().items()},
            "kv_pinned_blocks": kv.num_pinned_blocks, "num_programs": len(sched.programs.programs),
            "programs_idle_ended": sched.programs.idle_ended,
        }
        if eng.drafter is not None:
            st = eng.drafter.stats
            self.stats.update(st.as_dict(), spec_drafted_per_position=list(st.drafted_per_position),
                              spec_accepted_per_position=list(st.accepted_per_position))


def _set_result(fut: asyncio.Future, res: Any, err: BaseException | None) -> None:
    if fut.done():
        return
    if err is not None:
        fut.set_exception(err)
    else:
        fut.set_result(res)


class RequestHandle:
    """A caller's view of one admitted request: its updates, and ``close()`` (aborts if unfinished).

    ``close`` is idempotent and must be called exactly when the caller stops listening (normal end,
    error, client disconnect); an unfinished request is then aborted and its KV blocks freed.
    """

    def __init__(self, engine: AsyncEngine, request_id: str, queue: asyncio.Queue,
                 prompt_token_ids: list[int]) -> None:
        self.engine, self.request_id, self._queue = engine, request_id, queue
        self.prompt_token_ids = prompt_token_ids
        self.finished = False
        self.closed = False

    async def updates(self) -> AsyncIterator[StreamUpdate]:
        """Yield updates until the request finishes.

        Raises:
            EngineDead / ValueError / RuntimeError: an error posted on the stream (request ended).
        """
        while not self.finished:
            update: StreamUpdate = await self._queue.get()
            if update.error is not None:
                self.finished = True
                raise update.error
            self.finished = update.finished
            yield update

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.engine._release(self.request_id, abort=not self.finished)
