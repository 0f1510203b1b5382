"""The package's shape: the stages' subpackages in pipeline order, no import cycles among
elusive's modules, at any depth of the code."""

from __future__ import annotations

import ast
from pathlib import Path

import elusive

PACKAGE = Path(elusive.__file__).parent

LAYERS = ("shared", "corpus", "scoring", "augment", "training", "evaluation", "experiment", "top")
"""Where each module sits, in pipeline order: the top-level modules every stage uses
(errors, io, options, models, ...), one subpackage per stage, then what uses them all: the
command line and the tiny models of tests and benchmarks. A module imports from its own layer
and the ones before it only."""


def module_names(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module under `root` by its dotted name below the package (``corpus.records``; a
    subpackage's ``__init__`` by the subpackage's name)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """The elusive modules (of `modules`) that module `name` at `path` imports anywhere
    (module level or inside a function): ``from elusive.x.y import z``, ``from elusive.x
    import y`` (module y), ``import elusive.x.y``, and the relative forms of each."""
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    out = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and node.module.startswith("elusive."):
                target = node.module.removeprefix("elusive.")
            else:
                continue
            out.add(target)
            out.update(f"{target}.{alias.name}".lstrip(".") for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("elusive."):
                    out.add(alias.name.removeprefix("elusive."))
    return out & modules


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    modules = module_names(root)
    return {name: imports_of(path, name, set(modules)) - {name} for name, path in modules.items()}


def layer(name: str) -> str:
    top = name.split(".")[0]
    if top in ("cli", "cli_options", "tiny"):
        return "top"
    return top if top in LAYERS else "shared"


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


def test_the_graph_sees_function_level_relative_and_absolute_imports(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    for name in ("a", "b", "c", "d"):
        (tmp_path / f"{name}.py").write_text("")
        (tmp_path / "pkg" / f"{name}.py").write_text("")
    (tmp_path / "pkg" / "m.py").write_text(
        "from .a import x\nfrom . import b\nimport elusive.c\n"
        "def f():\n    from elusive.pkg.d import y\n    from ..d import z\n"
    )
    graph = import_graph(tmp_path)
    assert graph["pkg.m"] == {"pkg", "pkg.a", "pkg.b", "c", "pkg.d", "d"}
    assert graph["pkg.a"] == set()


def test_no_import_cycles_among_elusive_modules():
    graph = import_graph()
    assert "experiment.runs" in graph["experiment.pipeline"]  # the walk sees real imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_each_module_imports_its_own_layer_and_earlier_ones_only():
    graph = import_graph()
    assert {layer(name) for name in graph} == set(LAYERS)  # every layer has modules
    upward = sorted(
        f"{name} ({layer(name)}) imports {dep} ({layer(dep)})"
        for name, deps in graph.items()
        for dep in deps
        if LAYERS.index(layer(dep)) > LAYERS.index(layer(name))
    )
    assert not upward, "\n".join(upward)


def test_every_user_error_is_an_elusive_error_and_the_cli_handles_them_once():
    from elusive.augment.dropout import AugmentError
    from elusive.errors import ElusiveError
    from elusive.experiment.config import ConfigError
    from elusive.io import CorpusError
    from elusive.models import ModelSpecError
    from elusive.scoring.attention import AttentionError
    from elusive.training.train import TrainError

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
    """The scores file format lives apart from the scoring (`elusive.scoring.scores`), so that
    augment and the report read scores without importing torch (seconds on a cold start)."""
    import subprocess
    import sys

    code = (
        "import sys, elusive.scoring.scores, elusive.augment.dropout, elusive.experiment.report; "
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
    for path in sorted(PACKAGE.rglob("*.py")):
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
