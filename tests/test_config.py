"""Run configs: one schema made from the module configs, checked whole when loaded."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import elusive
from elusive.augment.dropout import AugmentConfig
from elusive.cli import app
from elusive.evaluation.evaluate import EvalConfig
from elusive.experiment.config import (
    AttentionSection,
    AugmentSection,
    ConfigError,
    RunConfig,
    TrainSection,
    load_config,
    options,
    safe_yaml,
)
from elusive.scoring.attention import AttentionConfig
from elusive.training.train import TrainConfig


def write(tmp_path, **sections):
    """A small valid config (models are hub ids: loading checks a spec's form, fetches none)."""
    config = {
        "out": str(tmp_path / "run"),
        "corpus": {"bios": {"n": 8}},
        "models": {"large": "org/large-model", "small": "org/small-model"},
        "augment": {"policies": ["none", "contrast"], "alpha": [0.7], "beta": [0.03]},
        "train": {"lr": [1e-3], "epochs": [1, 2]},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"evaluate": {"shot": 5}}, "evaluate.shot: unknown key (did you mean 'shots'?)"),
        ({"evaluate": {"shots": -1}}, "evaluate.shots: must be >= 0, got -1"),
        ({"evaluate": {"max_new_tokens": 0}}, "evaluate.max_new_tokens: must be >= 1, got 0"),
        ({"evaluate": {"template": "Q:"}}, "evaluate.template: must contain {question}"),
        ({"train": {"batch_size": 0}}, "train.batch_size: must be >= 1, got 0"),
        ({"train": {"lr": [1e-3, 0]}}, "train.lr[1]: must be > 0, got 0.0"),
        ({"train": {"lr": [0]}}, "train.lr[0]: must be > 0, got 0.0"),
        ({"train": {"epochs": [2, 0]}}, "train.epochs[1]: must be >= 1, got 0"),
        ({"train": {"lr": []}}, "train.lr: is empty"),
        ({"train": {"schedule": "cosin"}}, "train.schedule: must be one of"),
        ({"train": {"weight_decay": -1}}, "train.weight_decay: must be >= 0, got -1.0"),
        ({"train": {"lora_dropuot": 0.1}}, "train.lora_dropuot: unknown key (did you mean"),
        ({"train": {"packing": "yes"}}, "train.packing: expected true or false, got 'yes'"),
        (
            {"train": {"packing": True, "group_by_length": True}},
            "train.packing: makes every block max_length tokens long, so there are no lengths",
        ),
        ({"train": {"report_to": "wandb"}}, "train.report_to: must be one of ('none', 'tens"),
        ({"augment": {"alpha": [2]}}, "augment.alpha[0]: must be in [0, 1], got 2.0"),
        ({"augment": {"beta": [0.1, -1]}}, "augment.beta[1]: must be a finite number >= 0"),
        ({"augment": {"copies": -1}}, "augment.copies: must be >= 0, got -1"),
        ({"augment": {"policies": ["none", "magic"]}}, "augment.policies[1]: must be one of"),
        ({"augment": {"protect": "nmae"}}, "augment.protect: biographies have no span ['nmae']"),
        ({"augment": {"protect": ["name", ""]}}, "augment.protect: names an empty span"),
        ({"attention": {"batch_size": 0}}, "attention.batch_size: must be at least 1, got 0"),
        ({"attention": {"dtype": "float16"}}, "attention.dtype: must be one of float32"),
        ({"corpus": {"bios": {"n": 0}}}, "corpus.bios.n: must be at least 1, got 0"),
        ({"corpus": {"chunk": 1}}, "corpus.chunk: must be in [2, train.max_length = 512]"),
        (
            {"corpus": {"chunk": 300}, "train": {"max_length": 256}},
            "so that every passage trains whole, got 300",
        ),
        ({"corpus": {"text_field": ""}}, "corpus.text_field: is empty"),
        ({"report": {"analysis_texts": -1}}, "report.analysis_texts: must be >= 1, got -1"),
        (
            {"report": {"baselines": ["none", "positon"]}},
            "report.baselines[1]: 'positon' is not one of augment.policies (none, contrast)",
        ),
        ({"evaluate": {"shots": "five"}}, "evaluate.shots: expected int, got 'five'"),
    ],
)
def test_a_bad_key_fails_at_load_naming_it(tmp_path, sections, message):
    path = write(tmp_path, **sections)
    began = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert time.perf_counter() - began < 1.0
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_corpus_path_needs_no_qa_file(tmp_path):
    corpus = {"bios": None, "path": "wiki", "chunk": 256, "text_field": "body"}
    config = load_config(write(tmp_path, corpus=corpus))
    assert (config.corpus.qa, config.corpus.chunk, config.corpus.text_field) == (None, 256, "body")


