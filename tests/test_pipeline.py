import importlib.metadata
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from elusive.experiment.config import ConfigError, load_config
from elusive.experiment.pipeline import STAGES, run_experiment
from elusive.experiment.runs import Run, grid
from elusive.tiny import make_tiny_model


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """A tiny large/small pair of one family: same tokenizer, different sizes and weights."""
    root = tmp_path_factory.mktemp("pair")
    small = make_tiny_model(root / "small", arch="llama", seed=0)
    large = make_tiny_model(root / "large", arch="llama", hidden_size=96, layers=3, seed=1)
    return str(large), str(small)


def write_config(path: Path, tiny_pair, **overrides) -> Path:
    large, small = tiny_pair
    config = {
        "out": str(path.parent / "run"),
        "seeds": [0, 1],
        "corpus": {"bios": {"n": 12, "seed": 0}},
        "validation": 0.25,
        "models": {"large": large, "small": small, "trained": ["small"]},
        "augment": {
            "policies": ["none", "random", "contrast", "shuffled"],
            "copies": 2,
            "alpha": [0.7],
            "beta": [0.03, 0.1],
        },
        "train": {"lr": [1e-3], "epochs": [1, 2], "batch_size": 8},
        "evaluate": {"batch_size": 32, "max_new_tokens": 6},
        "report": {"analysis_texts": 8},
    }
    config.update(overrides)
    path.write_text(yaml.safe_dump(config))
    return path


def snapshot(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in root.rglob("*")
        if p.is_file() and p.name != "run.json" and "report" not in p.parts
    }


def test_end_to_end_report_and_rerun_recomputes_nothing(tmp_path, tiny_pair):
    report = {"analysis_texts": 8, "baselines": ["none", "random"]}
    config = load_config(write_config(tmp_path / "c.yaml", tiny_pair, report=report))
    lines: list[str] = []
    run = run_experiment(config, progress=False, echo=lines.append)
    report = run.path("report")
    for name in (
        "report.md",
        "report.json",
        "fig1.png",
        "fig2.png",
        "fig3.png",
        "paired-small.png",
    ):
        assert (report / name).stat().st_size > 0, name
    summary = json.loads((report / "report.json").read_text())
    assert summary["rows"][0]["policy"] == "untrained"
    policies = {row["policy"] for row in summary["rows"][1:]}
    assert policies == {"none", "random", "contrast", "shuffled"}
    for row in summary["rows"][1:]:
        assert row["seeds"] == [0, 1]
        assert set(row["test"]) >= {"date", "company", "overall"}
        assert 0.0 <= row["test"]["overall"]["f1"] <= 1.0
        assert 0.0 <= row["test"]["company"]["cloze_choice"] <= 1.0  # the probes reach the report
    # The study statistics: 9 test people x 2 seeds, every policy paired with none (untrained
    # only with itself as a baseline).
    study = summary["study"]["small"]
    assert study["seeds"] == [0, 1] and set(study["differences"]) == policies - {"none"}
    company = study["means"]["none"]["company"]["cloze_em"]
    assert company["n_people"] == 9 and company["low"] <= company["mean"] <= company["high"]
    text = (report / "report.md").read_text()
    assert "## Table 2" in text and "## Knowledge probes" in text
    assert "Paired differences against none" in text
    # A second baseline: every policy paired with random too; none - random is -(random - none)
    against_random = summary["other_baselines"]["small"]["random"]
    assert set(against_random["differences"]) == policies - {"random"}
    for metric in ("em", "cloze_em", "logprob"):
        back = against_random["differences"]["none"]["company"][metric]["mean"]
        forth = study["differences"]["random"]["company"][metric]["mean"]
        assert back == pytest.approx(-forth, abs=1e-12)
    assert "### Paired differences against random" in text
    drops = summary["drops"]  # where each policy drops, by span of the biographies
    assert set(drops) == {f"small {p}" for p in policies}
    assert set(drops["small none"].values()) == {0.0}
    assert drops["small random"]["university"] > 0.5  # alpha 0.7, words eligible
    assert "## Where each policy drops tokens" in text
    manifest = json.loads(run.path("run.json").read_text())
    assert set(manifest["stages"]) == set(STAGES)
    assert manifest["versions"]["torch"] == importlib.metadata.version("torch")
    assert sum(line.startswith("[") for line in lines) == len(STAGES) == 7

    before = snapshot(run.root)
    lines.clear()
    run_experiment(config, progress=False, echo=lines.append)
    assert snapshot(run.root) == before
    assert any("(0 new)" in line for line in lines if "evaluate" in line)


def test_interrupted_training_resumes_to_the_same_numbers(tmp_path, tiny_pair, monkeypatch):
    import elusive.training.train as train_module

    overrides = {
        "seeds": [0],
        "augment": {"policies": ["contrast"], "copies": 2, "alpha": [0.7], "beta": [0.03]},
        "train": {"lr": [1e-3], "epochs": [3], "batch_size": 8},
    }
    whole = load_config(write_config(tmp_path / "a.yaml", tiny_pair, **overrides))
    whole.out = str(tmp_path / "whole")
    run_experiment(whole, progress=False, echo=lambda _: None)

    broken = load_config(write_config(tmp_path / "b.yaml", tiny_pair, **overrides))
    broken.out = str(tmp_path / "broken")
    save_epoch = train_module._save_epoch

    def crash_after_first_epoch(*args, **kwargs):
        save_epoch(*args, **kwargs)
        if args[5] == 1:  # epoch
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_save_epoch", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(broken, progress=False, echo=lambda _: None)
    monkeypatch.setattr(train_module, "_save_epoch", save_epoch)
    run = run_experiment(broken, progress=False, echo=lambda _: None)

    def metrics(root: str) -> dict:
        found = Path(root, "eval").rglob("metrics.json")
        (path,) = (p for p in found if p.parent.name != "untrained")  # the trained one
        return json.loads(path.read_text())["scores"]

    assert metrics(run.root) == metrics(whole.out)

    def run_log(root: str) -> dict:  # the training run's own log.json, not an epoch folder's
        runs = Path(root, "train").rglob("log.json")
        (path,) = (p for p in runs if not p.parent.name.startswith("epoch-"))
        return json.loads(path.read_text())

    log, whole_log = run_log(run.root), run_log(whole.out)
    assert [s["loss"] for s in log["steps"]] == pytest.approx(
        [s["loss"] for s in whole_log["steps"]], abs=1e-6
    )


