"""Continual pretraining: causal-LM finetuning on a corpus, with LoRA (default) or in full.

The paper's setting ("Results"): LoRA rank 16 on every linear layer but the embedding and the
output head, 10-30 epochs, learning rate in [5e-5, 1e-3]. One text is one sequence:

    [BOS] text tokens [EOS] [PAD ...]

- The tokenizer's BOS (if it adds one) is input only: nothing predicts the first token.
- EOS is appended to every text and is a target, so the model learns where a text ends.
- Batches are padded on the right to their longest text; padding is masked out of attention
  and loss (by the attention mask, not by token id: Qwen pads with its EOS token).
- The loss is the mean next-token cross-entropy over the target tokens of a micro-batch. In
  float32 in one process it is computed by `elusive.training.trainstep` (logits only at the targets,
  in chunks; the LoRA layers fused), the same mathematics in fewer passes over memory.

With ``packing`` a row is instead a block of exactly `max_length` tokens cut from the epoch's
texts joined in shuffled order (`elusive.training.batches.PackedBlocks`), every token a target; with
``group_by_length`` the rows of a batch are texts of similar length
(`elusive.training.batches.LengthGroupedBatches`).

Runs go through `accelerate.Accelerator`, so the same code runs on CPU, one GPU or several
(`accelerate launch -m elusive.cli train ...`). Shuffling is a permutation seeded by
(seed, epoch): the same seed gives the same batches, loss log and weights.

Run folder layout::

    RUN_DIR/run.json       the config and corpus hash, written once the model has loaded; a rerun
                           must match it
    RUN_DIR/log.json       {"steps": [{"step", "epoch", "loss", "lr"}], "epochs": [{"epoch",
                           "loss": the mean of its steps' losses, "seconds"}], "texts": how many}
    RUN_DIR/tensorboard/   with ``report_to: tensorboard``: the same losses and learning rates
                           as TensorBoard event files (accelerate's tracker)
    RUN_DIR/epoch-N/       the adapter (or full model + tokenizer) and log.json up to epoch N,
                           written to a temp folder and renamed; the last one also holds
                           trainer_state.pt (optimizer, scheduler, RNG) to resume from.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from elusive.corpus.records import Record, read_corpus
from elusive.io import (
    atomic_write_text,
    check_out_dir,
    name_failed_write,
    plain_modes,
    read_json,
    remove_temp_files,
    temp_beside,
)
from elusive.models import DTYPES, resolve_mixed_precision
from elusive.options import LOGGING_ONLY, MIXED_PRECISIONS, TrainConfig, TrainError
from elusive.training.batches import LengthGroupedBatches, PackedBlocks, epoch_generator

STATE_FILE = "trainer_state.pt"
LOG_FILE = "log.json"


# --------------------------------------------------------------------------- data


def tokenize_texts(
    texts: Sequence[str], tokenizer: Any, max_length: int | None, add_eos: bool = True
) -> list[list[int]]:
    """Token ids of each text as one training sequence: tokenizer specials (BOS) + text + EOS,
    cut to `max_length` (None: not cut)."""
    eos = [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else []
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    return [(seq + eos)[:max_length] for seq in ids]


def check_lengths(records: Sequence[Record], seqs: Sequence[Sequence[int]], max_length: int):
    """Refuse a text whose sequence is longer than `max_length`: cut, its end would never be
    trained on, and nothing would say so."""
    for record, seq in zip(records, seqs, strict=True):
        if len(seq) > max_length:
            raise TrainError(
                f"text {record.id!r} is {len(seq)} tokens long (BOS and EOS included), more "
                f"than max_length {max_length}: cut the corpus into passages (corpus.chunk in "
                "a run config) or raise --max-length (train.max_length)"
            )


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence; labels are -100 on padding."""
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # [batch, seq]
    mask = torch.zeros((len(seqs), width), dtype=torch.long)  # [batch, seq]
    for row, seq in enumerate(seqs):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    labels = input_ids.masked_fill(mask == 0, -100)  # [batch, seq]
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


