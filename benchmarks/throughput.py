#!/usr/bin/env python
"""Offline throughput benchmark of pitstop vs transformers (see benchmarks/README.md).

Standalone equivalent of ``pitstop bench throughput``; every option is documented by ``--help``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pitstop.bench.throughput import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