def test_grid_expands_lists_and_skips_unused_parameters(tmp_path, tiny_pair):
    config = load_config(write_config(tmp_path / "c.yaml", tiny_pair))
    cells = grid(config)
    # none: 1 setting, random: 1 alpha, contrast and shuffled: 1 alpha x 2 betas; x 2 seeds
    assert len(cells) == (1 + 1 + 2 + 2) * 2
    assert {c.beta for c in cells if c.policy == "random"} == {None}
    # each policy declares what it takes (elusive.augment.dropout.PARAMETERS): plain, like none,
    # nothing
    config.augment.policies = ["plain", "none", "contrast"]
    taken = {(c.policy, c.alpha, c.beta) for c in grid(config)}
    assert taken == {("plain", None, None), ("none", None, None), ("contrast", 0.7, 0.03),
                     ("contrast", 0.7, 0.1)}  # fmt: skip


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"augment": {"policies": ["magic"]}}, r"augment.policies\[0\]: must be one of .*'magic'"),
        ({"train": {"lr": ["fast"]}}, r"train.lr\[0\]: expected float, got 'fast'"),
        ({"validation": 1.5}, "validation must be in"),
        ({"modles": {}}, r"modles: unknown key \(did you mean 'models'\?\)"),
        ({"models": {"trained": ["medium"]}}, "unknown role 'medium'"),
        (
            {"corpus": {"path": "c.jsonl", "probes": {"max_probes": 0}}},
            r"corpus.probes.max_probes: must be at least 1, got 0",
        ),
        ({"corpus": {"path": "c.jsonl", "probes": {"seeds": 1}}}, r"corpus.probes.seeds: unknown"),
    ],
)
def test_bad_config_names_the_key(tmp_path, tiny_pair, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path / "c.yaml", tiny_pair, **overrides))


def test_squad_fixture_runs_the_whole_pipeline(tmp_path, tiny_pair):
    """Paragraph QA (issue 7): the fixture's paragraphs are the corpus, its questions the QA
    set; the report has the tables (the figures are for biographies only)."""
    squad = Path(__file__).parent / "data" / "squad_small.json"
    overrides = {
        "seeds": [0],
        "corpus": {"squad": str(squad)},
        "validation": 0.4,
        "augment": {"policies": ["none", "contrast"], "copies": 2, "alpha": [0.7], "beta": [0.01]},
        "train": {"lr": [1e-3], "epochs": [1], "batch_size": 4, "max_length": 1024},
    }
    config = load_config(write_config(tmp_path / "w.yaml", tiny_pair, **overrides))
    run = run_experiment(config, progress=False, echo=lambda _: None)
    texts = [json.loads(line) for line in run.path("corpus", "corpus.jsonl").open()]
    questions = [json.loads(line) for line in run.path("corpus", "qa.jsonl").open()]
    assert len(texts) == 5 and len(questions) == 13
    summary = json.loads(run.path("report", "report.json").read_text())
    assert [row["policy"] for row in summary["rows"]] == ["untrained", "none", "contrast"]
    for row in summary["rows"]:
        assert row["test"]["overall"]["n"] > 0
    assert "## Table 2" in run.path("report", "report.md").read_text()
    assert not run.path("report", "fig2.png").exists()


