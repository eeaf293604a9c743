"""The dependency direction is part of the build: gateway -> schema -> resolvers, and the
simulators a leaf only the demo and the ``sim`` command import (``[tool.importlinter]`` in
pyproject.toml). The suite runs the same ``lint-imports`` as ``.ci/run``."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _lint_imports() -> list[str]:
    found = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "importlinter.cli"]


def test_import_contracts_are_kept() -> None:
    run = subprocess.run([*_lint_imports(), "--no-cache"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 kept, 0 broken" in run.stdout, run.stdout


def test_no_import_inside_a_function_between_the_layers() -> None:
    """An import inside a function is how a cycle used to be dodged; none is left (imports
    under ``if TYPE_CHECKING:`` are for annotations only and are not counted)."""
    nested = re.compile(r"^(\s+)(from|import) (gateway|schema|resolvers)\b")
    found = []
    for package in ("gateway", "schema", "resolvers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            in_type_checking = False
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.startswith("if TYPE_CHECKING:"):
                    in_type_checking = True
                    continue
                if line and not line[0].isspace():
                    in_type_checking = False
                if nested.match(line) and not in_type_checking:
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "imports inside functions:\n" + "\n".join(found)


def test_the_composition_root_wires_nothing_after_construction() -> None:
    """``gateway.app.build`` gives every part what it uses as constructor arguments: no
    attribute of a built object is assigned afterwards (``graph.sync = ...``,
    ``holds.bind(...)``-style late wiring), and no ``bind`` method is called."""
    tree = ast.parse((ROOT / "gateway" / "app.py").read_text(encoding="utf-8"))
    [build] = [node for node in tree.body
               if isinstance(node, ast.AsyncFunctionDef) and node.name == "build"]
    late = [f"line {node.lineno}: {ast.unparse(node)}" for node in ast.walk(build)
            if (isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign)
                and any(isinstance(t, ast.Attribute)
                        for t in (node.targets if isinstance(node, ast.Assign)
                                  else [node.target])))
            or (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "bind")]
    assert late == []


def test_no_merge_conflict_markers_are_left_in_the_tree() -> None:
    marker = re.compile(r"^(<<<<<<< |>>>>>>> |=======$)", re.M)
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=False).stdout.split()
    found = [name for name in tracked
             if name.endswith((".py", ".md", ".toml", ".yml", ".yaml", ".json", ".graphql"))
             and (ROOT / name).is_file()
             and marker.search((ROOT / name).read_text(encoding="utf-8", errors="replace"))]
    assert found == []
