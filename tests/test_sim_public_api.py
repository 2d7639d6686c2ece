"""``pitstop/sim`` drives the engine only through its public API (checked over the AST, not by grepping text): it
imports no private name of ``pitstop.engine``, builds no ``Request`` of its own, reads no private attribute defined
there, writes no attribute of an engine object, and replaces no method of any object (the old patches:
``kv_manager.block_ids``, ``engine.validate_prompt``, ``cluster._admit``, ``scheduler.num_preemptions``, the KV
import's fake ``Request``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "pitstop"
# attributes through which sim code reaches engine objects (``rep.engine``, ``engine.scheduler``, ...)
ENGINE_HANDLES = {"engine", "scheduler", "kv_manager"}
# engine attributes the engine documents as settable (``LLMEngine``'s docstring)
SETTABLE = {"executor"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _defined_names(paths: list[Path]) -> tuple[set[str], set[str]]:
    """(methods, other attributes) defined by the classes of ``paths`` (``def`` in a class; ``self.x = ...``,
    class-level names)."""
    methods, attrs = set(), set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        methods.add(item.name)
                    elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        attrs.add(item.target.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                    and isinstance(node.value, ast.Name) and node.value.id == "self":
                attrs.add(node.attr)
    return methods, attrs


ENGINE_FILES = sorted((PKG / "engine").glob("*.py"))
SIM_FILES = sorted((PKG / "sim").rglob("*.py"))
ENGINE_METHODS, ENGINE_ATTRS = _defined_names(ENGINE_FILES)
SIM_METHODS, SIM_ATTRS = _defined_names(SIM_FILES)
ENGINE_PRIVATE = {n for n in ENGINE_METHODS | ENGINE_ATTRS if _private(n)} - SIM_METHODS - SIM_ATTRS


def _chain(node: ast.AST) -> list[str]:
    """``a.b.c`` -> ``["a", "b", "c"]`` (calls and subscripts in between are skipped)."""
    out = []
    while True:
        if isinstance(node, ast.Attribute):
            out.append(node.attr)
            node = node.value
        elif isinstance(node, (ast.Call, ast.Subscript)):
            node = node.func if isinstance(node, ast.Call) else node.value
        elif isinstance(node, ast.Name):
            out.append(node.id)
            return out[::-1]
        else:
            return out[::-1]


def violations(source: str, where: str = "<src>") -> list[str]:
    """Every use of engine internals in ``source`` (a module of ``pitstop/sim``)."""
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("pitstop.request", "pitstop.engine.request"):
            found.append(f"{where}:{node.lineno}: builds the engine's own Request records")
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pitstop.engine"):
            for alias in node.names:
                if _private(alias.name) or any(_private(p) for p in node.module.split(".")):
                    found.append(f"{where}:{node.lineno}: imports {node.module}.{alias.name}")
        if isinstance(node, ast.Attribute) and node.attr in ENGINE_PRIVATE:
            found.append(f"{where}:{node.lineno}: reads the engine's private {node.attr}")
    functions = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}

    def function_like(value: ast.AST) -> bool:
        return (isinstance(value, ast.Lambda) or (isinstance(value, ast.Name) and value.id in functions)
                or (isinstance(value, ast.Attribute) and value.attr in ENGINE_METHODS | SIM_METHODS | functions))

    for func in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module))]:
        handles = set()  # local names bound to engine objects, e.g. ``kv = rep.engine.kv_manager``
        for node in ast.walk(func):
            if isinstance(node, ast.Assign):
                chain = _chain(node.value)
                if chain and (ENGINE_HANDLES & set(chain[1:]) or chain[0] in handles):
                    handles.update(t.id for t in node.targets if isinstance(t, ast.Name))
        for node in ast.walk(func):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
            for t in [x for tgt in targets for x in (tgt.elts if isinstance(tgt, ast.Tuple) else [tgt])]:
                if not isinstance(t, ast.Attribute) or (isinstance(t.value, ast.Name) and t.value.id in ("self",
                                                                                                          "cls")):
                    continue
                chain = _chain(t.value)
                engine_object = bool(chain) and (bool(ENGINE_HANDLES & set(chain[1:])) or chain[0] in handles)
                value = getattr(node, "value", None)
                if t.attr in ENGINE_METHODS | SIM_METHODS and (engine_object or function_like(value)):
                    found.append(f"{where}:{t.lineno}: replaces the method {'.'.join(chain + [t.attr])}")
                elif engine_object and t.attr not in SETTABLE:
                    found.append(f"{where}:{t.lineno}: writes the engine's {'.'.join(chain + [t.attr])}")
    return sorted(set(found))


@pytest.mark.parametrize("path", SIM_FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_sim_uses_only_public_engine_api(path):
    assert violations(path.read_text(), str(path.relative_to(PKG))) == []


@pytest.mark.parametrize("snippet,what", [
    ("self.engine.kv_manager.block_ids = _no_block_ids", "replaces the method self.engine.kv_manager.block_ids"),
    ("def f(self):\n    self.engine.validate_prompt = self._validate_fast", "replaces the method"),
    ("def f(cluster):\n    def admit(sreq, now):\n        return 0\n    cluster._admit = admit",
     "replaces the method cluster._admit"),
    ("def f(rep, n):\n    rep.scheduler.num_preemptions = n", "writes the engine's rep.scheduler.num_preemptions"),
    ("def f(rep, q):\n    kv = rep.engine.kv_manager\n    kv.prefix_queries = q", "writes the engine's kv.prefix_q"),
    ("def f(eng):\n    return eng._parents", "reads the engine's private _parents"),
    ("from pitstop.engine.llm_engine import _plain_ids_in_range", "imports pitstop.engine.llm_engine._plain"),
    ("from pitstop.engine.request import Request, RequestStatus", "builds the engine's own Request records"),
])
def test_the_checker_finds_the_old_patches(snippet, what):
    assert any(what in v for v in violations(snippet)), violations(snippet)


def test_the_checker_allows_public_calls_and_own_state():
    ok = ("def f(self, rep, now):\n    rep.engine.report_tool_result('p', 't', 1.0)\n"
          "    kv = rep.engine.kv_manager\n    n = kv.prefix_hits\n    self._work = {}\n    rep.finished = []\n")
    assert violations(ok) == []