def test_two_processes_under_torchrun(tmp_path, tiny_pair):
    """`accelerate launch`/`torchrun` with 2 CPU processes: both score, train (data parallel),
    evaluate (the untrained model and a checkpoint one each, the second checkpoint's questions
    shared) and analyse for the report (the analysis stage);
    the main process alone writes the corpus, augmentations and report, and prints."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides = {
        "seeds": [0],
        "augment": {"policies": ["none", "contrast"], "copies": 2, "alpha": [0.7], "beta": [0.03]},
        "train": {"lr": [1e-3], "epochs": [1], "batch_size": 4},
        "report": {"analysis_texts": 4},
    }
    config = write_config(tmp_path / "c.yaml", tiny_pair, **overrides)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(port), "-m", "elusive.cli", "run", str(config)]
    # two CPU processes, also on a GPU host (two processes cannot share one GPU under NCCL)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["ELUSIVE_CACHE"] = str(tmp_path / "cache")  # an empty score cache: both processes score
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("[4/7] train") == 1  # one process prints
    root = tmp_path / "run"
    assert len(list(root.joinpath("eval").rglob("metrics.json"))) == 3  # untrained included
    assert done.stdout.count("[6/7] analysis") == 1 and "[7/7] report" in done.stdout
    summary = json.loads(root.joinpath("report", "report.json").read_text())
    assert [row["policy"] for row in summary["rows"]] == ["untrained", "none", "contrast"]
    assert summary["figures"]["analysis_texts"] == 4
    manifest = json.loads(root.joinpath("scores", "manifest.json").read_text())
    assert [p["rank"] for p in manifest["processes"]] == [0, 1]
    assert all(p["texts"] > 0 for p in manifest["processes"])


def test_packaged_demo_and_paper_configs_are_valid():
    from importlib import resources

    demo = resources.files("elusive").joinpath("data", "demo.yaml")
    with resources.as_file(demo) as path:
        config = load_config(path)
    assert (config.models.large, config.models.small) == (
        "qwen2.5-coder-1.5b",
        "qwen2.5-coder-0.5b",
    )
    # the demo pairs contrast with plain copies, and every policy with the untrained model
    assert {"none", "contrast"} <= set(config.augment.policies)
    assert config.report.baselines == ["none", "untrained"]
    configs = Path(__file__).parents[1] / "configs"
    for name in ("paper-bios.yaml", "paper-wiki.yaml"):
        paper = load_config(configs / name)
        assert paper.augment.copies == 10 and paper.train.lora_r == 16
    study = load_config(configs / "cpu-study.yaml")
    assert len(study.seeds) >= 3 and "none" in study.augment.policies
    assert {"random", "contrast", "shuffled"} <= set(study.augment.policies)
    for name in configs.glob("*.yaml"):  # every shipped config loads and checks
        if name.name != "accelerate-fsdp.yaml":
            load_config(name)
    replay = load_config(configs / "cpu-protocol.yaml")
    assert {"plain", "none", "contrast", "authors"} == set(replay.augment.policies)
    assert replay.augment.copies == 10 and replay.augment.alpha == [0.7]


SMALL_GRID = {
    "seeds": [0],
    "augment": {"policies": ["none", "contrast"], "copies": 2, "alpha": [0.7], "beta": [0.03]},
    "train": {"lr": [1e-3], "epochs": [1], "batch_size": 8},
    "report": {"analysis_texts": 4},
}


def changed_since(before: dict[str, int], root: Path) -> set[str]:
    """Top two levels (stage/role or stage/name) of the files rewritten since `before`."""
    now = snapshot(root)
    return {"/".join(Path(k).parts[:2]) for k in now if before.get(k) != now[k]}


def test_a_fixed_config_redoes_only_what_it_reaches(tmp_path, tiny_pair, monkeypatch):
    """A run that failed in evaluation, rerun with its config fixed, keeps corpus, scores,
    augmented corpora and training; each later edit redoes what depends on it, and says so.
    The untrained model's evaluation is redone by an evaluate option alone."""
    import elusive.experiment.pipeline as pipeline

    monkeypatch.setattr(pipeline, "stage_report", lambda run: "not written")  # not tested here
    config = load_config(write_config(tmp_path / "c.yaml", tiny_pair, **SMALL_GRID))
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "stage_evaluate", lambda *a, **k: 1 / 0)  # a failing stage
        with pytest.raises(ZeroDivisionError):
            run_experiment(config, progress=False, echo=lambda _: None)

    untrained = Path(config.out, "eval", "small", "untrained", "metrics.json")

    def rerun(key: str, value) -> tuple[set[str], list[str], bool]:
        """What the edit redid: the stages' folders, the lines said, whether untrained."""
        section, name = key.split(".")
        setattr(getattr(config, section), name, value)
        before, lines = snapshot(Path(config.out)), []
        was = untrained.stat().st_mtime_ns if untrained.exists() else None
        run_experiment(config, progress=False, echo=lines.append)
        return changed_since(before, Path(config.out)), lines, untrained.stat().st_mtime_ns != was

    changed, lines, redone = rerun("evaluate.max_new_tokens", 4)  # "the fix"
    assert changed == {"eval/small"} and redone
    assert "evaluate.max_new_tokens (6 -> 4)" in lines[0]
    changed, lines, redone = rerun("evaluate.max_new_tokens", 5)
    assert changed == {"eval/small"} and redone
    assert any("evaluate: redoing 3 made from other inputs" in line for line in lines)
    # A scoring batch size gives the same scores: nothing after them is redone.
    changed, lines, redone = rerun("attention.batch_size", 3)
    assert changed == {"scores/scores.jsonl", "scores/manifest.json"} and not redone
    changed, lines, redone = rerun("augment.copies", 1)
    assert changed == {"augment/small", "train/small", "eval/small"} and not redone
    changed, lines, redone = rerun("train.epochs", [2])  # a new largest epoch: its schedule differs
    assert changed == {"train/small", "eval/small"} and not redone
    assert any("train: redoing 2 made from other inputs" in line for line in lines)
    changed, lines, redone = rerun("train.epochs", [1, 2])  # a checkpoint below it: evaluated only
    assert changed == {"eval/small"} and not redone
    changed, lines, redone = rerun("train.warmup", 0.2)  # a scalar train option
    assert changed == {"train/small", "eval/small"} and not redone


def test_a_tracker_retrains_nothing_and_a_batch_layout_retrains_all(tmp_path, tiny_pair):
    """`train.report_to` changes what a training run logs, not its weights: no training
    fingerprint changes with it; `train.packing` changes every one."""
    import dataclasses

    from elusive.experiment.pipeline import train_fingerprints
    from elusive.experiment.runs import Run

    config = load_config(write_config(tmp_path / "c.yaml", tiny_pair))

    def prints(**train):
        changed = dataclasses.replace(config, train=dataclasses.replace(config.train, **train))
        return train_fingerprints(Run(changed, tmp_path / "run"))

    before = prints()
    assert prints(report_to="tensorboard") == before
    packed = prints(packing=True)
    assert packed.keys() == before.keys() and all(packed[k] != before[k] for k in before)


def test_attention_stage_redone_after_a_crash_before_its_manifest(tmp_path, tiny_pair, capfd):
    """scores.jsonl is written first, manifest.json last: a crash between them leaves a folder
    that the stage scores again instead of skipping it; no progress bar when progress=False."""
    import elusive.scoring.scores as scores_module
    from elusive.experiment.pipeline import stage_attention, stage_corpus
    from elusive.experiment.runs import Run
    from elusive.scoring.scores import read_scores

    config = load_config(write_config(tmp_path / "c.yaml", tiny_pair))
    run = Run(config)
    run.open()
    stage_corpus(run)
    write = scores_module.atomic_write_text  # what write_scores writes the manifest with

    def crash_at_the_manifest(path, text):
        if Path(path).name == "manifest.json":
            raise KeyboardInterrupt
        return write(path, text)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scores_module, "atomic_write_text", crash_at_the_manifest)
        patch.setenv("ELUSIVE_CACHE", str(tmp_path / "cache"))
        with pytest.raises(KeyboardInterrupt):
            stage_attention(run, progress=False)
        assert run.path("scores", "scores.jsonl").exists()
        patch.setattr(scores_module, "atomic_write_text", write)
        assert stage_attention(run, progress=False) == "12 texts scored"
    assert len(read_scores(run.path("scores"))) == 12
    assert "text/s" not in capfd.readouterr().err  # tqdm's rate: no bar was drawn