class EpochShuffle(Sampler[int]):
    """A permutation of range(n) seeded by (seed, epoch); call `set_epoch` before iterating."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        gen = epoch_generator(self.seed, self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


def make_loader(seqs: list[list[int]], batch_size: int, pad_id: int, seed: int) -> DataLoader:
    return DataLoader(
        seqs,
        batch_size=batch_size,
        sampler=EpochShuffle(len(seqs), seed),
        collate_fn=lambda batch: pad_batch(batch, pad_id),
    )


def make_batches(seqs: list[list[int]], config: TrainConfig, pad_id: int):
    """(loader of the micro-batches, the object that orders an epoch): one shuffled text a row
    (`make_loader`), or with ``config.packing`` blocks of the packed texts, or with
    ``config.group_by_length`` texts grouped by length. Call the object's ``set_epoch`` before
    each epoch: under several processes accelerate's loader does not reach the last two."""
    collate = functools.partial(pad_batch, pad_id=pad_id)
    if config.packing:
        blocks = PackedBlocks(seqs, config.max_length, config.seed)
        # blocks follow the epoch's shuffled text order: read in order, not shuffled again
        return DataLoader(blocks, batch_size=config.batch_size, collate_fn=collate), blocks
    if config.group_by_length:
        batches = LengthGroupedBatches([len(s) for s in seqs], config.batch_size, config.seed)
        return DataLoader(seqs, batch_sampler=batches, collate_fn=collate), batches
    loader = make_loader(seqs, config.batch_size, pad_id, config.seed)
    return loader, loader.sampler


# --------------------------------------------------------------------------- model


