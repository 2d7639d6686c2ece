"""Run one Python callable for the sandbox (as a script, standard library only).

``python -I call_runner.py`` reads ``{"target": "package.module:function", "args": {...}, "path": [...]}`` as
JSON on stdin, puts ``path`` in front of ``sys.path``, calls ``function(**args)`` and writes its return value
as JSON on stdout. An exception prints its traceback on stderr and exits with code 1; a bad request exits 2.
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback
from typing import Any


def load(target: str) -> Any:
    """The object ``target`` (``module:attribute``, dots allowed in both) names. Raises ValueError for a
    malformed target, ImportError or AttributeError when it does not exist."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"target must be 'module:function', got {target!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def main() -> int:
    """Read the request from stdin, run it; the exit code."""
    try:
        request = json.load(sys.stdin)
        sys.path[:0] = [p for p in request.get("path", []) if isinstance(p, str)]
        function = load(request["target"])
        args = request.get("args", {})
    except Exception:  # noqa: BLE001 - any bad request is reported, not raised
        traceback.print_exc()
        return 2
    try:
        result = function(**args)
    except Exception:  # noqa: BLE001 - the callable's failure is its result
        traceback.print_exc()
        return 1
    sys.stdout.write(json.dumps(result, ensure_ascii=False, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