def test_a_run_killed_mid_training_resumes_to_identical_bytes(tmp_path, tiny_pair):
    """SIGKILL (no cleanup at all) once the first epoch of the first training run is saved;
    the rerun's scores, augmented corpora, adapters and evaluations equal an uninterrupted
    run's byte for byte: all but the logs' wall-clock seconds and trainer_state.pt, which
    torch.save stamps with a random serialization id (its tensors are compared instead)."""
    import signal
    import subprocess
    import sys
    import time

    import torch

    grid_ = {**SMALL_GRID, "train": {"lr": [1e-3], "epochs": [2], "batch_size": 4}}
    config = load_config(write_config(tmp_path / "c.yaml", tiny_pair, **grid_))
    whole = run_experiment(config, progress=False, echo=lambda _: None).root
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "elusive.cli", "run", str(tmp_path / "c.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([*command, "--out", str(killed)], env=env)
    deadline = time.monotonic() + 300
    while not list(killed.glob("train/small/*/epoch-1")) and process.poll() is None:
        assert time.monotonic() < deadline, "no epoch saved in time"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not list(killed.glob("eval/*/*/metrics.json"))  # killed before the end
    run_experiment(load_config(tmp_path / "c.yaml"), killed, progress=False, echo=print)

    def contents(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in root.rglob("*")
            if p.is_file()
            and p.parts[len(root.parts)] in ("scores", "augment", "train", "eval")
            and p.name not in ("log.json", "manifest.json", "run.json", "trainer_state.pt")
        }

    assert contents(killed) == contents(whole)
    assert any(name.endswith("adapter_model.safetensors") for name in contents(whole))
    for state in whole.glob("train/small/*/epoch-2/trainer_state.pt"):
        a = torch.load(state, weights_only=False)
        b = torch.load(killed / state.relative_to(whole), weights_only=False)
        assert a["rng"]["python"] == b["rng"]["python"]
        assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
        for key, slots in a["optimizer"]["state"].items():
            for name, value in slots.items():
                assert torch.equal(value, b["optimizer"]["state"][key][name]), (key, name)


def skip_stages(monkeypatch) -> None:
    """Every stage a no-op: these tests are about what the run folder refuses or removes."""
    import elusive.experiment.pipeline as pipeline

    for name in STAGES:
        monkeypatch.setattr(pipeline, f"stage_{name}", lambda *a, **k: "skipped")


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_users_folder_as_out_is_refused_and_nothing_in_it_removed(
    tmp_path, tiny_pair, monkeypatch
):
    """`elusive run cfg.yaml --out .` in a project folder: its scores/grades.csv and a file
    named like a temp file stay; the run refuses in one line before any work."""
    from elusive.io import OutputError

    skip_stages(monkeypatch)
    project = tmp_path / "proj"
    (project / "scores").mkdir(parents=True)
    (project / "scores" / "grades.csv").write_text("name,grade\n")
    (project / "docs").mkdir()
    (project / "docs" / ".thesis.0123456789ab.tex").write_text("\\chapter{One}\n")
    before = files(project)
    config = load_config(write_config(tmp_path / "c.yaml", tiny_pair, **SMALL_GRID))
    with pytest.raises(OutputError, match=rf"^{project}: is not empty and is no elusive run"):
        run_experiment(config, project, progress=False, echo=lambda _: None)
    assert files(project) == before


def test_an_output_path_the_manifest_does_not_record_is_refused_not_removed(
    tmp_path, tiny_pair, monkeypatch
):
    """An elusive run folder (run.json there) holding the user's own corpus/ where the corpus
    stage writes, unrecorded: refused, naming it and run.json, and kept."""
    from elusive.experiment.runs import Run
    from elusive.io import OutputError

    skip_stages(monkeypatch)
    config = load_config(write_config(tmp_path / "c.yaml", tiny_pair, **SMALL_GRID))
    out = tmp_path / "run"
    Run(config, out).open()
    (out / "corpus").mkdir()
    (out / "corpus" / "mine.txt").write_text("my texts\n")
    before = files(out / "corpus")
    message = rf"^{out / 'corpus'}: exists but was not written by elusive \(no record in .*run.json"
    with pytest.raises(OutputError, match=message):
        run_experiment(config, out, progress=False, echo=lambda _: None)
    assert files(out / "corpus") == before


def test_a_corpus_inside_the_run_folder_is_refused(tmp_path, tiny_pair, monkeypatch):
    """corpus.path and corpus.qa inside the run folder (where its refresh removes outputs):
    refused in one line naming the key and both paths, the input kept."""
    from elusive.corpus.bios import BiosConfig, write_bios
    from elusive.experiment.runs import Run
    from elusive.io import OutputError

    skip_stages(monkeypatch)
    out = tmp_path / "run"
    Run(load_config(write_config(tmp_path / "c.yaml", tiny_pair, **SMALL_GRID)), out).open()
    people, qa = write_bios(BiosConfig(n=4), out / "corpus")
    before = files(out / "corpus")
    corpus = {"path": str(people), "qa": str(qa)}
    config = load_config(write_config(tmp_path / "c.yaml", tiny_pair, **SMALL_GRID, corpus=corpus))
    message = rf"^corpus.path {people}: lies inside the output folder {out}, which elusive writes"
    with pytest.raises(OutputError, match=message):
        run_experiment(config, out, progress=False, echo=lambda _: None)
    assert files(out / "corpus") == before


def test_a_run_folder_is_locked_while_a_run_writes_it(tmp_path, tiny_pair, monkeypatch):
    """A lock naming a live process refuses the run; one naming a dead process is taken over,
    held through the stages and released at the end."""
    import socket
    import subprocess
    import sys

    import elusive.experiment.pipeline as pipeline
    from elusive.io import OutputError

    LOCK_FILE = ".elusive.lock"
    skip_stages(monkeypatch)
    config = load_config(write_config(tmp_path / "c.yaml", tiny_pair, **SMALL_GRID))
    out = tmp_path / "run"
    out.mkdir()
    live = {"pid": os.getppid(), "host": socket.gethostname()}  # alive, not this process
    (out / LOCK_FILE).write_text(json.dumps(live))
    with pytest.raises(OutputError, match=rf"^{out} is in use by process {os.getppid()}; "):
        run_experiment(config, out, progress=False, echo=lambda _: None)
    assert not (out / "run.json").exists()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_FILE).write_text(json.dumps({**live, "pid": dead.pid}))
    holders = []

    def train(run, *args):
        holders.append(json.loads((run.root / LOCK_FILE).read_text())["pid"])
        return "skipped"

    monkeypatch.setattr(pipeline, "stage_train", train)
    run_experiment(config, out, progress=False, echo=lambda _: None)
    assert holders == [os.getpid()] and not (out / LOCK_FILE).exists()
    assert (out / "run.json").exists()