def build_model(config: TrainConfig, resume_dir: Path | None = None):
    """(model ready to train, tokenizer): LoRA-wrapped base model, or the full model.

    With `resume_dir` the weights come from that epoch folder instead of a fresh init.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    from elusive.models import load_model, quiet_peft

    dtype = DTYPES[config.dtype]
    if config.full:
        # Loaded on the CPU: `Accelerator.prepare` moves it to this process's device.
        model, tokenizer = load_model(str(resume_dir or config.model), dtype=dtype, device="cpu")
    else:
        model, tokenizer = _load_base(config, dtype)
        # peft records the folder the base came from in adapter_config.json; made absolute,
        # `evaluate` can check an adapter against its base from any working folder
        model.name_or_path = str(Path(model.name_or_path).resolve())
        torch.manual_seed(config.seed)  # LoRA A matrices are drawn from the torch RNG
        if resume_dir is not None:
            with quiet_peft():
                model = PeftModel.from_pretrained(model, resume_dir, is_trainable=True)
        else:
            lora = LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules="all-linear",  # every nn.Linear but the output head
                task_type="CAUSAL_LM",
            )
            with quiet_peft():
                model = get_peft_model(model, lora)
        # peft holds the resolved target modules as a set and saves them in hash order, which
        # varies between processes: sorted, adapter_config.json has the same bytes every run
        lora_config = model.peft_config["default"]
        lora_config.target_modules = sorted(lora_config.target_modules)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.train()
    return model, tokenizer


def _load_base(config: TrainConfig, dtype: torch.dtype):
    """(base model of a LoRA run, tokenizer): on the CPU, for `Accelerator.prepare` to move to
    this process's device, or with ``quantize: 4bit`` quantized as it loads onto this process's
    device, a GPU or the CPU (QLoRA, `elusive.models.load_4bit`; accelerate leaves a quantized
    model where it is)."""
    from elusive.models import load_4bit, load_model, quiet_peft

    if config.quantize == "no":
        return load_model(config.model, dtype=dtype, device="cpu")
    from peft import prepare_model_for_kbit_training

    model, tokenizer = load_4bit(config.model, dtype)
    # the weights left unquantized (norms, embeddings) in float32, as QLoRA trains
    with quiet_peft():
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model, tokenizer


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    """Linear warmup over `config.warmup` of the steps, then cosine / linear decay or constant."""
    warmup = int(config.warmup * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        if config.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if config.schedule == "linear":
            return 1.0 - progress
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------- run folder


def _corpus_hash(records: Sequence[Record]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(r.sha256 for r in records).encode()).hexdigest()


def _resolve_precision(run_dir: Path, config: TrainConfig) -> TrainConfig:
    """`config` with its mixed precision resolved, the value run.json records and the run
    uses: "auto" keeps an existing run's recorded value, so a run resumes as it began (one made
    when the default was "no" stays fp32), and is resolved for this device in a new run."""
    path = run_dir / "run.json"
    have = read_json(path) if path.exists() else {}
    recorded = have.get("config", {}).get("mixed_precision")
    if config.mixed_precision == "auto" and recorded in MIXED_PRECISIONS[1:]:
        return dataclasses.replace(config, mixed_precision=recorded)
    return dataclasses.replace(
        config, mixed_precision=resolve_mixed_precision(config.mixed_precision)
    )


def _run_record(config: TrainConfig, corpus_hash: str) -> dict[str, Any]:
    """What run.json holds: the config, its model spec as `spec_key` (so a relative and an
    absolute path to one folder are one model), and the corpus hash."""
    from elusive.models import spec_key

    settings = dataclasses.asdict(config)
    settings["model"] = spec_key(config.model)
    return {"config": settings, "corpus_sha256": corpus_hash}


def _check_run_dir(run_dir: Path, want: dict[str, Any]) -> None:
    """Refuse a run folder whose run.json records another config or corpus than `want`."""
    from elusive.models import spec_key

    path = run_dir / "run.json"
    if not path.exists():
        return
    have = read_json(path)
    old = have.get("config", {})
    if "model" in old:  # run.json files of older versions hold the spec as given
        old["model"] = spec_key(old["model"])
    # an option newer than the run folder is recorded as its default, which keeps the old behaviour
    old = {**{f.name: f.default for f in dataclasses.fields(TrainConfig)}, **old}
    diff = [
        f"{key} ({old.get(key)!r} there, {value!r} now)"
        for key, value in want["config"].items()
        if old.get(key) != value and key not in LOGGING_ONLY
    ]
    if have.get("corpus_sha256") != want["corpus_sha256"]:
        diff.append("corpus")
    if diff:
        raise TrainError(
            f"{run_dir} holds a run with different {', '.join(diff)}; use another --out"
        )


def last_epoch(run_dir: str | Path) -> int:
    """The last epoch whose folder holds a resumable trainer state (0 if none)."""
    done = [
        int(p.name.split("-")[1])
        for p in Path(run_dir).glob("epoch-*")
        if p.name.split("-")[1].isdigit() and (p / STATE_FILE).is_file()
    ]
    return max(done, default=0)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_epoch(accelerator, model, tokenizer, config, run_dir, epoch, state, log) -> None:
    """Write RUN_DIR/epoch-N atomically (temp folder, then rename), with the log up to epoch N
    inside it, so a crash right after the rename loses no log; then RUN_DIR/log.json. Every
    process calls it: under FSDP the weights are gathered from all of them."""
    weights = accelerator.get_state_dict(model)  # whole on the main process
    if accelerator.is_main_process:
        # a fresh marked name: what a killed run left there is removed on rerun (train)
        final = run_dir / f"epoch-{epoch}"
        tmp = temp_beside(final)
        try:
            accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=weights)
            if config.full:
                tokenizer.save_pretrained(tmp)
            _save_state(state, tmp / STATE_FILE)
            atomic_write_text(tmp / LOG_FILE, json.dumps(log, indent=1) + "\n")
            plain_modes(tmp)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)  # no half-written checkpoint is left
            name_failed_write(exc, final)
            raise
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        (run_dir / f"epoch-{epoch - 1}" / STATE_FILE).unlink(missing_ok=True)
        atomic_write_text(run_dir / LOG_FILE, json.dumps(log, indent=1) + "\n")
    accelerator.wait_for_everyone()


def _save_state(state: dict[str, Any], path: Path) -> None:
    """`torch.save` to `path` through a Python file, so that a failed write (disk full) raises
    the OSError it is, not torch's RuntimeError about the archive's positions."""

    class Sink:
        def __init__(self, file) -> None:
            self.file, self.error = file, None

        def write(self, data) -> int:
            try:
                return self.file.write(data)
            except OSError as exc:
                self.error = exc  # torch reports it as a short write
                raise

        def flush(self) -> None:
            self.file.flush()

    with path.open("wb") as file:
        sink = Sink(file)
        try:
            torch.save(state, sink)
        except RuntimeError:
            if sink.error is None:
                raise
            raise sink.error from None


def load_trainer_state(path: Path) -> dict[str, Any]:
    """The trainer state `_save_epoch` wrote. It is read with `weights_only=True`: tensors,
    numbers, strings and plain containers only, so a run folder handed over by someone else
    cannot run code when it is resumed (a full unpickler calls whatever a crafted file names).
    A file that is no such state, crafted or damaged, is a TrainError naming it."""
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise TrainError(
            f"{path}: holds objects other than tensors, numbers and plain containers, so it is "
            "no trainer state elusive wrote; refusing to resume from it (delete that epoch "
            "folder to train it again)"
        ) from None
    except (EOFError, RuntimeError, OSError) as exc:
        raise TrainError(f"{path}: unreadable trainer state ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not {"optimizer", "scheduler", "rng"} <= state.keys():
        raise TrainError(f"{path}: not a trainer state elusive wrote (its keys are missing)")
    return state


def _optimizer_state(accelerator, model, optimizer) -> dict[str, Any]:
    """The optimizer's state for trainer_state.pt, whole on the main process. Under FSDP each
    process holds a shard of it: every process must call this, to gather them."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.FSDP:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer.optimizer, options=options)


