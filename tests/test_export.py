"""Exporting a trained checkpoint: a Hugging Face folder that loads without peft and answers as
the base model with its adapter does, with a model card; picking a run's selected setting."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from elusive.cli import app
from elusive.experiment.export import ExportError, export_model, find_checkpoint
from elusive.io import OutputError
from elusive.models import load_model, model_fingerprint, quiet_peft
from elusive.tiny import make_tiny_model
from elusive.training.train import TrainConfig, train

PROMPTS = [
    "Liam Thompson was born on",
    "She studied at",
    "The company",
    "Gabriella Kimberly Mather spent her early years in",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(model_dir, **overrides) -> TrainConfig:
    defaults = dict(
        model=str(model_dir), epochs=2, lr=2e-2, batch_size=4, warmup=0.0, mixed_precision="no"
    )
    return TrainConfig(**{**defaults, **overrides})


def _greedy(model, tokenizer, prompts=PROMPTS, new=8) -> list[list[int]]:
    """Greedy continuations, one prompt at a time (no padding to differ between models)."""
    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([tokenizer(prompt)["input_ids"]], device=model.device)
            seq = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new,
                min_new_tokens=new,  # past EOS too: more tokens compared
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
            out.append(seq[0, ids.shape[1] :].tolist())
    return out


def _logits(model, tokenizer, prompts=PROMPTS) -> list[torch.Tensor]:
    with torch.no_grad():
        return [
            model(input_ids=torch.tensor([tokenizer(p)["input_ids"]], device=model.device)).logits
            for p in prompts
        ]


def _base_plus_adapter(base_dir, adapter):
    """The base model with the adapter beside its layers (peft, not merged): the reference."""
    from peft import PeftModel

    base, tokenizer = load_model(base_dir)
    with quiet_peft():
        return PeftModel.from_pretrained(base, adapter).eval(), tokenizer


def _safetensors_dtypes(path: Path) -> set[str]:
    """The dtypes a safetensors file's header records, read without torch."""
    with path.open("rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def test_exported_folder_loads_and_answers_as_base_plus_adapter(tiny_model_dir, records, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "run"
    last = train(_config(tiny_model_dir), records, run, progress=False)
    out = tmp_path / "model"
    checkpoint = export_model(run, out)  # a training run folder: its last epoch
    assert checkpoint.folder == last
    names = sorted(p.name for p in out.iterdir())
    assert {"config.json", "model.safetensors", "generation_config.json", "README.md"} <= set(names)
    assert "tokenizer.json" in names and not any("adapter" in n for n in names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "run"]  # no temp left

    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    reference, base_tokenizer = _base_plus_adapter(tiny_model_dir, last)
    assert tokenizer(PROMPTS)["input_ids"] == base_tokenizer(PROMPTS)["input_ids"]
    assert exported.dtype == torch.float32 and _safetensors_dtypes(out / "model.safetensors") == {
        "F32"
    }
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    for got, want in zip(_logits(exported, tokenizer), _logits(reference, tokenizer), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert _greedy(exported, tokenizer) == _greedy(reference, tokenizer)
    base, _ = load_model(tiny_model_dir)
    assert _greedy(base, tokenizer) != _greedy(reference, tokenizer)  # training changed answers

    import stat

    from test_io import _plain_mode

    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert set(modes.values()) == {_plain_mode(tmp_path)}, modes  # safetensors' 0600 opened
    card = (out / "README.md").read_text()
    assert f"spec: `{tiny_model_dir.resolve()}`" in card
    assert model_fingerprint(tiny_model_dir) in card
    assert "- lr: 0.02" in card and "- texts: 12" in card
    assert "Policy" in card and "not recorded" in card


def test_an_epoch_folder_exports_that_epoch_in_the_base_dtype(tiny_model_dir, records, tmp_path):
    """An epoch folder of a bfloat16 run: that epoch's adapter, merged and saved in bfloat16."""
    run = tmp_path / "run"
    train(_config(tiny_model_dir, dtype="bfloat16", epochs=2), records, run, progress=False)
    checkpoint = export_model(run / "epoch-1", tmp_path / "e1")
    assert checkpoint.folder == run / "epoch-1" and checkpoint.dtype == "bfloat16"
    assert _safetensors_dtypes(tmp_path / "e1" / "model.safetensors") == {"BF16"}
    assert export_model(run, tmp_path / "e2", epoch=2).folder == run / "epoch-2"
    with pytest.raises(ExportError, match=r"--epoch 7 was not saved \(saved: 1, 2\)$"):
        find_checkpoint(run, epoch=7)
    with pytest.raises(ExportError, match="--policy picks a checkpoint of an `elusive run`"):
        find_checkpoint(run, policy="none")


def test_a_full_finetune_exports_its_model(tiny_model_dir, records, tmp_path):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    last = train(_config(tiny_model_dir, full=True, epochs=1, lr=1e-3), records, run, False)
    checkpoint = export_model(run, tmp_path / "model")
    assert checkpoint.full and checkpoint.base == str(tiny_model_dir.resolve())
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    trained, tokenizer = load_model(last)
    for got, want in zip(_logits(exported, tokenizer), _logits(trained, tokenizer), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    card = (tmp_path / "model" / "README.md").read_text()
    assert "finetuned in full" in card and model_fingerprint(tiny_model_dir) in card


def test_export_onto_a_non_empty_folder_is_one_line_and_writes_nothing(
    tiny_model_dir, records, tmp_path
):
    run = tmp_path / "run"
    train(_config(tiny_model_dir, epochs=1), records, run, progress=False)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep me\n")
    (tmp_path / "FILE").write_text("keep me too\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    runner = CliRunner()
    for out, message in (
        (taken, f"error: {taken}: is not empty; export writes a new folder"),
        (tmp_path / "FILE", f"error: {tmp_path / 'FILE'}: is a file, not a folder"),
        (run / "model", f"error: {run / 'model'}: lies inside the input folder SOURCE"),
        (tiny_model_dir / "m", "lies inside the input folder the base model"),
    ):
        result = runner.invoke(app, ["export", str(run), "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and message in result.output, result.output
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert not list(tiny_model_dir.glob("m")) and sorted(os.listdir(taken)) == ["mine.txt"]
    result = runner.invoke(app, ["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "nothing: no such folder" in result.output
    assert not (tmp_path / "x").exists()

    empty = tmp_path / "empty"  # an empty folder is filled
    empty.mkdir()
    result = runner.invoke(app, ["export", str(run / "epoch-1"), "--out", str(empty)])
    assert result.exit_code == 0, result.output
    assert (empty / "model.safetensors").is_file() and f"{empty}" in result.output


def test_an_interrupted_export_leaves_nothing(tiny_model_dir, records, tmp_path, monkeypatch):
    """A crash while the weights are written leaves no OUT and no temp folder beside it."""
    from transformers import PreTrainedModel

    run = tmp_path / "run"
    train(_config(tiny_model_dir, epochs=1), records, run, progress=False)
    save = PreTrainedModel.save_pretrained

    def crash(self, folder, *args, **kwargs):
        save(self, folder, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        export_model(run, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_qlora_adapter_is_merged_into_the_unquantized_base(
    tiny_model_dir, records, tmp_path, monkeypatch
):
    """``quantize: 4bit`` trains over NF4 weights; the export loads the base unquantized, in the
    run's dtype, and merges the adapter there: no bitsandbytes is needed for it, and the model
    answers as the adapter over the unquantized base does."""
    import sys

    from transformers import AutoModelForCausalLM

    from elusive.evaluation.evaluate import load_for_eval

    run = tmp_path / "run"
    last = train(_config(tiny_model_dir, quantize="4bit"), records, run, progress=False)
    with torch.no_grad():
        over_4bit, tokenizer = load_for_eval(str(tiny_model_dir), last, quantize="4bit")
        logits_4bit = _logits(over_4bit, tokenizer)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as where it is not installed
    export_model(run, tmp_path / "model")
    monkeypatch.undo()
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert _safetensors_dtypes(tmp_path / "model" / "model.safetensors") == {"F32"}
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    reference, _ = _base_plus_adapter(tiny_model_dir, last)
    got, want = _logits(exported, tokenizer), _logits(reference, tokenizer)
    for a, b, c in zip(got, want, logits_4bit, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(a, c, atol=1e-3)  # not the 4-bit base's rounding
    assert _greedy(exported, tokenizer) == _greedy(reference, tokenizer)
    card = (tmp_path / "model" / "README.md").read_text()
    assert "trained as QLoRA on the base quantized to 4-bit NF4" in card
    assert "- quantize: 4bit" in card


# --------------------------------------------------------------------------- from a run folder


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """A finished `elusive run` of a tiny pair: policies none and random, epochs 1 and 2."""
    from elusive.experiment.config import load_config
    from elusive.experiment.pipeline import run_experiment

    root = tmp_path_factory.mktemp("pipeline")
    small = make_tiny_model(root / "small", arch="llama", seed=0)
    large = make_tiny_model(root / "large", arch="llama", hidden_size=96, layers=3, seed=1)
    config = {
        "out": str(root / "run"),
        "seeds": [0],
        "corpus": {"bios": {"n": 8, "seed": 0}},
        "validation": 0.25,
        "models": {"large": str(large), "small": str(small), "trained": ["small"]},
        "augment": {"policies": ["none", "random"], "copies": 1, "alpha": [0.7]},
        "train": {"lr": [2e-2], "epochs": [1, 2], "batch_size": 8, "mixed_precision": "no"},
        "evaluate": {"batch_size": 32, "max_new_tokens": 4, "choices": 3},
        "report": {"analysis_texts": 4},
    }
    (root / "c.yaml").write_text(yaml.safe_dump(config))
    run = run_experiment(load_config(root / "c.yaml"), progress=False, echo=lambda _: None)
    return run.root, small


def _set_report(root: Path, saved: str, edit) -> None:
    """Write report/report.json as the report `saved` edited by `edit`: what a report with other
    scores would have written."""
    path = root / "report" / "report.json"
    summary = json.loads(saved)
    edit(summary)
    path.write_text(json.dumps(summary))


def test_a_run_folder_exports_the_setting_selected_on_validation(pipeline_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, small = pipeline_run
    report = json.loads((root / "report" / "report.json").read_text())
    rows = {row["policy"]: row for row in report["rows"]}
    saved = json.dumps(report)

    def scores(none: float, random: float, epochs: int = 1):
        def edit(summary):
            for row in summary["rows"]:
                if row["policy"] == "untrained":  # trained nothing: never exported
                    continue
                row["validation_score"] = {"none": none, "random": random}[row["policy"]]
                row["epochs"] = epochs

        return edit

    try:
        _set_report(root, saved, scores(0.2, 0.4, epochs=1))
        picked = find_checkpoint(root)
        assert picked.folder == root / "train" / "small" / "random_a0.7_s0_lr0.02" / "epoch-1"
        assert picked.augment["policy"] == "random" and picked.augment["alpha"] == 0.7
        assert picked.measured["selected"] and picked.measured["epoch"] == 1
        _set_report(root, saved, scores(0.5, 0.4, epochs=2))
        assert find_checkpoint(root).folder.parts[-2:] == ("none_s0_lr0.02", "epoch-2")
        assert find_checkpoint(root, policy="random").folder.parts[-2:] == (
            "random_a0.7_s0_lr0.02",
            "epoch-2",
        )
        other = find_checkpoint(root, policy="random", epoch=1)
        assert other.folder.name == "epoch-1" and not other.measured["selected"]

        _set_report(root, saved, scores(0.3, 0.3))
        with pytest.raises(ExportError, match="small none, small random tie on the validation"):
            find_checkpoint(root)
        with pytest.raises(ExportError, match=r"--policy contrast did not run \(policies: none"):
            find_checkpoint(root, policy="contrast")
        with pytest.raises(ExportError, match=r"--seed 3 did not run \(seeds 0\)"):
            find_checkpoint(root, policy="none", seed=3)
        with pytest.raises(ExportError, match=r"--role large was not trained"):
            find_checkpoint(root, role="large")

        def two_seeds(summary):
            for row in summary["rows"]:
                row["seeds"] = [0, 1]

        _set_report(root, saved, two_seeds)
        with pytest.raises(ExportError, match="none ran with seeds 0, 1: give --seed to pick one"):
            find_checkpoint(root, policy="none")

        # the CLI, end to end: the picked setting's weights, and a one-line error on a tie
        _set_report(root, saved, scores(0.2, 0.4, epochs=2))
        out = tmp_path / "model"
        result = CliRunner().invoke(app, ["export", str(root), "--out", str(out)])
        assert result.exit_code == 0, result.output
        exported = AutoModelForCausalLM.from_pretrained(out).eval()
        tokenizer = AutoTokenizer.from_pretrained(out)
        adapter = root / "train" / "small" / "random_a0.7_s0_lr0.02" / "epoch-2"
        reference, _ = _base_plus_adapter(small, adapter)
        assert _greedy(exported, tokenizer) == _greedy(reference, tokenizer)
        _set_report(root, saved, scores(0.3, 0.3))
        result = CliRunner().invoke(app, ["export", str(root), "--out", str(tmp_path / "tie")])
        assert result.exit_code == 2 and result.output.count("\n") == 1
        assert "give --policy to pick one" in result.output and not (tmp_path / "tie").exists()
    finally:
        (root / "report" / "report.json").write_text(saved)
    assert rows  # the run's own report had a row per policy


def test_the_model_card_names_base_corpus_policy_and_measures(pipeline_run, tmp_path):
    root, small = pipeline_run
    report = json.loads((root / "report" / "report.json").read_text())
    saved = json.dumps(report)
    row = next(r for r in report["rows"] if r["policy"] == "random")
    try:
        export_model(root, tmp_path / "a", policy="random")
        card = (tmp_path / "a" / "README.md").read_text()
        assert f"spec: `{small}`" in card and model_fingerprint(small) in card
        assert "- policy: random" in card and "- alpha: 0.7" in card and "- copies: 1" in card
        corpus = root / "corpus" / "corpus.jsonl"
        assert "- texts: 8" in card and "trained on: augment/small/random_a0.7_s0.jsonl" in card
        from elusive.io import file_sha256

        assert f"- sha256 of corpus/corpus.jsonl: {file_sha256(corpus)}" in card
        assert "- lr: 0.02" in card and "- quantize: no" in card
        # the checkpoint's test scores are the report's (one seed), beside the untrained row's
        overall = row["test"]["overall"]
        (base,) = [r for r in report["rows"] if r["policy"] == "untrained"]
        before = base["test"]["overall"]["em"]
        assert f"| overall (n={overall['n']}) | this model | untrained | difference |" in card
        diff = overall["em"] - before
        assert f"| EM | {overall['em']:.3f} | {before:.3f} | {diff:+.3f} |" in card
        date, was = row["test"]["date"]["em"], base["test"]["date"]["em"]
        assert f"| EM | {date:.3f} ({date - was:+.3f}) |" in card  # date is the first field
        assert "no `untrained` row" not in card

        def without_untrained(summary):
            summary["rows"] = [r for r in summary["rows"] if r["policy"] != "untrained"]

        _set_report(root, saved, without_untrained)
        export_model(root, tmp_path / "b", policy="random")
        card = (tmp_path / "b" / "README.md").read_text()
        assert "no `untrained` row" in card
        assert f"| EM | {overall['em']:.3f} | - | - |" in card
    finally:
        (root / "report" / "report.json").write_text(saved)


def test_a_run_folder_without_a_report_is_refused(pipeline_run, tmp_path):
    root, _ = pipeline_run
    report = root / "report" / "report.json"
    saved = report.read_bytes()
    report.unlink()
    try:
        with pytest.raises(ExportError, match="no report/report.json yet"):
            export_model(root, tmp_path / "m")
        assert not (tmp_path / "m").exists()
    finally:
        report.write_bytes(saved)


def test_out_checks_come_before_the_source_is_read(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    with pytest.raises(OutputError, match="is not empty"):
        export_model(tmp_path / "no-such-run", tmp_path / "out")
