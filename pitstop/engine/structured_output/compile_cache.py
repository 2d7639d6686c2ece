"""Grammars compile off the engine thread, each once: a thread pool and a cache of futures keyed by grammar.

A request whose grammar is in the cache (compiled or still compiling) shares that future; a failed compile is
cached too (the same spec fails the same way). Only finished entries are evicted, least recently used first, once
more than ``max_entries`` are held. A compile that overruns a request's limit is not cancelled (a running thread
cannot be): it finishes in the background and later requests for the same grammar use the result.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pitstop.engine.structured_output.backend import GrammarKey


class CompileCache:
    """Compiled grammars by key, compiled in ``num_threads`` worker threads.

    Args:
        compile_fn: ``key -> compiled grammar`` (thread-safe; raises ``ValueError`` for a bad grammar).
        num_threads: worker threads.
        max_entries: finished entries kept (LRU).

    Attributes:
        before_compile: test hook, called in the worker thread with the key before each compile (None: none).
        compile_times_s: seconds of each finished compile, in order (benchmarks read it).
    """

    def __init__(self, compile_fn: Callable[[GrammarKey], Any], num_threads: int = 1,
                 max_entries: int = 512) -> None:
        self._compile_fn = compile_fn
        self._pool: ThreadPoolExecutor | None = None
        self._num_threads = max(1, int(num_threads))
        self._max_entries = max_entries
        self._entries: OrderedDict[GrammarKey, Future] = OrderedDict()
        self.before_compile: Callable[[GrammarKey], None] | None = None
        self.compile_times_s: list[float] = []
        self.hits = 0
        self.misses = 0

    def get(self, key: GrammarKey) -> Future:
        """The future of ``key``'s compiled grammar, submitting the compile on a miss (engine thread only)."""
        fut = self._entries.get(key)
        if fut is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return fut
        self.misses += 1
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._num_threads, thread_name_prefix="pitstop-grammar",
                                            initializer=_lower_thread_priority)
        fut = self._pool.submit(self._compile, key)
        self._entries[key] = fut
        self._evict()
        return fut

    def __contains__(self, key: GrammarKey) -> bool:
        return key in self._entries

    def compiled(self, key: GrammarKey) -> bool:
        """True when ``key`` has compiled successfully (no compile error)."""
        fut = self._entries.get(key)
        return fut is not None and fut.done() and fut.exception() is None

    def __len__(self) -> int:
        return len(self._entries)

    def _compile(self, key: GrammarKey) -> Any:
        if self.before_compile is not None:
            self.before_compile(key)
        t0 = time.perf_counter()
        try:
            return self._compile_fn(key)
        finally:
            self.compile_times_s.append(time.perf_counter() - t0)

    def _evict(self) -> None:
        if len(self._entries) <= self._max_entries:
            return
        for key in [k for k, f in self._entries.items() if f.done()]:
            if len(self._entries) <= self._max_entries:
                break
            del self._entries[key]

    def clear(self) -> None:
        """Forget finished entries (benchmarks measure cold compiles after it)."""
        for key in [k for k, f in self._entries.items() if f.done()]:
            del self._entries[key]

    def shutdown(self) -> None:
        """Stop the worker threads (running compiles finish first)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


_COMPILE_NICENESS = 10
"""Niceness added to each compile thread (Linux): on a CPU box the engine thread's forward pass keeps priority."""


def _lower_thread_priority() -> None:
    """Lower this worker thread's CPU priority by ``_COMPILE_NICENESS`` (Linux threads have their own niceness;
    elsewhere, or when not permitted, nothing changes). llguidance drops the GIL while it compiles, so the engine
    thread is never blocked by a compile; this keeps it from being slowed by one where cores are few."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + _COMPILE_NICENESS))
    except (AttributeError, OSError):
        pass