def _load_optimizer_state(accelerator, model, optimizer, state: dict[str, Any]) -> None:
    """Load what `_optimizer_state` saved; under FSDP each process takes its shard of it."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.FSDP:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(model, optimizer.optimizer, state, options=options)


# --------------------------------------------------------------------------- training


def _close_trackers(accelerator) -> None:
    """Flush and close the trackers' files. Not `Accelerator.end_training`: that also destroys
    the process group, which later training runs and stages of `accelerate launch` go on using."""
    for tracker in accelerator.trackers:
        tracker.finish()


def _train_step(
    model, batch: dict[str, torch.Tensor], fused: bool = False, precision: str = "no"
) -> torch.Tensor:
    """Mean next-token loss of one micro-batch (the model shifts labels itself); `fused`: the
    same loss from the decoder's hidden states through `elusive.training.trainstep.head_loss`, which
    makes logits only where there is a target (see `_fused_step`), under bf16 autocast where
    `precision` is bf16 (the model's own forward gets it from accelerate)."""
    if not fused:
        return model(**batch, use_cache=False).loss
    from elusive.training.trainstep import head_loss

    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = causal.get_decoder()
    device = batch["input_ids"].device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
        hidden = decoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state  # [batch, seq, hidden]
        return head_loss(hidden, causal.get_output_embeddings(), batch["labels"])


PLAIN_HEADS = ("llama", "mistral", "qwen2", "qwen3")
"""Model types whose logits are their output head's ``hidden @ W^T`` and whose loss is the
plain mean cross-entropy (no soft-capping, scaling or bias), as `_train_step`'s fused loss
computes it; other models train through their own forward."""


def _fused_step(accelerator, model, config: TrainConfig) -> bool:
    """Whether the training step takes `elusive.training.trainstep`'s fused path (its adapters fused
    by `fuse_lora`, its loss by `head_loss`): one process (the decoder is called past the
    wrapper that FSDP or DDP put around the model), float32 weights, no autocast or LoRA under
    bf16 autocast (a frozen head), a plain head."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.NO:  # the model is wrapped: no head here
        return False
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = causal.get_output_embeddings()
    return (
        (config.mixed_precision == "no" or (config.mixed_precision == "bf16" and not config.full))
        and config.dtype == "float32"  # HF's loss upcasts lower-precision logits to float32
        and causal.config.model_type in PLAIN_HEADS
        and type(head) is torch.nn.Linear
        and head.bias is None
        and head.weight.dtype == torch.float32
    )


def train(
    config: TrainConfig,
    corpus: Sequence[Record] | str | Path,
    run_dir: str | Path,
    progress: bool = True,
    text_field: str = "text",
) -> Path:
    """Train on `corpus` (records or a corpus path) into `run_dir`; returns the last epoch folder.

    Resumes after the last saved epoch; a finished run returns at once. run.json is written
    only once the model has loaded, so a bad model spec leaves nothing that refuses the fixed
    command. A text longer than `max_length` is a TrainError naming it (`check_lengths`). A
    loss that is NaN or infinite stops training with a TrainError naming the step, before the
    epoch is saved. `text_field` names the text field of a JSONL or dataset corpus path.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from tqdm.auto import tqdm

    config.validate()
    run_dir = check_out_dir(run_dir, ("run.json", "log.json"))
    records = read_corpus(corpus, text_field) if isinstance(corpus, (str, Path)) else list(corpus)
    if not records:
        raise TrainError("the corpus is empty")
    config = _resolve_precision(run_dir, config)
    record = _run_record(config, _corpus_hash(records))
    _check_run_dir(run_dir, record)
    start = last_epoch(run_dir)
    if start >= config.epochs:
        return run_dir / f"epoch-{config.epochs}"

    # accelerate keeps one process-wide state that refuses a second mixed precision; reset it
    # (not the process group) so that one process can train runs of different precisions.
    AcceleratorState._reset_state()
    trackers = {}
    if config.report_to != "none":
        trackers = {"log_with": config.report_to, "project_dir": run_dir}
    accelerator = Accelerator(
        gradient_accumulation_steps=config.grad_accum,
        mixed_precision=config.mixed_precision,
        **trackers,
    )
    resume_dir = run_dir / f"epoch-{start}" if start else None
    # Python's RNG, saved with the torch one at each epoch, starts from the seed too, so the
    # saved state (and trainer_state.pt's bytes) do not depend on what ran before in the process
    random.seed(config.seed)
    model, tokenizer = build_model(config, resume_dir)
    seqs = tokenize_texts([r.text for r in records], tokenizer, None)
    if config.packing and tokenizer.eos_token_id is None:
        raise TrainError(f"packing separates texts by EOS, and {config.model} has no EOS token")
    if not config.packing:  # packed, a long text runs on into the next block: nothing is cut
        check_lengths(records, seqs, config.max_length)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_temp_files(run_dir)  # left by a killed run
        if not (run_dir / "run.json").exists():
            atomic_write_text(run_dir / "run.json", json.dumps(record, indent=2) + "\n")
    loader, epoch_order = make_batches(seqs, config, tokenizer.pad_token_id)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    fused = _fused_step(accelerator, model, config)
    if fused and not config.full:
        from elusive.training.trainstep import float32_attention, fuse_lora

        fuse_lora(model, torch.bfloat16 if config.mixed_precision == "bf16" else None)
        if config.mixed_precision == "bf16" and accelerator.device.type == "cpu":
            float32_attention(model)
    steps_per_epoch = math.ceil(len(loader) / config.grad_accum)
    scheduler = make_scheduler(optimizer, config, config.epochs * steps_per_epoch)

    log: dict[str, Any] = {"steps": [], "epochs": []}
    if start:
        state = load_trainer_state(resume_dir / STATE_FILE)
        _load_optimizer_state(accelerator, model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        # the epoch folder's own log (runs of older versions have only RUN_DIR/log.json)
        saved = resume_dir / LOG_FILE if (resume_dir / LOG_FILE).exists() else run_dir / LOG_FILE
        log = read_json(saved)
        log["steps"] = [s for s in log["steps"] if s["epoch"] <= start]
        log["epochs"] = [e for e in log["epochs"] if e["epoch"] <= start]
    log["texts"] = len(records)

    step = start * steps_per_epoch
    if trackers:
        accelerator.init_trackers("tensorboard")  # RUN_DIR/tensorboard
    bar = tqdm(
        total=(config.epochs - start) * steps_per_epoch,
        desc="train",
        disable=not (progress and accelerator.is_local_main_process),
    )
    for epoch in range(start + 1, config.epochs + 1):
        epoch_order.set_epoch(epoch)
        loader.set_epoch(epoch)
        began, window, epoch_losses = time.perf_counter(), [], []
        for batch in loader:
            with accelerator.accumulate(model):
                loss = _train_step(model, batch, fused, config.mixed_precision)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            window.append(accelerator.reduce(loss.detach(), reduction="mean").item())
            if accelerator.sync_gradients:
                scheduler.step()  # once per optimizer step
                step += 1
                mean = sum(window) / len(window)
                if not math.isfinite(mean):  # every later step, and the saved weights, are NaN
                    bar.close()
                    _close_trackers(accelerator)
                    raise TrainError(
                        f"{run_dir}: loss is {mean} at step {step} (epoch {epoch}): lower the "
                        f"learning rate (--lr, now {config.lr:g}); epochs saved before are kept"
                    )
                lr = scheduler.get_last_lr()[0]
                log["steps"].append({"step": step, "epoch": epoch, "loss": mean, "lr": lr})
                if trackers:
                    accelerator.log({"train/loss": mean, "train/lr": lr}, step=step)
                epoch_losses.append(mean)
                window = []
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{mean:.4f}")
        log["epochs"].append(
            {
                "epoch": epoch,
                "loss": sum(epoch_losses) / len(epoch_losses),
                "seconds": round(time.perf_counter() - began, 3),
            }
        )
        if trackers:
            accelerator.log({"train/epoch_loss": log["epochs"][-1]["loss"]}, step=step)
        state = {
            "epoch": epoch,
            "step": step,
            "optimizer": _optimizer_state(accelerator, model, optimizer),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(),
        }
        _save_epoch(accelerator, model, tokenizer, config, run_dir, epoch, state, log)
    bar.close()
    _close_trackers(accelerator)
    return run_dir / f"epoch-{config.epochs}"