@pytest.mark.parametrize(
    "question, message",
    [
        ({"source_id": "c"}, "qa.jsonl:2: source_id 'c' is not the id of any corpus text"),
        ({}, "qa.jsonl:2: missing field 'source_id' (or 'person_id')"),
    ],
)
def test_questions_about_texts_not_in_the_corpus_fail_before_anything_is_written(
    tmp_path, tiny_pair, question, message
):
    from elusive.io import CorpusError, write_jsonl

    corpus = write_jsonl(
        tmp_path / "corpus.jsonl", [{"id": i, "text": f"{i} was born."} for i in "ab"]
    )
    qa = write_jsonl(
        tmp_path / "qa.jsonl",
        [
            {"source_id": "a", "question": "Who?", "answer": "a"},
            {"question": "Who else?", "answer": "c", **question},
        ],
    )
    path = write_config(tmp_path / "c.yaml", tiny_pair, corpus={"path": str(corpus), "qa": str(qa)})
    with pytest.raises(CorpusError) as err:
        run_experiment(load_config(path), progress=False, echo=lambda _: None)
    assert str(err.value).startswith(f"{qa.parent}/{message}")
    assert not list((tmp_path / "run").glob("corpus/*"))


def test_a_split_without_test_questions_fails_before_the_corpus_is_written(tmp_path, tiny_pair):
    from elusive.io import write_jsonl

    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": "a", "text": "Ava was born."}])
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"source_id": "a", "question": "Who?", "answer": "a"}])
    path = write_config(tmp_path / "c.yaml", tiny_pair, corpus={"path": str(corpus), "qa": str(qa)})
    with pytest.raises(ConfigError, match=r"leaves no test questions \(1 sources\)"):
        run_experiment(load_config(path), progress=False, echo=lambda _: None)
    assert not list((tmp_path / "run").glob("corpus/*"))


TOWNS = {
    "Oslo": "Oslo was founded in 1048. It lies 12 metres above the sea in Norway.",
    "Bergen": "Bergen was founded in 1070. It gets 2,250 millimetres of rain a year.",
    "Turku": "Turku was founded in 1229. Its harbour is 9 metres deep, near Ruissalo Island.",
    "Tartu": "Tartu was first named in 1030. The Emajõgi River runs 101 kilometres through it.",
    "Lund": "Lund was founded around 990. Its cathedral was consecrated in 1145 by Eskil.",
    "Umeå": "Umeå was founded in 1622. It lies 600 kilometres north of Stockholm.",
}


@pytest.mark.parametrize("form", ["jsonl", "txt", "md"])
def test_a_user_corpus_without_qa_runs_on_span_cloze_probes(tmp_path, tiny_pair, form):
    """No corpus.qa: the run builds span-cloze probes from the texts (a folder of Markdown pages
    cut into passages too), splits their sources into validation and test, and reports cloze
    EM/F1, choice and log-prob per span kind, the untrained model's row first."""
    from elusive.io import write_jsonl

    chunk = {}
    if form == "md":
        corpus = tmp_path / "towns"
        corpus.mkdir()
        for town, text in TOWNS.items():
            paragraphs = text.replace(". ", ".\n\n")  # a paragraph a sentence
            (corpus / f"{town}.md").write_text(f"# {town}\n\n{paragraphs}\n")
        chunk = {"chunk": 24}
    elif form == "jsonl":
        rows = [{"id": t, "title": t, "text": text} for t, text in TOWNS.items()]
        corpus = write_jsonl(tmp_path / "towns.jsonl", rows)
    else:
        corpus = tmp_path / "towns.txt"
        corpus.write_text("\n\n".join(TOWNS.values()) + "\n")
    overrides = {
        "seeds": [0],
        "corpus": {"path": str(corpus), **chunk},
        "validation": 0.34,
        "augment": {"policies": ["none", "contrast"], "copies": 1, "alpha": [0.7], "beta": [0.03]},
        "train": {"lr": [1e-3], "epochs": [1], "batch_size": 4},
    }
    config = load_config(write_config(tmp_path / "c.yaml", tiny_pair, **overrides))
    run = run_experiment(config, progress=False, echo=lambda _: None)
    probes = [json.loads(line) for line in run.path("corpus", "qa.jsonl").open()]
    assert probes and all("question" not in p and p["cloze"] for p in probes)
    split = json.loads(run.path("corpus", "split.json").read_text())
    assert sorted(split["validation"] + split["test"]) == sorted({p["person_id"] for p in probes})
    cloze = {"cloze_em", "cloze_f1", "cloze_choice", "cloze_logprob"}
    kinds = {p["field"] for p in probes}
    assert {"date", "number"} <= kinds
    for metrics in run.root.joinpath("eval").rglob("metrics.json"):
        saved = json.loads(metrics.read_text())
        assert set(saved["scores"]) == kinds | {"overall"}
        for scores in saved["scores"].values():
            assert set(scores) == cloze | {"n"}
        assert "missing_metrics" not in saved["warnings"]
    summary = json.loads(run.path("report", "report.json").read_text())
    assert summary["select_metric"] == "cloze_f1"  # no QA F1: its cloze counterpart
    assert set(summary["study"]["small"]["metrics"]) == cloze  # no empty QA columns
    for row in summary["rows"]:
        assert cloze <= set(row["test"]["date"]) and "em" not in row["test"]["overall"]
    assert [row["policy"] for row in summary["rows"]] == ["untrained", "none", "contrast"]
    if form == "md":  # probes ask about passages, each named after its page and titled by it
        passages = [json.loads(line) for line in run.path("corpus", "corpus.jsonl").open()]
        assert len(passages) > len(TOWNS) and all("#" in p["id"] for p in passages)
        titles = {p["id"]: p["title"] for p in passages}
        assert all(p["cloze"].startswith(titles[p["person_id"]]) for p in probes)
    report = run.path("report", "report.md").read_text()
    assert "## Span-cloze probes" in report and "### cloze EM" in report
    assert "## Statistics over test texts and seeds" in report and "test people" not in report
    assert "| date cloze EM |" in report and "| overall cloze logprob |" in report


def _corpus_stage_only(monkeypatch) -> None:
    import elusive.experiment.pipeline as pipeline

    for stage in ("attention", "augment", "train", "evaluate", "report"):
        monkeypatch.setattr(pipeline, f"stage_{stage}", lambda *a, **k: "not run here")


