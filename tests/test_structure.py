"""The package's shape: no import cycles among elusive's modules, at any depth of the code."""

from __future__ import annotations

import ast
from pathlib import Path

import elusive

PACKAGE = Path(elusive.__file__).parent


def imports_of(path: Path) -> set[str]:
    """The elusive modules that `path` imports anywhere (module level or inside a function),
    by name: ``from .x import``, ``from . import x``, ``from elusive.x import``,
    ``import elusive.x``."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                out.add(node.module.split(".")[0])
            elif node.level == 1:
                out.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("elusive."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("elusive."):
                    out.add(alias.name.split(".")[1])
    return out


def import_graph() -> dict[str, set[str]]:
    modules = {p.stem: p for p in PACKAGE.glob("*.py")}
    return {name: imports_of(path) & set(modules) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None (depth-first search, colouring nodes)."""
    state: dict[str, str] = {}  # "open" while on the stack, "done" after

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt, [*stack, nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_function_level_and_absolute_imports(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        "from .a import x\nfrom . import b\nimport elusive.c\n"
        "def f():\n    from elusive.d import y\n    from .e.sub import z\n"
    )
    assert imports_of(path) == {"a", "b", "c", "d", "e"}


def test_no_import_cycles_among_elusive_modules():
    graph = import_graph()
    assert "pipeline" in graph and "runs" in graph["pipeline"]  # the walk sees real imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_user_error_is_an_elusive_error_and_the_cli_handles_them_once():
    from elusive.attention import AttentionError
    from elusive.augment import AugmentError
    from elusive.config import ConfigError
    from elusive.errors import ElusiveError
    from elusive.io import CorpusError
    from elusive.models import ModelSpecError
    from elusive.train import TrainError

    for error in (AttentionError, AugmentError, ConfigError, CorpusError, ModelSpecError):
        assert issubclass(error, ElusiveError)
    assert issubclass(TrainError, ElusiveError)
    tree = ast.parse((PACKAGE / "cli.py").read_text("utf-8"))
    handlers = [node for node in ast.walk(tree) if isinstance(node, ast.Try)]
    assert len(handlers) == 1  # _reporting_errors, around every command


def test_a_command_reports_an_elusive_error_as_one_line(tmp_path):
    from typer.testing import CliRunner

    from elusive.cli import app

    result = CliRunner().invoke(app, ["bios", "generate", "--out", str(tmp_path), "--n", "0"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --n must be at least 1, got 0"


def test_reading_scores_augmenting_and_reporting_import_no_torch():
    """The scores file format lives apart from the scoring (`elusive.scores`), so that augment
    and the report read scores without importing torch (seconds on a cold start)."""
    import subprocess
    import sys

    code = (
        "import sys, elusive.scores, elusive.augment, elusive.report; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def calls_by_function(path: Path, name: str) -> set[str]:
    """The functions of `path` (by their own name, the innermost def; ``<module>`` outside
    any) that call `name`, as ``name(...)`` or ``anything.name(...)``."""
    out = set()

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child.name)
                continue
            if isinstance(child, ast.Call):
                called = child.func
                if (isinstance(called, ast.Name) and called.id == name) or (
                    isinstance(called, ast.Attribute) and called.attr == name
                ):
                    out.add(where)
            visit(child, where)

    visit(ast.parse(path.read_text("utf-8")), "<module>")
    return out


def test_only_the_entry_points_ask_which_process_this_is():
    """Who this process is (`elusive.parallel.Dist`) is made at the entry points and passed
    down: accelerate's process state is asked in `Dist.launched` and by the CLI commands alone, and
    `Dist.launched` is called by the CLI commands and the Python API's top-level functions
    only; the functions that compute take a `Dist`."""
    asking, launching = set(), set()
    for path in sorted(PACKAGE.glob("*.py")):
        asking |= {(path.stem, f) for f in calls_by_function(path, "process_state")}
        launching |= {(path.stem, f) for f in calls_by_function(path, "launched")}
    beyond_cli = {(m, f) for m, f in asking if m != "cli"}
    assert beyond_cli == {("parallel", "launched")}
    assert ("parallel", "launched") in asking  # the walk sees real calls
    entry_points = {
        ("pipeline", "run_experiment"),
        ("attention", "score_corpus"),
        ("evaluate", "evaluate_model"),
    }
    assert {(m, f) for m, f in launching if m != "cli"} == entry_points
    assert ("cli", "evaluate_command") in launching


def test_the_call_finder_sees_calls_in_nested_functions_and_methods(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        "x = process_state()\n"
        "def f():\n    def g():\n        return p.process_state()\n    return g\n"
        "class C:\n    def m(self):\n        process_state\n"
    )
    assert calls_by_function(path, "process_state") == {"<module>", "g"}
