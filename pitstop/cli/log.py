"""Console logging of the ``pitstop`` logger for the interactive subcommands (the startup kernel line)."""

from __future__ import annotations

import logging
import sys


def show_engine_log(level: int = logging.INFO) -> None:
    """Print the ``pitstop`` logger's records (e.g. the dtype/kernel choice at load) to stderr, bare.

    Only that logger: libraries' INFO records stay hidden. Idempotent. ``pitstop serve`` configures
    logging itself (``--log-level``) and does not call this.
    """
    logger = logging.getLogger("pitstop")
    if any(getattr(h, "_pitstop_console", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._pitstop_console = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