def test_corpus_chunk_cuts_markdown_documents_into_passages(tmp_path, tiny_pair, monkeypatch):
    from elusive.corpus.chunking import sequence_length
    from elusive.corpus.records import read_corpus
    from elusive.experiment.pipeline import corpus_fingerprints
    from elusive.experiment.runs import Run
    from elusive.io import write_jsonl
    from elusive.models import load_tokenizer

    _corpus_stage_only(monkeypatch)
    pages = tmp_path / "wiki"
    pages.mkdir()
    for k in range(3):
        sections = [f"## Part {j}\n\n" + f"Fact {j} of page {k} is here. " * 12 for j in range(3)]
        (pages / f"page{k}.md").write_text(f"# Page {k}\n\n" + "\n\n".join(sections))
    qa = write_jsonl(
        tmp_path / "qa.jsonl",
        [{"source_id": f"page{k}.md", "question": f"Q{k}?", "answer": "a"} for k in range(3)],
    )
    corpus = {"path": str(pages), "qa": str(qa), "chunk": 40}
    path = write_config(tmp_path / "c.yaml", tiny_pair, corpus=corpus, validation=0.3)
    config = load_config(path)
    run_experiment(config, progress=False, echo=lambda _: None)
    passages = read_corpus(tmp_path / "run" / "corpus" / "corpus.jsonl")
    tokenizer = load_tokenizer(tiny_pair[1])  # the trained (small) model's
    documents = read_corpus(pages)
    for document in documents:
        mine = [p for p in passages if p.meta["doc_id"] == document.id]
        assert len(mine) > 3 and "".join(p.text for p in mine) == document.text
        assert [p.id for p in mine] == [f"{document.id}#{k}" for k in range(len(mine))]
        assert all(sequence_length(tokenizer, p.text) <= 40 for p in mine)
        assert {p.meta["title"] for p in mine} == {"Part 0", "Part 1", "Part 2"}
    # a changed chunk, or another tokenizer for it, redoes the corpus (and what follows)
    before = corpus_fingerprints(Run(config))
    config.corpus.chunk = 60
    assert corpus_fingerprints(Run(config)) != before
    config.corpus.chunk = 40
    config.models.small = tiny_pair[0]
    assert corpus_fingerprints(Run(config)) != before
    config.corpus.chunk, config.models.small = None, tiny_pair[1]
    config.train.max_length = 1024  # whole pages fit
    lines = []
    run_experiment(config, progress=False, echo=lines.append)
    assert any("corpus: redoing 1 made from other inputs: corpus" in line for line in lines)
    assert [r.id for r in read_corpus(tmp_path / "run" / "corpus" / "corpus.jsonl")] == [
        d.id for d in documents
    ]


def test_a_text_longer_than_max_length_fails_the_corpus_stage_writing_nothing(
    tmp_path, tiny_pair, monkeypatch
):
    from elusive.io import CorpusError, write_jsonl

    _corpus_stage_only(monkeypatch)
    long = "Many words follow here. " * 40
    corpus = write_jsonl(
        tmp_path / "corpus.jsonl", [{"id": "a", "text": "Short."}, {"id": "b", "text": long}]
    )
    qa = write_jsonl(
        tmp_path / "qa.jsonl",
        [{"source_id": i, "question": "Who?", "answer": "x"} for i in "ab"],
    )
    train = {"lr": [1e-3], "epochs": [1], "max_length": 64}
    path = write_config(
        tmp_path / "c.yaml", tiny_pair, corpus={"path": str(corpus), "qa": str(qa)}, train=train
    )
    with pytest.raises(CorpusError) as caught:
        run_experiment(load_config(path), progress=False, echo=lambda _: None)
    assert re.fullmatch(
        r"text 'b' is \d+ tokens long for model .*small \(BOS and EOS included\), more than "
        r"train.max_length 64: set corpus.chunk to cut texts into passages, or raise "
        r"train.max_length",
        str(caught.value),
    )
    assert not list((tmp_path / "run").glob("corpus/*"))
    with pytest.raises(ConfigError, match=r"corpus.chunk: must be in \[2, train.max_length = 64\]"):
        load_config(path, ["corpus.chunk=65"])
    load_config(path, ["corpus.chunk=64"])


def person_mean(rows: list[dict], person: str, metric: str, field: str = "company") -> float:
    """A person's mean `metric` over their questions on `field`."""
    values = [r[metric] for r in rows if r["source_id"] == person and r["field"] == field]
    return sum(values) / len(values)


