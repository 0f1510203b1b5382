"""The paper's Table 1 and Figure 1 (`elusive table1`): plain finetuning on biographies."""

from __future__ import annotations

from pathlib import Path

from .bios import BiosConfig, write_bios
from .config import UNTRAINED
from .corpus import read_corpus, read_qa
from .evaluate import EvalConfig, EvalResult, evaluate_model
from .figures import plot_accuracy_vs_distance
from .models import DTYPES, load_tokenizer
from .summary import field_token_distances
from .train import TrainConfig, train


def run_table1(
    config: TrainConfig,
    out_dir: str | Path,
    n: int = 1000,
    bios_seed: int = 0,
    eval_config: EvalConfig | None = None,
    progress: bool = True,
) -> EvalResult:
    """The paper's Table 1 and Figure 1: plain finetuning on the default biography corpus.

    Writes OUT/data (people.jsonl, qa.jsonl), OUT/run (the training run), OUT/eval (metrics,
    predictions), OUT/eval/untrained (the same for the base model before training) and
    OUT/figure1.png; returns the evaluation result, the untrained one as its ``baseline``.
    Resumes training.
    """
    from .parallel import process_state

    state = process_state()  # under `accelerate launch`, one process writes the shared files
    out = Path(out_dir)
    people, qa = out / "data" / "people.jsonl", out / "data" / "qa.jsonl"
    if state.is_main_process:
        write_bios(BiosConfig(n=n, seed=bios_seed), out / "data")
    state.wait_for_everyone()
    records = read_corpus(people)
    last = train(config, records, out / "run", progress=progress)
    spec, adapter = (str(last), None) if config.full else (config.model, last)
    result = evaluate_model(
        spec, read_qa(qa), out / "eval", adapter, eval_config, DTYPES[config.dtype], None,
        progress, baseline=config.model,
    )  # fmt: skip
    if state.is_main_process:
        distances = field_token_distances(records, load_tokenizer(spec))
        name = Path(config.model).name
        label = f"{name} ({'full' if config.full else 'LoRA'})"
        results = {f"{name} ({UNTRAINED})": result.baseline.scores, label: result.scores}
        plot_accuracy_vs_distance(distances, results, out / "figure1.png")
    return result
