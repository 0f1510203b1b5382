"""A model out of a run: the trained adapter merged into its base, as a Hugging Face folder.

`export_model(SOURCE, OUT)` (``elusive export SOURCE --out OUT``) writes::

    OUT/config.json, generation_config.json   the base model's, with the merged weights' dtype
    OUT/model.safetensors                     every weight, the LoRA adapter merged in
    OUT/tokenizer.json, tokenizer_config.json the base model's tokenizer
    OUT/README.md                             the model card (`model_card`)

so that ``AutoModelForCausalLM.from_pretrained(OUT)`` loads the trained model with no peft.
SOURCE is one of (`find_checkpoint`):

- an epoch folder of `elusive train`, RUN_DIR/epoch-N: a LoRA adapter (merged into the base
  model its run.json records) or, from a ``--full`` run, a whole model (saved as it is);
- any peft LoRA adapter folder, on the base its adapter_config.json names (or ``model``);
- a training run folder of `elusive train` (RUN_DIR): its last epoch, or ``epoch``;
- a run folder of `elusive run`: the checkpoint of the setting that report/report.json picked
  on the validation questions, the best validation score over every trained role and policy;
  ``policy``, ``role``, ``epoch`` and ``seed`` pick another. A tie between policies, or a
  setting run with several seeds, is ambiguous and refused in one line asking for the option.

The merged weights have the base weights' dtype as the run trained them (``train.dtype``). A
QLoRA adapter (``train.quantize: 4bit``) is merged into the base loaded unquantized: the
exported model is the one `elusive run` evaluates, which differs from the adapter over the
4-bit base by the base's rounding to 4 bits (``elusive evaluate --quantize 4bit`` measures
that one). OUT must be new or an empty folder; the folder is written beside it under a temp
name and renamed into place, so an interrupted export leaves no half-written model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elusive.errors import ElusiveError
from elusive.io import (
    OutputError,
    check_apart,
    check_out_dir,
    name_failed_write,
    plain_modes,
    read_json,
    remove_temps_of,
    temp_beside,
)
from elusive.options import UNTRAINED

CARD = "README.md"


class ExportError(ElusiveError):
    """A source that is no checkpoint elusive can export, or a choice of checkpoint that is
    ambiguous or names nothing; the message names the folder and the option."""


@dataclass
class Checkpoint:
    """What `export_model` writes and what its model card says of it."""

    folder: Path
    """The epoch folder: a LoRA adapter, or a whole model (``full``)."""
    base: str
    """The base model's spec (folder, .gguf file, pack name or hub id)."""
    dtype: str
    """The dtype name the weights are merged and saved in."""
    full: bool = False
    """`folder` holds a whole finetuned model, not an adapter."""
    train: dict[str, Any] | None = None
    """The training options as the training run recorded them (its run.json), if known."""
    corpus: dict[str, Any] = field(default_factory=dict)
    """What the card says of the corpus: path, texts, hashes (what is known)."""
    augment: dict[str, Any] | None = None
    """The token-dropout policy and its options, for a checkpoint of `elusive run`."""
    measured: dict[str, Any] | None = None
    """Test scores of this checkpoint and of the untrained base, for one of `elusive run`."""
    run: Path | None = None
    """The run folder it was picked from (`elusive train`'s or `elusive run`'s)."""


@dataclass
class ExportChoice:
    """Which checkpoint of a source `export_model` merges (see `find_checkpoint`); None leaves
    the choice to what the source records."""

    policy: str | None = None
    """Of an `elusive run` folder: this policy's selected setting."""
    role: str | None = None
    """Of an `elusive run` folder: this trained role's setting."""
    epoch: int | None = None
    """Of a run folder: this epoch instead of the selected one."""
    seed: int | None = None
    """Of an `elusive run` folder: this seed's training run."""
    model: str | None = None
    """Base model spec (default: the one the run records)."""


# --------------------------------------------------------------------------- finding it


