"""`elusive migrate FOLDER`: upgrade a run folder made by an older elusive to `runs.SCHEMA`.

A run folder records its layout version in run.json (``schema``); `elusive run` opens only
folders of the version it writes, so the code that runs experiments knows one layout. Each
older version has one step here that upgrades it in place, from what the folder itself
recorded, never from a config given now:

- 0 -> 1: a folder made before outputs carried fingerprints (elusive up to stop 11). Its
  outputs were made from the config its run.json records; each is recorded with the
  fingerprint of that config and of the files before it, as `elusive run` would have written
  (report/analysis.json by the key it holds).
- 1 -> 2: the recorded ``augment.replace_with_spaces`` becomes ``augment.drop_style``
  (``space`` where it was true, else ``delete``). A folder of version 1 may not have the
  version written.

A folder of `elusive table1` from before Table 1 ran as a run config (``data/``, ``run/``,
``eval/``, no run.json of its own) records no run config to upgrade from: it is named and
refused, and left as it was; `elusive table1 --out NEW` makes the current kind.

The folder's lock is held meanwhile and run.json is replaced atomically: an interrupted
migration leaves the folder as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

from elusive.experiment.config import ConfigError, RunConfig, from_dict
from elusive.experiment.pipeline import PIPELINE
from elusive.experiment.runs import SCHEMA, Run, schema_of
from elusive.io import atomic_write_text, folder_lock, read_json


def migrate(folder: str | Path) -> str:
    """Upgrade the run folder `folder` to `SCHEMA` in place; returns what was done."""
    folder = Path(folder)
    path = folder / "run.json"
    if not path.is_file() and _old_table1(folder):
        raise ConfigError(
            f"{folder}: an `elusive table1` folder of the layout before Table 1 ran as a run "
            "config (data/, run/, eval/): it records no run config to upgrade from; rerun "
            "`elusive table1 --out NEW_FOLDER`"
        )
    if not path.is_file():
        raise ConfigError(f"{path}: no such file: not a run folder of `elusive run`")
    with folder_lock(folder):
        manifest = read_json(path)
        found = schema_of(manifest)
        if found > SCHEMA:
            raise ConfigError(
                f"{path}: schema {found}, made by a newer elusive (this one writes {SCHEMA})"
            )
        if "schema" in manifest and found == SCHEMA:
            return f"{folder}: already schema {SCHEMA}, nothing to do"
        recorded = manifest.get("config")
        augment = recorded.get("augment") if isinstance(recorded, dict) else None
        if isinstance(augment, dict) and "replace_with_spaces" in augment:  # 1 -> 2
            augment["drop_style"] = "space" if augment.pop("replace_with_spaces") else "delete"
        if found == 0:
            config = from_dict(RunConfig, recorded, f"{path}: config")
            config.validate(f"{path}: config")
            run = Run(config, out=folder)
            manifest["outputs"] = {}
            for stage in PIPELINE:  # an output that holds its inputs is known by them
                held = stage.self_recorded
                manifest["outputs"].update(held(run) if held else stage.fingerprints(run))
            manifest.pop("fixed_config_sha256", None)
        manifest["schema"] = SCHEMA
        atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
    return f"{folder}: schema {found} -> {SCHEMA}"


def _old_table1(folder: Path) -> bool:
    """Whether `folder` has the layout `elusive table1` wrote before it ran as a run config."""
    made = ("data/people.jsonl", "data/qa.jsonl", "run/run.json")
    return all((folder / name).is_file() for name in made) and (folder / "eval").is_dir()