def test_the_untrained_row_leads_the_report_and_is_one_evaluation(tmp_path, tiny_pair):
    """Every run evaluates the trained role's base model, untrained, once: eval/small/untrained
    holds what a direct `evaluate_qa` of the tiny model on the run's questions gives; it is the
    first row of every table, its means have CIs over the test people, `report.baselines:
    [untrained]` pairs each policy with it unit by unit (checked against a loop), and a run with
    other policies and seeds gets the very same evaluation."""
    from elusive.corpus.records import read_qa
    from elusive.evaluation.evaluate import evaluate_qa, load_for_eval

    grid_ = {**SMALL_GRID, "seeds": [0, 1]}
    grid_["report"] = {"analysis_texts": 4, "baselines": ["untrained", "none"]}
    config = load_config(write_config(tmp_path / "c.yaml", tiny_pair, **grid_))
    run = run_experiment(config, progress=False, echo=lambda _: None)
    folder = run.path("eval", "small", "untrained")
    found = [json.loads(line) for line in (folder / "predictions.jsonl").open()]
    model, tokenizer = load_for_eval(tiny_pair[1])
    questions = read_qa(run.path("corpus", "qa.jsonl"))
    direct = evaluate_qa(model, tokenizer, questions, config.evaluate, progress=False)
    assert found == json.loads(json.dumps(direct.predictions))
    assert json.loads((folder / "metrics.json").read_text())["untrained"]["role"] == "small"

    summary = json.loads(run.path("report", "report.json").read_text())
    rows = summary["rows"]
    assert [r["policy"] for r in rows] == ["untrained", "none", "contrast"]
    first = rows[0]
    assert first["seeds"] == [] and first["lr"] is None and first["epochs"] == 0
    test_ids = set(json.loads(run.path("corpus", "split.json").read_text())["test"])
    tested = [row for row in direct.predictions if row["source_id"] in test_ids]
    for field in ("company", "overall"):
        mine = [r for r in tested if field == "overall" or r["field"] == field]
        score = first["test"][field]
        assert score["n"] == len(mine)
        for metric in ("em", "f1", "cloze_em", "choice", "logprob"):
            assert score[metric] == pytest.approx(sum(r[metric] for r in mine) / len(mine))
            assert score[f"{metric}_std"] is None  # no seeds, no spread
    text = run.path("report", "report.md").read_text()
    for title in ("## Table 2", "## Knowledge probes", "## All fields"):
        table = text.split(title, 1)[1].split("\n|", 3)
        assert table[3].startswith(f" {tiny_pair[1]} | untrained | - | - | - | 0 |"), title
    assert "untrained: the base model before any training" in text

    # The study: untrained first with CIs over the test people, each policy paired with it.
    study = summary["study"]["small"]
    assert study["baseline"] == "untrained" and list(study["means"])[0] == "untrained"
    assert set(study["differences"]) == {"none", "contrast"}
    assert "### Paired differences against untrained" in text
    people = sorted(test_ids)
    for policy in ("none", "contrast"):
        (chosen,) = [r for r in rows if r["policy"] == policy]
        trained = {}
        for seed in (0, 1):
            cell = [c for c in grid(config) if c.policy == policy and c.seed == seed][0]
            path = run.path("eval", f"{cell.train_tag}_e{chosen['epochs']}", "predictions.jsonl")
            trained[seed] = [json.loads(line) for line in path.open()]
        for metric in ("em", "logprob"):
            by_person = []
            for person in people:
                base = person_mean(found, person, metric)
                per_seed = [person_mean(trained[s], person, metric) - base for s in (0, 1)]
                by_person.append(sum(per_seed) / 2)
            cell = study["differences"][policy]["company"][metric]
            assert cell["mean"] == pytest.approx(sum(by_person) / len(by_person), abs=1e-12)
            assert cell["n_people"] == len(people) and cell["low"] <= cell["mean"] <= cell["high"]
    base_means = study["means"]["untrained"]["company"]["em"]
    assert base_means["n_people"] == len(people)
    assert base_means["mean"] == pytest.approx(first["test"]["company"]["em"])
    # Against none as well: untrained's means lead that table too, but it is not paired there.
    against_none = summary["other_baselines"]["small"]["none"]
    assert list(against_none["means"])[0] == "untrained"
    assert set(against_none["differences"]) == {"contrast"}
    assert against_none["means"]["untrained"] == study["means"]["untrained"]

    # Other policies and seeds, another folder: the same evaluation, byte for byte.
    other = {**grid_, "seeds": [3], "report": {"analysis_texts": 4}}
    other["augment"] = {**grid_["augment"], "policies": ["random"]}
    other_config = load_config(write_config(tmp_path / "o.yaml", tiny_pair, **other))
    other_config.out = str(tmp_path / "other")
    other_run = run_experiment(other_config, progress=False, echo=lambda _: None)
    for name in ("predictions.jsonl", "metrics.json"):
        assert (
            other_run.path("eval", "small", "untrained", name).read_bytes()
            == (folder / name).read_bytes()
        )
    other_summary = json.loads(other_run.path("report", "report.json").read_text())
    assert other_summary["rows"][0] == first


def test_probes_of_passages_from_probes_build_are_a_chunked_runs_qa(
    tmp_path, tiny_pair, monkeypatch
):
    """`elusive probes build --chunk N --model M` names the passages a run with corpus.chunk N
    cuts: given back as corpus.qa, its probes split the passages into validation and test."""
    from elusive.corpus.cloze import probe_file

    _corpus_stage_only(monkeypatch)
    pages = tmp_path / "pages"
    pages.mkdir()
    for k, town in enumerate(TOWNS.items()):
        (pages / f"p{k}.md").write_text(f"# {town[0]}\n\n{town[1]}\n\n{town[1]}\n")
    probes = tmp_path / "probes.jsonl"
    probe_file(pages, probes, chunk=24, model=tiny_pair[1])
    corpus = {"path": str(pages), "qa": str(probes), "chunk": 24}
    path = write_config(tmp_path / "c.yaml", tiny_pair, corpus=corpus, validation=0.3)
    run = run_experiment(load_config(path), progress=False, echo=lambda _: None)
    passages = {json.loads(line)["id"] for line in run.path("corpus", "corpus.jsonl").open()}
    split = json.loads(run.path("corpus", "split.json").read_text())
    assert set(split["validation"] + split["test"]) <= passages
    assert all("#" in source for source in split["test"])


def test_figures_2_3_follow_a_change_of_model_not_a_stale_cache(tmp_path, tiny_pair, monkeypatch):
    """report/analysis.json (the attention rows of Figures 2-3, the `analysis` stage) is kept
    only while the models, the scoring options and the generator are the ones it was computed
    from."""
    import elusive.experiment.analysis as analysis
    from elusive.experiment.analysis import read_analysis
    from elusive.experiment.pipeline import stage_named
    from elusive.experiment.runs import Context

    large, small = tiny_pair
    config = load_config(write_config(tmp_path / "c.yaml", tiny_pair))
    config.report.analysis_texts = 3
    stage = stage_named("analysis")

    def rows(run: Run) -> dict:
        """The stage as `run_experiment` runs it: refreshed, then run."""
        run.refresh(stage, echo=lambda _: None)
        stage.run(run, Context(progress=False))
        return read_analysis(run)

    run = Run(config)
    run.open(echo=lambda _: None)
    first = rows(run)
    computed = analysis.company_query_rows
    calls = []
    monkeypatch.setattr(
        analysis, "company_query_rows", lambda *a, **k: calls.append(1) or computed(*a, **k)
    )
    assert rows(run) == first and not calls  # the same inputs: kept

    config.models.large = small  # the small model scored in the large one's place
    swapped = rows(run)
    assert calls == [1] and swapped != first
    assert swapped["large"] == swapped["small"] == first["small"]

    config.attention.prefix = "Text: "
    assert rows(run) != swapped and calls == [1, 1]
    fresh = Run(config, out=tmp_path / "fresh")
    fresh.open(echo=lambda _: None)
    assert rows(fresh) == rows(run)  # what a new folder computes


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_pair) -> Path:
    """A folder holding c.yaml (SMALL_GRID) and run/, every stage of it run."""
    root = tmp_path_factory.mktemp("finished")
    config = load_config(write_config(root / "c.yaml", tiny_pair, **SMALL_GRID))
    run_experiment(config, progress=False, echo=lambda _: None)
    return root