def find_checkpoint(
    source: str | Path,
    *,
    policy: str | None = None,
    role: str | None = None,
    epoch: int | None = None,
    seed: int | None = None,
    model: str | None = None,
) -> Checkpoint:
    """The checkpoint `source` stands for (see the module docstring); `model` overrides the
    base model spec a run records. Reads only small files: no model is loaded."""
    source = Path(source)
    if not source.is_dir():
        what = "is not a folder" if source.exists() else "no such folder"
        raise ExportError(f"{source}: {what}; give an adapter, a training run or a run folder")
    record = _read_record(source / "run.json")
    if record is not None and "models" in record.get("config", {}):
        return _from_pipeline(source, record, policy, role, epoch, seed, model)
    for name, value in (("--policy", policy), ("--role", role), ("--seed", seed)):
        if value is not None:
            raise ExportError(f"{source}: {name} picks a checkpoint of an `elusive run` folder")
    if record is not None:  # a training run folder of `elusive train`
        return _from_training(_epoch_folder(source, epoch), model)
    if epoch is not None:
        raise ExportError(f"{source}: --epoch picks an epoch of a run folder; this is one epoch")
    return _from_training(source, model)


def _read_record(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    record = read_json(path)
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ExportError(f"{path}: not a run.json elusive wrote (no config)")
    return record


def _epoch_folder(run_dir: Path, epoch: int | None) -> Path:
    """RUN_DIR/epoch-N of a training run: `epoch`, or the last one saved."""
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such training run folder")
    saved = sorted(
        int(m.group(1))
        for p in run_dir.iterdir()
        if p.is_dir() and (m := re.fullmatch(r"epoch-(\d+)", p.name))
    )
    if not saved:
        raise ExportError(f"{run_dir}: no epoch has been saved yet (no epoch-N folder)")
    if epoch is None:
        return run_dir / f"epoch-{saved[-1]}"
    if epoch not in saved:
        raise ExportError(f"{run_dir}: --epoch {epoch} was not saved (saved: {_listed(saved)})")
    return run_dir / f"epoch-{epoch}"


def _from_training(folder: Path, model: str | None) -> Checkpoint:
    """An epoch folder (or any adapter or model folder) with what its training run recorded."""
    from elusive.models import DTYPES

    adapter = (folder / "adapter_config.json").is_file()
    if not adapter and not (folder / "config.json").is_file():
        raise ExportError(
            f"{folder}: holds no adapter_config.json nor config.json: not an adapter, a model, "
            "a training run or a run folder"
        )
    run_dir = folder.parent
    record = _read_record(run_dir / "run.json")
    train = record["config"] if record is not None and "model" in record["config"] else None
    corpus = {}
    if train is None:
        run_dir = None
    else:
        corpus["path"] = "not recorded by `elusive train`, only its hash"
        log = folder / "log.json"
        texts = read_json(log).get("texts") if log.is_file() else None
        if texts is not None:
            corpus["texts"] = texts
        corpus["sha256 of the records' sha256s (run.json)"] = record.get("corpus_sha256")
    if adapter:
        recorded = read_json(folder / "adapter_config.json").get("base_model_name_or_path")
        base = model or (train or {}).get("model") or recorded
    else:  # a --full run's epoch folder: the model itself
        base = model or (train or {}).get("model") or str(folder)
    if not base:
        raise ExportError(f"{folder}: names no base model; give it with --model")
    dtype = (train or {}).get("dtype")
    if dtype is None:
        from elusive.models import resolve_model

        dtype = _stored_dtype(folder if not adapter else resolve_model(base))
    if dtype not in DTYPES:
        raise ExportError(f"{folder}: unknown weight dtype {dtype!r}")
    return Checkpoint(
        folder, str(base), dtype, full=not adapter, train=train, corpus=corpus, run=run_dir
    )


def _stored_dtype(folder: Path) -> str:
    """The dtype a model folder's config.json records its weights in (float32 if none)."""
    config = read_json(Path(folder) / "config.json")
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    return str(dtype).removeprefix("torch.")


def _from_pipeline(
    root: Path,
    manifest: dict[str, Any],
    policy: str | None,
    role: str | None,
    epoch: int | None,
    seed: int | None,
    model: str | None,
) -> Checkpoint:
    """The checkpoint of an `elusive run` folder that its report picked (or the options)."""
    from elusive.experiment.config import RunConfig, from_dict
    from elusive.experiment.runs import Cell, Run, eval_dirs
    from elusive.io import file_sha256

    config = from_dict(RunConfig, manifest["config"], str(root / "run.json"))
    report = root / "report" / "report.json"
    if not report.is_file():
        raise ExportError(f"{root}: no report/report.json yet: let `elusive run` finish first")
    summary = read_json(report)
    row = _pick_row(root, summary.get("rows", []), policy, role)
    seeds = row["seeds"]
    if seed is None and len(seeds) > 1:
        raise ExportError(
            f"{root}: {row['role']} {row['policy']} ran with seeds {_listed(seeds)}: "
            "give --seed to pick one"
        )
    if seed is None:
        seed = seeds[0]
    elif seed not in seeds:
        raise ExportError(f"{root}: --seed {seed} did not run (seeds {_listed(seeds)})")
    cell = Cell(row["role"], row["policy"], row["alpha"], row["beta"], row["lr"], seed)
    train_dir = root / "train" / cell.train_tag
    picked = _from_training(
        _epoch_folder(train_dir, row["epochs"] if epoch is None else epoch), model
    )
    epoch = int(picked.folder.name.split("-")[1])

    augmented = root / "augment" / cell.role / f"{cell.augment_tag}.jsonl"
    corpus_file = root / "corpus" / "corpus.jsonl"
    section = config.corpus
    given = {k: getattr(section, k) for k in ("path", "qa", "squad") if getattr(section, k)}
    if section.bios is not None:
        given["bios"] = "synthetic biographies, " + ", ".join(
            f"{k}={v}" for k, v in manifest["config"]["corpus"]["bios"].items()
        )
    picked.corpus = {
        **given,
        "texts": _lines(corpus_file),
        "sha256 of corpus/corpus.jsonl": file_sha256(corpus_file),
        "trained on": f"{augmented.relative_to(root)}, {_lines(augmented)} texts (the "
        "originals and their augmented copies), sha256 " + file_sha256(augmented),
    }
    options = {
        k: v
        for k, v in manifest["config"]["augment"].items()
        if k not in config.augment.grid.values()
    }
    picked.augment = {
        "policy": cell.policy,
        "alpha": cell.alpha,
        "beta": cell.beta,
        "seed": cell.seed,
        **options,
    }
    run = Run(config, root)
    folder = next((d for c, e, d in eval_dirs(run) if c == cell and e == epoch), None)
    picked.measured = {
        "role": cell.role,
        "epoch": epoch,
        "seed": seed,
        "selected": epoch == row["epochs"],
        "test": _test_scores(root, folder),
        UNTRAINED: _untrained(summary, cell.role),
        "select_metric": summary.get("select_metric"),
        "validation_score": row.get("validation_score"),
    }
    picked.run = root
    return picked


def _pick_row(
    root: Path, rows: list[dict[str, Any]], policy: str | None, role: str | None
) -> dict[str, Any]:
    """The report row to export: of `policy` and `role` where given, else the best validation
    score; a tie is refused, naming the tied rows."""
    trained = [r for r in rows if r.get("policy") != UNTRAINED]
    if not trained:
        raise ExportError(f"{root}/report/report.json: holds no trained setting")
    if role is not None:
        roles = sorted({r["role"] for r in trained})
        trained = [r for r in trained if r["role"] == role]
        if not trained:
            raise ExportError(f"{root}: --role {role} was not trained (trained: {_listed(roles)})")
    if policy is not None:
        policies = list(dict.fromkeys(r["policy"] for r in trained))
        trained = [r for r in trained if r["policy"] == policy]
        if not trained:
            raise ExportError(
                f"{root}: --policy {policy} did not run (policies: {_listed(policies)})"
            )
    best = max(r["validation_score"] for r in trained)
    tied = [r for r in trained if r["validation_score"] == best]
    if len(tied) > 1:
        options = "--policy" if len({r["role"] for r in tied}) == 1 else "--role and --policy"
        names = ", ".join(f"{r['role']} {r['policy']}" for r in tied)
        raise ExportError(
            f"{root}: {names} tie on the validation score ({best:.4g}): give {options} to pick one"
        )
    return tied[0]


def _test_scores(root: Path, folder: Path | None) -> dict[str, dict[str, float]] | None:
    """Per field and overall, the checkpoint's mean scores over the test people's questions
    (as the report computes them), or None where it was not evaluated."""
    from elusive.io import iter_jsonl
    from elusive.metrics import aggregate

    if folder is None or not (folder / "predictions.jsonl").is_file():
        return None
    test = set(read_json(root / "corpus" / "split.json")["test"])
    rows = [row for _, row in iter_jsonl(folder / "predictions.jsonl") if row["source_id"] in test]
    return {f: {**s.present(), "n": s.n} for f, s in aggregate(rows).items()}


def _untrained(summary: dict[str, Any], role: str) -> dict[str, Any] | None:
    """The test scores of the report's `untrained` row for the base of `role`, if it has one."""
    for row in summary.get("rows", []):
        if row.get("policy") == UNTRAINED and row.get("role", role) == role:
            return row.get("test")
    return None


def _lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def _listed(values: Any) -> str:
    return ", ".join(str(v) for v in values)


# --------------------------------------------------------------------------- writing it


def export_model(
    source: str | Path,
    out_dir: str | Path,
    *,
    policy: str | None = None,
    role: str | None = None,
    epoch: int | None = None,
    seed: int | None = None,
    model: str | None = None,
) -> Checkpoint:
    """Merge the checkpoint `source` stands for into its base model and write the Hugging Face
    folder `out_dir` with its model card (see the module docstring). `out_dir` that exists and
    is not empty, lies inside the source or the base model, or holds either is refused before
    anything loads. Returns what was exported."""
    from elusive.models import resolve_model

    out = Path(out_dir)
    check_out_dir(out)
    if out.is_symlink():
        raise OutputError(f"{out}: is a symbolic link; give a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        raise OutputError(
            f"{out}: is not empty; export writes a new folder: give a new or empty --out"
        )
    checkpoint = find_checkpoint(
        source, policy=policy, role=role, epoch=epoch, seed=seed, model=model
    )
    check_apart([out], {"SOURCE": source, "the checkpoint": checkpoint.folder})
    if not checkpoint.full:
        check_apart([out], {"the base model": resolve_model(checkpoint.base)})
    remove_temps_of(out)  # what a killed export left beside it
    merged, tokenizer = _merged(checkpoint)
    card = model_card(checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(out)
    try:
        merged.save_pretrained(tmp)  # model.safetensors: transformers writes nothing else
        tokenizer.save_pretrained(tmp)
        (tmp / CARD).write_text(card, encoding="utf-8")
        plain_modes(tmp)
        os.replace(tmp, out)  # onto an empty folder, too
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        name_failed_write(exc, out)
        raise
    return checkpoint


def _merged(checkpoint: Checkpoint):
    """(model, tokenizer): the adapter merged into the unquantized base, in the checkpoint's
    dtype, or the whole model of a --full checkpoint."""
    from elusive.evaluation.evaluate import load_for_eval
    from elusive.models import DTYPES, load_model

    dtype = DTYPES[checkpoint.dtype]
    if checkpoint.full:
        return load_model(checkpoint.folder, dtype=dtype, device="cpu")
    return load_for_eval(checkpoint.base, checkpoint.folder, dtype)


# --------------------------------------------------------------------------- the model card


def model_card(checkpoint: Checkpoint) -> str:
    """README.md of the exported folder: the base model (spec and fingerprint), the corpus, the
    policy and its options, the training options and, for a checkpoint of `elusive run`, its
    test scores beside the untrained base's."""
    from elusive.models import model_fingerprint

    c = checkpoint
    base_print = model_fingerprint(c.folder if c.full and c.base == str(c.folder) else c.base)
    train = c.train or {}
    how = (
        "finetuned in full"
        if c.full
        else "a LoRA adapter merged into the base weights"
        + (
            " (trained as QLoRA on the base quantized to 4-bit NF4; merged into the unquantized "
            "base)"
            if train.get("quantize") == "4bit"
            else ""
        )
    )
    lines = [
        "---",
        "library_name: transformers",
        "tags: [elusive, continual-pretraining" + ("" if c.full else ", lora") + "]",
        "---",
        "",
        f"# {Path(c.base).name}, continual-pretrained by elusive",
        "",
        f"A causal LM trained by continual pretraining with elusive: {how}. It loads with",
        "`AutoModelForCausalLM.from_pretrained` and needs no peft.",
        "",
        "## Base model",
        "",
        f"- spec: `{c.base}`",
        f"- fingerprint: `{base_print}` (`elusive.models.model_fingerprint`)",
        f"- weights: {c.dtype}",
        f"- checkpoint: `{c.folder}`",
        "",
        "## Corpus",
        "",
    ]
    if not c.corpus:
        lines.append("- not recorded (an adapter outside a training run folder)")
    lines += [f"- {key}: {_shown(value)}" for key, value in c.corpus.items()]
    lines += ["", "## Policy", ""]
    if c.augment is None:
        lines.append(
            "- not recorded: trained by `elusive train` on the corpus it was given (augmented "
            "or not)"
        )
    else:
        lines += [f"- {key}: {_shown(value)}" for key, value in c.augment.items()]
    lines += ["", "## Training options", ""]
    if not train:
        lines.append("- not recorded (an adapter outside a training run folder)")
    lines += [f"- {key}: {_shown(value)}" for key, value in train.items()]
    if c.measured is not None:
        lines += ["", *_measured_lines(c.measured)]
    return "\n".join(lines) + "\n"


def _measured_lines(measured: dict[str, Any]) -> list[str]:
    """The card's "Measured" section: overall, each metric's test score of this checkpoint, the
    untrained base's and the difference; then per field, this checkpoint's and the difference."""
    from elusive.metrics import LABELS

    selected = "the" if measured["selected"] else "not the"
    lines = [
        "## Measured",
        "",
        f"On the run's test questions: `{measured['role']}` at epoch {measured['epoch']}, seed "
        f"{measured['seed']}, {selected} epoch the report selected on validation "
        f"{measured['select_metric']} ({_shown(measured['validation_score'])}).",
        "",
    ]
    test, untrained = measured["test"], measured[UNTRAINED] or {}
    if test is None:
        return [*lines, "This epoch was not evaluated by the run.", ""]
    if not untrained:
        lines += ["The report has no `untrained` row: the base before training is not shown.", ""]
    overall, before = test["overall"], untrained.get("overall", {})
    lines += [
        f"| overall (n={overall['n']}) | this model | untrained | difference |",
        "|---|---|---|---|",
    ]
    for metric, value in overall.items():
        if metric != "n":
            was = before.get(metric)
            shown, diff = ("-", "-") if was is None else (f"{was:.3f}", f"{value - was:+.3f}")
            lines.append(f"| {LABELS.get(metric, metric)} | {value:.3f} | {shown} | {diff} |")
    fields = [f for f in test if f != "overall"]
    if fields:
        lines += [
            "",
            "Per field (in brackets: the difference from untrained):",
            "",
            "| metric | " + " | ".join(f"{f} (n={test[f]['n']})" for f in fields) + " |",
            "|---|" + "---|" * len(fields),
        ]
        for metric in (m for m in overall if m != "n"):
            cells = []
            for f in fields:
                value, was = test[f].get(metric), untrained.get(f, {}).get(metric)
                cell = "-" if value is None else f"{value:.3f}"
                if value is not None and was is not None:
                    cell += f" ({value - was:+.3f})"
                cells.append(cell)
            lines.append(f"| {LABELS.get(metric, metric)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return "-" if value is None else str(value)
