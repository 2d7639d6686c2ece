"""The longer schema-fuzzing run of issue 14: ``tests/test_server_fuzz.py`` with more generated cases per
operation (``make test`` runs 40). Usage: ``.venv/bin/python benchmarks/fuzz_server.py [EXAMPLES]``
(default 500); prints the (path, status) counts and exits with pytest's status. Each run draws fresh cases (a
random ``PITSTOP_FUZZ_SEED``, printed so a failing run can be repeated) where ``make test`` runs a fixed set."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":
    examples = sys.argv[1] if len(sys.argv) > 1 else "500"
    root = Path(__file__).resolve().parents[1]
    fuzz_seed = os.environ.get("PITSTOP_FUZZ_SEED") or str(random.randrange(2**32))
    print(f"PITSTOP_FUZZ_SEED={fuzz_seed}", flush=True)
    env = dict(os.environ, PITSTOP_FUZZ_EXAMPLES=examples, PITSTOP_FUZZ_SEED=fuzz_seed)
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-o", "timeout=3600",
           str(root / "tests" / "test_server_fuzz.py")]
    sys.exit(subprocess.call(cmd, cwd=root, env=env))
