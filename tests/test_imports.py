"""Imports point down: every module imports on its own, and no two modules import each other.

A cycle between modules only works while one side of it imports lazily (inside a function) or
happens to be imported first; the first test finds the modules that fail as the first import
of a fresh interpreter, the second finds cycles through lazy imports too, before they bite.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import netslim

PACKAGE = Path(netslim.__file__).parent
# Third-party packages the child interpreters share (imported once, before any netslim module).
_PRELOAD = ("import numpy, pydantic, rich, safetensors.torch, torch, torch.fx, transformers, transformers.modeling_utils, "
            "transformers.models.bert.modeling_bert, typer, yaml")

# One interpreter imports the heavy third-party packages once, then forks a child per netslim
# module; each child imports its module as the first netslim import of the process.
_FORKING_CHECK = f"""
import importlib, json, os, sys, traceback
{_PRELOAD}
failures = {{}}
for name in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            code = 0
        except BaseException:
            os.write(write, traceback.format_exc(limit=-3).encode())
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    if os.waitpid(pid, 0)[1] != 0:
        failures[name] = message or "exited with an error"
print(json.dumps(failures))
"""


def _modules() -> list[str]:
    names = []
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_imports_as_the_first_import_of_a_fresh_interpreter():
    modules = _modules()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if hasattr(os, "fork"):
        out = subprocess.run([sys.executable, "-c", _FORKING_CHECK, json.dumps(modules)], capture_output=True,
                             text=True, env=env, timeout=300, check=False)
        assert out.returncode == 0, out.stderr
        failures = json.loads(out.stdout.strip().splitlines()[-1])
    else:  # one interpreter per module
        failures = {}
        for name in modules:
            out = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, env=env,
                                 check=False)
            if out.returncode:
                failures[name] = out.stderr
    assert not failures, "\n\n".join(f"{name}:\n{text}" for name, text in failures.items())


def _resolve(name: str, modules: set[str]) -> str | None:
    """The netslim module ``name`` is, or lies in (``pkg.mod.attr`` -> ``pkg.mod``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(file: Path, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """Every netslim module ``file`` imports, at the top or inside a function (not for type checking)."""
    found: set[str] = set()
    skipped = {id(n) for node in ast.walk(ast.parse(file.read_text(encoding="utf-8")))
               if _type_checking_only(node) for body in node.body for n in ast.walk(body)}
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if id(node) in skipped:
            continue
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
            targets = submodules if len(submodules) == len(node.names) else [base, *submodules]
        found.update(t for t in (_resolve(t, modules) for t in targets) if t is not None and t != name)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, as the list of its modules, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_even_through_lazy_imports():
    files = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = (file, parts[-1] == "__init__")
    modules = set(files)
    graph = {name: _imports(file, name, is_package, modules) for name, (file, is_package) in files.items()}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_installed_package_ships_no_test_models():
    assert not (PACKAGE / "graph" / "testing_models.py").exists()
    assert not [f for f in PACKAGE.rglob("*.py") if f.name.startswith("test")]
