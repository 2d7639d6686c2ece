"""Read a child's stdout and stderr without keeping more than a byte cap of either (the rest is read and dropped,
so a child writing 100 MB costs the parent one read buffer, not 100 MB)."""

from __future__ import annotations

import os
import selectors
import time
from dataclasses import dataclass, field
from typing import IO

_CHUNK = 64 * 1024


@dataclass
class CappedStream:
    """The first ``cap`` bytes read from one pipe; ``truncated`` once more arrived, ``closed`` at EOF."""

    cap: int
    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False
    closed: bool = False

    def feed(self, chunk: bytes) -> None:
        """Keep what fits of ``chunk`` (bytes); an empty chunk is EOF."""
        if not chunk:
            self.closed = True
            return
        room = self.cap - len(self.data)
        if len(chunk) > room:
            self.truncated = True
        self.data += chunk[:max(room, 0)]


class CappedReader:
    """Both pipes of a child, read as data arrives. Closes the pipes in :meth:`close`."""

    def __init__(self, stdout: IO[bytes], stderr: IO[bytes], cap: int) -> None:
        self.out = CappedStream(cap)
        self.err = CappedStream(cap)
        self._pipes = (stdout, stderr)
        self._selector = selectors.DefaultSelector()
        for pipe, stream in zip(self._pipes, (self.out, self.err)):
            os.set_blocking(pipe.fileno(), False)
            self._selector.register(pipe.fileno(), selectors.EVENT_READ, stream)

    @property
    def overflowed(self) -> bool:
        return self.out.truncated or self.err.truncated

    @property
    def at_eof(self) -> bool:
        return self.out.closed and self.err.closed

    def pump(self, timeout: float) -> None:
        """Read what arrives within ``timeout`` seconds (returns at the first data, or after the timeout)."""
        if self.at_eof:
            time.sleep(timeout)
            return
        for key, _ in self._selector.select(timeout):
            stream: CappedStream = key.data
            try:
                chunk = os.read(key.fd, _CHUNK)
            except BlockingIOError:
                continue
            stream.feed(chunk)
            if stream.closed:
                self._selector.unregister(key.fd)

    def drain(self, seconds: float) -> None:
        """Read until both pipes are at EOF, for at most ``seconds`` (a writer may outlive the call)."""
        end = time.monotonic() + seconds
        while not self.at_eof and time.monotonic() < end:
            self.pump(min(0.05, max(end - time.monotonic(), 0.0)))

    def close(self) -> None:
        self._selector.close()
        for pipe in self._pipes:
            pipe.close()
