"""The longer schema-fuzzing run of issue 14: ``tests/test_server_fuzz.py`` with more generated cases per
operation (``make test`` runs 40). Usage: ``.venv/bin/python benchmarks/fuzz_server.py [EXAMPLES]``
(default 500); prints the (path, status) counts and exits with pytest's status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":
    examples = sys.argv[1] if len(sys.argv) > 1 else "500"
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PITSTOP_FUZZ_EXAMPLES=examples)
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-o", "timeout=3600",
           str(root / "tests" / "test_server_fuzz.py")]
    sys.exit(subprocess.call(cmd, cwd=root, env=env))
