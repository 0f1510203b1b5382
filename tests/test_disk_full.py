"""Every command on a full 2 MB disk: one ``error:`` line, exit code 2, nothing half written
left; the same command on a roomy disk then writes what a run that never met the full disk
writes. The disk is a tmpfs, mounted where that is permitted (root, a container that allows
it); a filler file takes all of it but `room` KiB, so each command meets the full disk at a
chosen point.

Each command runs three times, each time from a folder of its own with the same relative
``--out``, so the paths it writes into its outputs match: on the full disk, then on a roomy
disk, and (the reference) on a roomy disk with a score cache of its own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from elusive.cli import app
from elusive.tiny import make_tiny_model

runner = CliRunner()
SQUAD = Path(__file__).parent / "data" / "squad_small.json"
# What a run records of itself rather than of its results: the seconds each stage and epoch
# took (run.json, log.json), and how many texts each process scored rather than read from the
# score cache (a scores folder's manifest.json).
TIMINGS = {"run.json": "seconds", "log.json": "seconds", "manifest.json": "processes"}


@pytest.fixture
def disk(tmp_path):
    """A 2 MiB tmpfs, unmounted after the test."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mount
    finally:  # lazily: a file a failed command left open must not keep the disk mounted
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def fill(disk: Path, room_kib: int) -> None:
    """Leave `room_kib` KiB free on `disk` with a filler file."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with (disk / "filler").open("wb") as fh:
        fh.write(b"\0" * max(free - room_kib * 1024, 0))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny model, biographies, their scores and a run config, made once (absolute paths)."""
    root = tmp_path_factory.mktemp("inputs")
    model = make_tiny_model(root / "tiny", arch="llama")
    env = {"ELUSIVE_CACHE": str(root / "cache")}
    for args in (
        ["bios", "generate", "--n", "8", "--out", str(root / "data")],
        ["attention", "--corpus", str(root / "data" / "people.jsonl"), "--large", str(model)]
        + ["--small", str(model), "--out", str(root / "scores")],
    ):
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 0, result.output
    config = {
        "out": "run",
        "seeds": [0],
        "corpus": {"bios": {"n": 8, "seed": 0}},
        "validation": 0.25,
        "models": {"large": str(model), "small": str(model), "trained": ["small"]},
        "augment": {"policies": ["none"], "copies": 1, "alpha": [0.7], "beta": [0.1]},
        "train": {"lr": [1e-3], "epochs": [1], "batch_size": 8},
        "evaluate": {"batch_size": 32, "max_new_tokens": 4},
        "report": {"analysis_texts": 4},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    return root


def commands(inputs: Path) -> dict[str, list[str]]:
    model, data, scores = str(inputs / "tiny"), inputs / "data", str(inputs / "scores")
    return {
        "bios generate": ["bios", "generate", "--n", "8", "--out", "out"],
        "squad convert": ["squad", "convert", str(SQUAD), "--out", "out"],
        "attention": ["attention", "--corpus", str(data / "people.jsonl"), "--large", model]
        + ["--small", model, "--out", "out"],
        "augment": ["augment", "--scores", scores, "--copies", "1", "--out", "out.jsonl"],
        "show": ["show", "p0", "--scores", scores, "--out", "show"],
        "train": ["train", "--model", model, "--corpus", str(data / "people.jsonl")]
        + ["--epochs", "1", "--batch-size", "8", "--out", "out"],
        "evaluate": ["evaluate", "--model", model, "--qa", str(data / "qa.jsonl")]
        + ["--max-new-tokens", "4", "--out", "out"],
        "table1": ["table1", "--model", model, "--n", "4", "--epochs", "1", "--out", "out"],
        "run": ["run", str(inputs / "run.yaml"), "--out", "out"],
    }


def invoke(args: list[str], where: Path, cache: Path, monkeypatch):
    monkeypatch.chdir(where)
    return runner.invoke(app, args, env={"ELUSIVE_CACHE": str(cache)})


def files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def comparable(path: Path):
    """A file's bytes; for the files of TIMINGS, its JSON without that key (at any depth)."""
    key = TIMINGS.get(path.name)
    if key is None:
        return path.read_bytes()

    def drop(obj):
        if isinstance(obj, dict):
            return {k: drop(v) for k, v in obj.items() if k != key}
        return [drop(v) for v in obj] if isinstance(obj, list) else obj

    return drop(json.loads(path.read_text("utf-8")))


def one_error(result) -> str:
    """The one `error:` line of a failed command (progress bars aside), checked."""
    assert result.exit_code == 2, (result.exception, result.output)
    assert "Traceback" not in result.output
    errors = re.findall(r"error: (.*)", result.stderr)
    assert len(errors) == 1, result.stderr
    assert result.stderr.rstrip().endswith(errors[0])  # the last word, after any progress bar
    return errors[0]


@pytest.mark.parametrize(
    ("command", "room"),
    [
        ("bios generate", 8),  # people.jsonl fits, qa.jsonl does not
        ("squad convert", 0),
        ("attention", 0),
        ("augment", 0),
        ("show", 8),  # the HTML fits, the PNG does not
        ("train", 0),
        ("train", 160),  # the checkpoint's adapter fits, its trainer state does not
        ("evaluate", 4),  # metrics.json fits, predictions.jsonl does not
        ("table1", 12),  # its corpus fits, training does not
        ("run", 300),  # corpus, scores and augmented copies fit, training does not
    ],
)
def test_full_disk_is_one_error_line_and_a_roomy_rerun_writes_the_same(
    tmp_path, disk, inputs, command, room, monkeypatch
):
    args = commands(inputs)[command]
    out = args[-1]
    for name in ("roomy", "reference"):
        (tmp_path / name).mkdir()
    fill(disk, room)

    message = one_error(invoke(args, disk, tmp_path / "cache", monkeypatch))
    assert message.startswith(out) and message.endswith(": no space left on device"), message
    result = invoke(args, tmp_path / "roomy", tmp_path / "cache", monkeypatch)
    assert result.exit_code == 0, (result.exception, result.output)
    result = invoke(args, tmp_path / "reference", tmp_path / "own-cache", monkeypatch)
    assert result.exit_code == 0, (result.exception, result.output)

    reference, roomy = files(tmp_path / "reference"), files(tmp_path / "roomy")
    assert sorted(roomy) == sorted(reference)
    for name, path in roomy.items():
        assert comparable(path) == comparable(reference[name]), name
    # Left on the full disk: whole files the reference wrote too, no temp or half-written one.
    left = {name: path for name, path in files(disk).items() if name != "filler"}
    assert set(left) <= set(reference), sorted(set(left) - set(reference))
    for name, path in left.items():
        if path.name in TIMINGS:
            json.loads(path.read_text("utf-8"))  # whole: it records the stages done so far
        else:
            assert path.read_bytes() == reference[name].read_bytes(), name


def test_full_out_keeps_the_finished_scores_in_the_cache(tmp_path, disk, inputs, monkeypatch):
    args = commands(inputs)["attention"]
    (tmp_path / "roomy").mkdir()
    fill(disk, 0)
    message = one_error(invoke(args, disk, tmp_path / "cache", monkeypatch))
    assert message == "out/scores.jsonl: no space left on device"
    assert list((tmp_path / "cache" / "attention").rglob("chunk-*.json"))
    result = invoke(args, tmp_path / "roomy", tmp_path / "cache", monkeypatch)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "roomy" / "out" / "manifest.json").read_text())
    assert manifest["processes"] == [{"rank": 0, "texts": 0, "tokens": 0}]  # all from the cache


def test_read_only_cache_warns_once_and_keeps_the_scores(tmp_path, disk, inputs, monkeypatch):
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    args = commands(inputs)["attention"]
    for name in ("ro", "reference"):
        (tmp_path / name).mkdir()
    result = invoke(args, tmp_path / "ro", disk, monkeypatch)
    assert result.exit_code == 0, (result.exception, result.output)
    warnings = re.findall(r"warning: (.*)", result.stderr)
    assert warnings == [
        f"{disk}/attention: cannot write the score cache (read-only file system); this run "
        "keeps its scores in memory, a rerun scores again"
    ]
    result = invoke(args, tmp_path / "reference", tmp_path / "cache", monkeypatch)
    assert result.exit_code == 0, result.output
    for name in ("scores.jsonl", "manifest.json"):  # manifest.json without its `processes`
        ro, reference = (tmp_path / where / "out" / name for where in ("ro", "reference"))
        assert comparable(ro) == comparable(reference), name