def test_cli_run_refuses_a_bad_config_before_any_stage(tmp_path):
    path = write(tmp_path, evaluate={"shot": 5})
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert "evaluate.shot: unknown key (did you mean 'shots'?)" in result.output
    assert not (tmp_path / "run").exists()


def fresh_python(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python ARGS` in a new process (nothing imported yet) on this checkout's elusive."""
    path = [str(Path(elusive.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    command = [sys.executable, *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_elusive_run_fails_on_a_bad_config_in_one_line_writing_nothing(tmp_path):
    path = write(tmp_path, train={"lr": [0]})
    done = fresh_python("-m", "elusive.cli", "run", str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == f"error: {path}: train.lr[0]: must be > 0, got 0.0\n"
    assert done.stdout == ""
    assert list(tmp_path.iterdir()) == [path]


CHECK_WITHOUT_TORCH = """
import sys
from elusive.cli import app
from elusive.experiment.config import load_config

load_config(sys.argv[1])
for args in (["--help"], ["run", sys.argv[2]]):
    try:
        app(args)
    except SystemExit:
        pass
print(sorted({"torch", "transformers"} & set(sys.modules)))
"""


def test_a_config_is_checked_and_the_help_shown_without_torch(tmp_path):
    """torch and transformers take seconds to import: loading and checking a config (the model
    specs included), `elusive --help` and a refused `elusive run` import neither."""
    (tmp_path / "bad").mkdir()
    good, bad = write(tmp_path), write(tmp_path / "bad", evaluate={"shots": -1})
    done = fresh_python("-c", CHECK_WITHOUT_TORCH, str(good), str(bad), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout and "evaluate.shots: must be >= 0" in done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


def test_set_overrides_keys_parsed_as_yaml(tmp_path):
    path = write(tmp_path)
    config = load_config(
        path, ["train.lr=[3e-4, 1e-3]", "evaluate.shots=5", "augment.copies=3", "seeds=[1,2]"]
    )
    assert config.train.lr == [3e-4, 1e-3]
    assert config.train.epochs == [1, 2]  # the rest of the section stays
    assert config.evaluate.shots == 5 and config.evaluate == dataclasses.replace(
        EvalConfig(), shots=5
    )
    assert config.augment.copies == 3 and config.seeds == [1, 2]
    with pytest.raises(ConfigError, match=re.escape("evaluate.shot: unknown key")):
        load_config(path, ["evaluate.shot=5"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["train.lr"])
    with pytest.raises(ConfigError, match=re.escape("train.lr[0]: must be > 0")):
        load_config(path, ["train.lr=0"])


def test_booleans_are_yaml_1_2s_so_no_stays_a_string(tmp_path):
    """``mixed_precision: no`` is accelerate's spelling; YAML 1.1 would read it as False."""
    path = write(tmp_path)
    config = load_config(path, ["train.mixed_precision=no", "evaluate.mixed_precision=no"])
    assert config.train.mixed_precision == "no" and config.evaluate.mixed_precision == "no"
    assert safe_yaml("a: [no, yes, on, off, true, False, TRUE]") == {
        "a": ["no", "yes", "on", "off", True, False, True]
    }
    assert yaml.safe_load("a: no") == {"a": False}  # PyYAML's own loader is left as it was
    with pytest.raises(ConfigError, match="expected true or false, got 'yes'"):
        load_config(path, ["train.packing=yes"])


def test_cli_run_set_reaches_the_config(tmp_path):
    path = write(tmp_path)
    result = CliRunner().invoke(app, ["run", str(path), "--set", "train.batch_size=0"])
    assert result.exit_code == 2
    assert "train.batch_size: must be >= 1, got 0" in result.output


def module_fields(config: type) -> dict[str, object]:
    return {f.name: f.default for f in dataclasses.fields(config)}


@pytest.mark.parametrize(
    "section, config, grid, left_out",
    [
        (TrainSection, TrainConfig, {"lr": "lr", "epochs": "epochs"}, {"model", "seed"}),
        (
            AugmentSection,
            AugmentConfig,
            {"policy": "policies", "alpha": "alpha", "beta": "beta"},
            {"seed", "score_of"},
        ),
        (AttentionSection, AttentionConfig, {}, {"trained", "cache_dir", "chunk_size"}),
    ],
)
def test_sections_are_the_module_configs_with_grid_lists(section, config, grid, left_out):
    """Every module option but those the pipeline sets is a section key, with the module's
    default (as a one-item list for a grid key)."""
    made = section()
    for name, default in module_fields(config).items():
        if name in left_out:
            assert not hasattr(made, grid.get(name, name))
        elif name in grid and name != "policy":
            assert getattr(made, grid[name]) == [default]
        elif name not in grid:
            assert getattr(made, name) == default
    assert isinstance(RunConfig().evaluate, EvalConfig)


def test_options_rebuild_the_module_config_from_a_section(tmp_path):
    config = load_config(write(tmp_path, train={"weight_decay": 0.1, "lora_dropout": 0.05}))
    built = TrainConfig(**options(config.train, lr=3e-4, epochs=2), model="m", seed=1)
    assert (built.weight_decay, built.lora_dropout, built.lr, built.epochs) == (0.1, 0.05, 3e-4, 2)


def test_cli_run_prints_tables_only_on_the_main_process(tmp_path, monkeypatch):
    """Under `accelerate launch` every process runs `elusive run`; one prints the tables."""
    import elusive.experiment.pipeline
    import elusive.experiment.summary
    from elusive.experiment.runs import Run
    from elusive.parallel import Dist

    def fake_run(config, out=None, echo=print):
        return Run(config, out, Dist(rank=1, world=2, exchange=list, wait=lambda: None))

    monkeypatch.setattr(elusive.experiment.pipeline, "run_experiment", fake_run)
    monkeypatch.setattr(
        elusive.experiment.summary, "summarize", lambda run: pytest.fail("summarized")
    )
    result = CliRunner().invoke(app, ["run", str(write(tmp_path))])
    assert result.exit_code == 0 and result.output == ""


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("qwen2.5-coder-0.5", "is not a model folder, a .gguf file, a pack name"),
        ("missing.gguf", "no such .gguf file"),
    ],
)
def test_a_model_spec_that_cannot_resolve_fails_at_load(tmp_path, spec, message):
    """A misspelt pack name or a missing file fails when the config loads, naming the key,
    before any stage has written anything."""
    with pytest.raises(ConfigError, match=rf"models\.small: model spec .*{message}"):
        load_config(write(tmp_path, models={"small": spec}))
    (tmp_path / "folder").mkdir()
    with pytest.raises(ConfigError, match=r"models\.large: .*no config.json"):
        load_config(write(tmp_path, models={"large": str(tmp_path / "folder")}))
    assert not (tmp_path / "run").exists()


def write_text(tmp_path, text: str) -> Path:
    """A config file of `text` as written, for YAML that `yaml.safe_dump` cannot produce."""
    base = yaml.safe_load(write(tmp_path).read_text())
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base) + text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("seeds: [.inf]\n", "seeds[0]: expected int, got inf"),
        ("seeds: [-.inf]\n", "seeds[0]: expected int, got -inf"),
    ],
)
def test_non_finite_numbers_fail_at_load_in_one_line(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    config = {k: v for k, v in yaml.safe_load(write(tmp_path).read_text()).items()}
    config.pop("seeds", None)
    path.write_text(yaml.safe_dump(config) + text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: {message}"


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"train": {"lr": [1e-3, float("inf")]}}, "train.lr[1]: must be a finite number, got inf"),
        ({"train": {"weight_decay": float("inf")}}, "train.weight_decay: must be a finite number"),
    ],
)
def test_infinite_options_fail_at_load_naming_the_key(tmp_path, sections, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path, **sections))


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_every_float_option_refuses_infinity_and_nan(value):
    """The check of each module config, shared by its command-line flags and config keys."""
    for config in (TrainConfig(model="m"), AugmentConfig(), EvalConfig(), AttentionConfig()):
        for option in dataclasses.fields(config):
            if isinstance(getattr(config, option.name), float):
                bad = dataclasses.replace(config, **{option.name: value})
                flag = elusive.errors.flag(option.name)
                with pytest.raises(
                    elusive.errors.ElusiveError,
                    match=f"^{flag} must be a finite number, got {value}$",
                ):
                    bad.validate()
    with pytest.raises(elusive.errors.ElusiveError, match="--lr must be a finite number, got inf"):
        TrainConfig(model="m", lr=float("inf")).validate()


@pytest.mark.parametrize(
    "template, message",
    [
        ("Q: {question} {x}\nA:", "has '{x}' in"),
        ("Q: {question}\nA: {}", "has '{}' in"),
        ('Return {"answer": 1} for {question}', "has '{\"answer\": 1}' in"),
        ("Q: {question} }", "has a lone { or } in"),
        ("Q: {question!r}", "has '{question!r}' in"),
    ],
)
def test_a_template_with_unknown_fields_or_lone_braces_fails_at_load(tmp_path, template, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, evaluate={"template": template}))
    assert str(err.value).startswith(f"{write(tmp_path)}: evaluate.template: {message}")
    assert "\n" not in str(err.value)


def test_a_template_takes_literal_braces_escaped_only(tmp_path):
    from elusive.corpus.records import QAItem
    from elusive.evaluation.evaluate import build_prompts

    with pytest.raises(ConfigError, match="has '{json}' in"):
        load_config(write(tmp_path, evaluate={"template": "{json} {question}"}))
    config = load_config(write(tmp_path, evaluate={"template": "{{json}} {question}"}))
    item = QAItem("q", "p", "Who?", ("Ava",))
    assert build_prompts([item], config.evaluate) == ["{json} Who?"]


def test_duplicate_keys_fail_naming_the_file_key_and_lines(tmp_path):
    path = write_text(tmp_path, "train: {lr: [0.1]}\n")
    line = path.read_text().splitlines().index("train:") + 1
    last = len(path.read_text().splitlines())
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (
        f"{path}:{last}: duplicate key 'train' (first at line {line}); give each key once"
    )
    path.write_text("evaluate: {shots: 1, shots: 2}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:1: duplicate key 'shots'"):
        load_config(path)


def test_merge_keys_may_override_what_they_merge(tmp_path):
    """A duplicate key is refused, but not a key that overrides one merged in with ``<<``."""
    text = write(tmp_path).read_text()
    path = tmp_path / "c.yaml"
    path.write_text(text + "evaluate: {batch_size: 4, batch_size: 2}\n")
    with pytest.raises(ConfigError, match="duplicate key 'batch_size'"):
        load_config(path)
    path.write_text(text + "attention: &a {batch_size: 4, prefix: 'T: '}\n"
                    "evaluate: {<<: *a, batch_size: 2}\n")  # fmt: skip
    with pytest.raises(ConfigError, match="evaluate.prefix: unknown key"):
        load_config(path)  # the merged keys are read
    path.write_text(text + "attention: &a {batch_size: 4}\nevaluate: {<<: *a, batch_size: 2}\n")
    loaded = load_config(path)
    assert (loaded.attention.batch_size, loaded.evaluate.batch_size) == (4, 2)


BOMB = """\
a: &a [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
seeds: [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_an_alias_bomb_fails_at_once_in_one_short_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(BOMB)
    began = time.perf_counter()
    result = CliRunner().invoke(app, ["run", str(path)])
    assert time.perf_counter() - began < 2.0
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {path}:5: more than 100000 values once aliases")
    assert result.output.count("\n") == 1 and len(result.output) < 200
    path.write_text("seeds: &s [0, *s]\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:1: an alias refers to a node holding it"):
        load_config(path)


def test_a_bad_value_is_shown_cut_short(tmp_path):
    path = write(tmp_path, train={"schedule": "x" * 100_000})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: train.schedule: must be one of")
    assert str(err.value).endswith("xxx'") and len(str(err.value)) < 300
    path.write_text(f"seeds: [[{', '.join(['1'] * 20000)}]]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: seeds[0]: expected int, got [1, 1, 1")
    assert len(str(err.value)) < 200


def test_a_folder_or_a_non_utf8_file_as_the_config_fails_in_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["run", str(tmp_path)])
    assert (result.exit_code, result.output) == (
        2,
        f"error: {tmp_path}: is a folder; give a config file (YAML or JSON)\n",
    )
    path = tmp_path / "c.yaml"
    path.write_bytes(b"seeds: [0]\nout: caf\xe9\n")
    result = runner.invoke(app, ["run", str(path)])
    assert (result.exit_code, result.output) == (
        2,
        f"error: {path}: not UTF-8 text (invalid continuation byte at byte 19)\n",
    )
    path.write_text("[" * 10000 + "]" * 10000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(path)
    path.write_text(f"seeds: [{'9' * 5000}]\n")  # past Python's int-string conversion limit
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and result.output.startswith(f"error: {path}: a value cannot")
    assert len(result.output.splitlines()) == 1 and len(result.output) < 200


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"seeds": [0, 0]}, "seeds[1]: 0 is given twice (also seeds[0])"),
        ({"train": {"lr": [1e-3, 0.001]}}, "train.lr[1]: 0.001 is given twice (also train.lr[0])"),
        ({"train": {"epochs": [1, 2, 1]}}, "train.epochs[2]: 1 is given twice"),
        ({"augment": {"policies": ["none", "none"]}}, "augment.policies[1]: 'none' is given"),
        ({"models": {"trained": ["small", "small"]}}, "models.trained[1]: 'small' is given"),
        (
            {"augment": {"alpha": [0.7, 0.7000001]}},
            "augment.alpha[0] 0.7 and augment.alpha[1] 0.7000001 name the same run folder (0.7)",
        ),
        ({"augment": {"beta": [0.03, 0.0300000001]}}, "augment.beta[0] 0.03 and augment.beta[1]"),
        ({"train": {"lr": [1e-3, 1.0000001e-3]}}, "train.lr[0] 0.001 and train.lr[1] 0.0010000001"),
    ],
)
def test_duplicate_grid_values_fail_at_load(tmp_path, sections, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path, **sections))


def test_grid_values_refused_as_one_are_those_whose_run_folders_collide():
    from elusive.experiment.runs import Cell

    def folder(alpha, beta, lr):
        return Cell("small", "contrast", alpha, beta, lr, 0).train_tag

    assert folder(0.7, 0.03, 1e-3) == folder(0.7000001, 0.0300000001, 1.0000001e-3)
    assert folder(0.7, 0.03, 1e-3) != folder(0.70001, 0.03001, 1.0001e-3)
    config = RunConfig(
        corpus=dataclasses.replace(RunConfig().corpus),
        models=dataclasses.replace(RunConfig().models, large="org/a", small="org/b"),
        augment=AugmentSection(alpha=[0.7, 0.70001], beta=[0.03, 0.03001]),
        train=TrainSection(lr=[1e-3, 1.0001e-3]),
    )
    config.validate()  # distinct folders: accepted
    config.augment.alpha[1] = 0.7000001
    with pytest.raises(ConfigError, match=r"augment\.alpha\[0\] 0\.7 and augment\.alpha\[1\]"):
        config.validate()