def stage_of(rel: str) -> str:
    """The stage that writes a file of the run folder (`elusive.experiment.layout`)."""
    top, *rest = Path(rel).parts
    if top == "report":
        return "analysis" if rest == ["analysis.json"] else "report"
    return {"scores": "attention", "eval": "evaluate"}.get(top, top)


@pytest.mark.parametrize(
    ("key", "value", "reached"),
    [
        # the generator's size: the corpus and all after it, not the analysis (own size)
        ("corpus.bios.n", 10, {"corpus", "attention", "augment", "train", "evaluate"}),
        ("attention.prefix", "Text: ", {"attention", "augment", "train", "evaluate", "analysis"}),
        ("augment.copies", 1, {"augment", "train", "evaluate"}),
        ("train.lr", [2e-3], {"train", "evaluate"}),
        ("train.warmup", 0.2, {"train", "evaluate"}),
        ("evaluate.max_new_tokens", 4, {"evaluate"}),
        ("report.analysis_texts", 3, {"analysis"}),
        ("report.select_metric", "em", set()),
        ("models.large", "SMALL", {"attention", "augment", "train", "evaluate", "analysis"}),
    ],
)
def test_a_changed_option_redoes_exactly_the_stages_it_reaches(
    tmp_path, tiny_pair, finished, key, value, reached
):
    """Each stage's fingerprint: a finished folder rerun with one option changed rewrites the
    outputs of the stages that option reaches (through the files it changes) and no other;
    the report is rendered anew every run."""
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(finished / "run", folder)
    config = load_config(finished / "c.yaml")
    *parents, name = key.split(".")
    section = config
    for part in parents:
        section = getattr(section, part)
    setattr(section, name, tiny_pair[1] if value == "SMALL" else value)

    def mtimes() -> dict[str, int]:
        return {
            str(p.relative_to(folder)): p.stat().st_mtime_ns
            for p in folder.rglob("*")
            if p.is_file() and p.name not in ("run.json", ".elusive.lock")
        }

    before, lines = mtimes(), []
    run_experiment(config, folder, progress=False, echo=lines.append)
    after = mtimes()
    redone = {stage_of(rel) for rel in after if before.get(rel) != after[rel]}
    assert redone == reached | {"report"}, lines


def test_the_authors_policy_ranks_by_a_second_scores_folder_of_the_authors_scorer(
    tmp_path, tiny_pair
):
    from elusive.augment.dropout import AugmentConfig, augment_file
    from elusive.scoring.scores import read_manifest, read_scores

    augment = {"policies": ["none", "authors"], "copies": 2, "alpha": [0.7], "beta": [0.1]}
    overrides = {"seeds": [0], "augment": augment, "train": {"lr": [1e-3], "epochs": [1]}}
    config = load_config(write_config(tmp_path / "c.yaml", tiny_pair, **overrides))
    lines: list[str] = []
    run = run_experiment(config, progress=False, echo=lines.append)
    assert "score" not in read_manifest(run.path("scores"))
    assert read_manifest(run.path("scores", "authors"))["score"] == "authors"
    theirs = read_scores(run.path("scores", "authors"))
    ours = read_scores(run.path("scores"))
    assert [r.tokens for r in theirs] == [r.tokens for r in ours]
    assert all(abs(c) < 2**-7 for row in theirs for c in row.contrast)  # 1/(i+1), both models
    # the run's authors corpus is what `elusive augment --policy authors` makes of that folder
    cell = next(c for c in grid(config) if c.policy == "authors")
    expected = tmp_path / "authors.jsonl"
    augment_file(
        run.path("scores", "authors"), expected, AugmentConfig("authors", 0.7, 0.1, copies=2)
    )
    made = run.path("augment", "small", f"{cell.augment_tag}.jsonl")
    assert made.read_bytes() == expected.read_bytes()
    outputs = json.loads(run.path("run.json").read_text())["outputs"]
    assert "scores/authors" in outputs
    assert any("scored by the authors' scorer" in line for line in lines if "attention" in line)
    before = snapshot(run.root)
    run_experiment(config, progress=False, echo=lines.append)
    assert snapshot(run.root) == before


@pytest.mark.parametrize("prefix", ["", "Text: "])
def test_a_run_of_policies_that_rank_nothing_scores_nothing_and_augments_the_same(
    tmp_path, tiny_pair, monkeypatch, prefix
):
    """Without models.large and with policies that rank nothing, the attention and analysis
    stages write nothing, and each augmented corpus is the bytes a scored run writes (the
    tokens stand for the scores)."""
    import elusive.experiment.pipeline as pipeline

    for name in ("train", "evaluate", "report"):
        monkeypatch.setattr(pipeline, f"stage_{name}", lambda *a, **k: "skipped")
    unranked = ["none", "plain", "random"]
    augment = {"policies": unranked, "copies": 2, "alpha": [0.5]}
    runs = {}
    for name, large, policies in (
        ("scored", tiny_pair[0], [*unranked, "contrast"]),
        ("unscored", None, unranked),
    ):
        path = write_config(
            tmp_path / f"{name}.yaml",
            tiny_pair,
            out=str(tmp_path / name),
            models={"large": large, "small": tiny_pair[1], "trained": ["small"]},
            augment={**augment, "policies": policies},
            attention={"prefix": prefix},
        )
        runs[name] = run_experiment(load_config(path), progress=False, echo=lambda _: None)
    scored, unscored = runs["scored"], runs["unscored"]
    assert scored.path("scores", "scores.jsonl").is_file()
    assert not unscored.path("scores").exists() and not unscored.path("report").exists()
    augmented = sorted(p.name for p in unscored.path("augment", "small").iterdir())
    assert len(augmented) == 3 * 2  # three policies, two seeds
    for name in augmented:
        mine = unscored.path("augment", "small", name).read_bytes()
        assert mine == scored.path("augment", "small", name).read_bytes(), name
    assert b'"copy": 1' in unscored.path("augment", "small", "random_a0.5_s0.jsonl").read_bytes()
