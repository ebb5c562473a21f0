"""Adapter training: PEFT adapters on a frozen ASR model, single process or distributed (Accelerate).

One loop serves every setting: batches by count or by total audio duration (length bucketing),
a DataLoader with workers and pinned memory, gradient accumulation weighted by label tokens (equal
to one large batch), bf16/fp16 autocast on CUDA, TF32, gradient checkpointing, checkpoints with
exact resume, validation WER with early stopping and best-adapter selection, optional caching of
the frozen Whisper encoder's outputs, and data-parallel training across processes through
Hugging Face Accelerate (DDP), launched with `torchrun` (see `launch_distributed`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from vernacular.audio import read_audio
from vernacular.augment import AugmentSettings, augmented_example
from vernacular.config import build_settings
from vernacular.features import load_split, pad_features
from vernacular.fileio import write_directory_atomically
from vernacular.models import device_name, load_model, pick_device

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
ADAPTER_METHODS = ("lora", "dora", "ia3")
ADAPTER_SCOPES = ("all", "encoder", "decoder")
BATCHING = ("count", "duration")


@dataclass
class LoraSettings:
    """Adapter settings. `method`: lora, dora (weight-decomposed LoRA) or ia3.

    `param_budget` (a fraction such as 0.005, or a string such as "0.5%") picks the largest LoRA/DoRA
    rank whose trainable parameters stay within that share of the model; `r` is then ignored.
    `scope` limits the targets to the encoder or the decoder of an encoder-decoder model.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    method: str = "lora"
    param_budget: float | str | None = None
    feedforward_modules: list[str] = field(default_factory=lambda: ["fc2"])  # IA3 only
    scope: str = "all"

    def budget_fraction(self) -> float | None:
        if self.param_budget in (None, ""):
            return None
        value = self.param_budget
        if isinstance(value, str):
            text = value.strip()
            value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
        if not 0 < float(value) < 1:
            raise ValueError(f"adapter.param_budget must be a fraction in (0, 1) or a percentage, got {self.param_budget!r}")
        return float(value)


@dataclass
class TrainSettings:
    epochs: int = 2
    batch_size: int = 8           # utterances per micro-batch (`batching: count`), or the cap (`duration`)
    batching: str = "count"       # count | duration: fill each micro-batch up to max_batch_seconds of padded audio
    max_batch_seconds: float = 240.0
    bucket_batches: int = 20      # duration batching sorts by length within windows of this many batches
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_steps: int | None = None
    gradient_accumulation_steps: int = 1  # an optimiser step sees batch_size x this many utterances (per process)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    num_workers: int = 0          # DataLoader worker processes building batches (augmentation reads audio)
    pin_memory: bool | str = "auto"   # auto: on CUDA
    cache_encoder_outputs: bool = False  # Whisper with decoder-only adapters: run the frozen encoder once
    checkpoint_every_steps: int = 20
    keep_checkpoints: int = 2
    validation_wer: bool = True   # decode the validation split and score WER at each evaluation
    eval_every_steps: int | None = None  # None: at each epoch end
    max_validation_utterances: int | None = 200
    early_stopping_patience: int | None = None  # stop after this many evaluations without a better WER
    keep_best: bool = True        # the adapter returned (and saved) is the one with the best validation WER
    processes: int = 1            # >1: data-parallel over that many processes (GPUs) via torchrun + Accelerate
    launcher_args: list[str] = field(default_factory=list)  # extra torchrun args, e.g. multi-node rendezvous
    seed: int = 13
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 (or fp16 + loss scaling) on CUDA, fp32 on CPU
    num_threads: int | None = None
    progress: bool = True

    @classmethod
    def from_dict(cls, values: dict) -> "TrainSettings":
        settings = build_settings(cls, values, "training")
        if settings.epochs < 1 or settings.batch_size < 1 or settings.learning_rate <= 0 \
                or settings.gradient_accumulation_steps < 1 or settings.processes < 1:
            raise ValueError("training.epochs, batch_size, gradient_accumulation_steps and processes must be >= 1 "
                             "and learning_rate > 0")
        if settings.batching not in BATCHING:
            raise ValueError(f"training.batching must be one of {BATCHING}, got {settings.batching!r}")
        if settings.batching == "duration" and settings.max_batch_seconds <= 0:
            raise ValueError("training.max_batch_seconds must be > 0 with batching: duration")
        if settings.early_stopping_patience is not None and settings.early_stopping_patience < 1:
            raise ValueError("training.early_stopping_patience must be >= 1 or null")
        if settings.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"training.precision must be auto, bf16, fp16 or fp32, got {settings.precision!r}")
        return settings


def lora_from_dict(values: dict) -> LoraSettings:
    settings = build_settings(LoraSettings, values, "adapter")
    if settings.r < 1:
        raise ValueError(f"adapter.r must be >= 1, got {settings.r}")
    if settings.method not in ADAPTER_METHODS:
        raise ValueError(f"adapter.method must be one of {ADAPTER_METHODS}, got {settings.method!r}")
    if settings.scope not in ADAPTER_SCOPES:
        raise ValueError(f"adapter.scope must be one of {ADAPTER_SCOPES}, got {settings.scope!r}")
    settings.budget_fraction()  # validates
    return settings


def _in_scope(name: str, scope: str) -> bool:
    parts = name.split(".")
    return scope == "all" or scope in parts


def _targeted_linears(model, target_modules: list[str], scope: str = "all") -> list[torch.nn.Linear]:
    return [m for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in set(target_modules) and _in_scope(name, scope)]


def _target_spec(model, adapter: LoraSettings):
    """PEFT `target_modules`: the names, or the exact module paths when a scope restricts them."""
    if adapter.scope == "all":
        return list(adapter.target_modules)
    names = [name for name, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in set(adapter.target_modules)
             and _in_scope(name, adapter.scope)]
    if not names:
        raise ValueError(f"adapter.scope {adapter.scope!r} with target_modules {adapter.target_modules} matches no "
                         "linear layer of the model (scope encoder/decoder needs an encoder-decoder model)")
    return names


def rank_for_budget(model, target_modules: list[str], budget: float, scope: str = "all") -> int:
    """Largest LoRA rank whose trainable parameters (r x (in + out) per target) fit the budget."""
    per_rank = sum(m.in_features + m.out_features for m in _targeted_linears(model, target_modules, scope))
    if per_rank == 0:
        raise ValueError(f"adapter.target_modules {target_modules} match no linear layer of the model")
    total = sum(p.numel() for p in model.parameters())
    rank = int(budget * total // per_rank)
    if rank < 1:
        raise ValueError(f"a budget of {budget:.4%} is below one rank ({per_rank / total:.4%} of the model) "
                         f"for target modules {target_modules}")
    return rank


def build_peft_config(model, adapter: LoraSettings):
    """The PEFT config for `adapter` on `model` (rank resolved from the budget when one is given)."""
    from peft import IA3Config, LoraConfig

    targets = _target_spec(model, adapter)
    if adapter.method == "ia3":
        feedforward = [t for t in targets if t.split(".")[-1] in adapter.feedforward_modules
                       and t.split(".")[-1] in adapter.target_modules]
        return IA3Config(target_modules=targets, feedforward_modules=feedforward)
    budget = adapter.budget_fraction()
    rank = rank_for_budget(model, adapter.target_modules, budget, adapter.scope) if budget else adapter.r
    alpha = adapter.alpha * rank / adapter.r if budget else adapter.alpha  # keep alpha / r constant
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=adapter.dropout, target_modules=targets, bias="none",
                      use_dora=adapter.method == "dora")


def collate(batch: list[dict], pad_token_id: int, n_frames: int = 3000) -> dict:
    """Whisper batch: features padded to the 30-s window, teacher-forcing inputs and labels.

    Examples carrying `encoder_output` (cached frozen-encoder states) give `encoder_hidden_states`
    instead of `input_features`. Other families collate with `ModelFamily.collate`.
    """
    from vernacular.families import whisper_collate, whisper_teacher_forcing

    if "encoder_output" not in batch[0]:
        return whisper_collate(batch, pad_token_id, n_frames)
    return {"encoder_hidden_states": torch.stack([b["encoder_output"] for b in batch]).float(),
            **whisper_teacher_forcing(batch, pad_token_id)}


def model_inputs(batch: dict) -> dict:
    """Model keyword arguments from a collated batch (cached encoder states become `encoder_outputs`)."""
    if "encoder_hidden_states" in batch:
        rest = {k: v for k, v in batch.items() if k != "encoder_hidden_states"}
        return {**rest, "encoder_outputs": (batch["encoder_hidden_states"],)}
    return batch


def label_tokens(batch: dict) -> int:
    return int((batch["labels"] != IGNORE_INDEX).sum())


def _examples(split: dict) -> list[dict]:
    n = len(split["labels"])
    durations = split.get("durations") or [None] * n
    texts = split.get("texts") or [None] * n
    return [{"features": f, "pad_value": p, "labels": l, "audio_path": a, "duration": d, "text": t}
            for f, p, l, a, d, t in zip(split["features"], split["pad_values"], split["labels"], split["audio_paths"],
                                        durations, texts)]


def _duration(example: dict) -> float:
    if example.get("duration") is not None:
        return float(example["duration"])
    return example["features"].shape[-1] * 0.01  # 10-ms frames


def epoch_batches(examples: list[dict], settings: TrainSettings, epoch: int) -> list[list[int]]:
    """Micro-batches (example indices) of one epoch; deterministic in (seed, epoch), so resume is exact.

    `count`: a seeded shuffle cut into batch_size chunks. `duration`: the shuffle is cut into windows,
    each sorted by duration and packed until the padded audio (utterances x longest) would exceed
    max_batch_seconds (at most batch_size utterances); the batches are then shuffled.
    """
    generator = torch.Generator().manual_seed(settings.seed * 1000 + epoch)
    order = torch.randperm(len(examples), generator=generator).tolist()
    if settings.batching == "count":
        return [order[i:i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]
    batches: list[list[int]] = []
    window = max(1, settings.bucket_batches * settings.batch_size)
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: _duration(examples[i]))
        current: list[int] = []
        for i in chunk:
            longest = max([_duration(examples[j]) for j in current] + [_duration(examples[i])])
            if current and (len(current) >= settings.batch_size or (len(current) + 1) * longest > settings.max_batch_seconds):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


def training_plan(examples: list[dict], settings: TrainSettings, world_size: int = 1) -> list[list[list[int]]]:
    """Optimiser steps, each a list of micro-batches, over all epochs (capped by max_steps).

    One step takes gradient_accumulation_steps micro-batches per process. Steps never cross epochs.
    """
    per_step = settings.gradient_accumulation_steps * world_size
    steps: list[list[list[int]]] = []
    for epoch in range(settings.epochs):
        batches = epoch_batches(examples, settings, epoch)
        steps += [batches[i:i + per_step] for i in range(0, len(batches), per_step)]
    if settings.max_steps:
        steps = steps[:settings.max_steps]
    return steps


def _epoch_of_steps(examples: list[dict], settings: TrainSettings, world_size: int) -> list[int]:
    per_step = settings.gradient_accumulation_steps * world_size
    counts = []
    for epoch in range(settings.epochs):
        counts += [epoch] * math.ceil(len(epoch_batches(examples, settings, epoch)) / per_step)
    return counts


class _MicroBatches(torch.utils.data.Dataset):
    """Collated micro-batches in plan order; augmentation (reading audio) runs in the workers."""

    def __init__(self, examples, micro_batches, epochs, collate_fn, feature_extractor, augmentation, seed):
        self.examples, self.micro_batches, self.epochs = examples, micro_batches, epochs
        self.collate_fn = collate_fn
        self.feature_extractor, self.augmentation, self.seed = feature_extractor, augmentation, seed

    def __len__(self) -> int:
        return len(self.micro_batches)

    def __getitem__(self, index: int) -> dict:
        ids, epoch = self.micro_batches[index], self.epochs[index]
        batch = [self.examples[i] for i in ids]
        if self.augmentation is not None and self.augmentation.enabled:
            batch = [_augmented(ex, self.feature_extractor, self.augmentation,
                                (self.seed * 1_000_003 + epoch) * 1_000_003 + i) for ex, i in zip(batch, ids)]
        return self.collate_fn(batch)


def _augmented(example: dict, feature_extractor, augmentation: AugmentSettings, seed: int) -> dict:
    features, pad_value = augmented_example(read_audio(example["audio_path"]), feature_extractor, augmentation, seed)
    return {**example, "features": features, "pad_value": pad_value}


def _seed_step(seed: int, step: int, rank: int) -> None:
    """Reseed every RNG from (seed, step, rank): dropout is reproducible after resume with no saved RNG state."""
    value = (seed * 1_000_003 + step) * 101 + rank
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def _mixed_precision(device: torch.device, precision: str) -> str:
    if device.type != "cuda" or precision == "fp32":
        return "no"
    if precision in ("auto", "bf16") and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp16"


def _autocast(device: torch.device, mixed_precision: str):
    if mixed_precision == "no":
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast("cuda", dtype=torch.bfloat16 if mixed_precision == "bf16" else torch.float16)


def run_fingerprint(base_model: dict, features_index: dict, settings: TrainSettings, lora: LoraSettings,
                    augmentation: AugmentSettings | None = None) -> str:
    ignored = ("progress", "num_threads", "device", "num_workers", "pin_memory", "launcher_args", "processes")
    payload = {"base": base_model["name_or_path"], "features": features_index["fingerprint"],
               "train": {k: v for k, v in asdict(settings).items() if k not in ignored},
               "processes": settings.processes, "lora": asdict(lora)}
    if augmentation is not None and augmentation.enabled:
        payload["augmentation"] = asdict(augmentation)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save_checkpoint(directory: Path, model, optimizer, scheduler, scaler, state: dict, keep: int) -> Path:
    from peft import get_peft_model_state_dict

    def write(tmp: Path) -> None:
        torch.save({"adapter": get_peft_model_state_dict(model), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None},
                   tmp / "state.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))

    final = write_directory_atomically(directory / f"step-{state['step']:07d}", write)
    for old in sorted(directory.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _save_best(directory: Path, model, record: dict) -> None:
    from peft import get_peft_model_state_dict

    def write(tmp: Path) -> None:
        torch.save(get_peft_model_state_dict(model), tmp / "adapter.pt")
        (tmp / "best.json").write_text(json.dumps(record, indent=2))

    write_directory_atomically(directory / "best", write)


def latest_checkpoint(directory: Path) -> Path | None:
    """Newest complete checkpoint (both files present), or None."""
    for candidate in sorted(directory.glob("step-*"), reverse=True):
        if (candidate / "state.pt").is_file() and (candidate / "trainer_state.json").is_file():
            return candidate
    return None


@torch.no_grad()
def _validation_loss(model, examples, batch_size, collate_fn, device, autocast_ctx) -> float | None:
    if not examples:
        return None
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate_fn(examples[start:start + batch_size]).items()}
        with autocast_ctx:
            loss = model(**model_inputs(batch)).loss
        n_tokens = label_tokens(batch)
        total += float(loss) * n_tokens
        count += n_tokens
    model.train()
    return total / max(count, 1)


@torch.no_grad()
def _validation_wer(model, processor, family, examples: list[dict], autocast_ctx, batch_size: int) -> float | None:
    """Greedy-decode the validation examples (from their audio) and score normalised WER."""
    from vernacular.metrics import error_rates, normalise
    from vernacular.transcribe import DecodeSettings

    if not examples:
        return None
    references = [ex["text"] if ex.get("text") is not None
                  else processor.tokenizer.decode(ex["labels"], skip_special_tokens=True).strip() for ex in examples]
    audios = [read_audio(ex["audio_path"]) for ex in examples]
    model.eval()
    with autocast_ctx:
        hypotheses = family.transcribe(model, processor, audios, DecodeSettings(batch_size=batch_size))
    model.train()
    norm = "whisper_english"
    rates = error_rates([normalise(r, norm) for r in references], [normalise(h, norm) for h in hypotheses])
    return rates["wer"]


@torch.no_grad()
def _cache_encoder_outputs(model, examples: list[dict], n_frames: int, device, autocast_ctx, batch_size: int) -> None:
    """Run the frozen encoder once per example and keep its output (fp16, CPU) on the example."""
    encoder = model.get_encoder()
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        features = pad_features([ex["features"] for ex in chunk], [ex["pad_value"] for ex in chunk], n_frames)
        with autocast_ctx:
            hidden = encoder(input_features=features.to(device)).last_hidden_state
        for ex, h in zip(chunk, hidden):
            ex["encoder_output"] = h.to("cpu", torch.float16)


def _pin(settings: TrainSettings, device: torch.device) -> bool:
    return device.type == "cuda" if settings.pin_memory == "auto" else bool(settings.pin_memory)


def train_lora_adapter(base_model: dict, features_index: dict, settings: TrainSettings, lora: LoraSettings,
                       checkpoint_root: str | Path, stop_after_steps: int | None = None,
                       augmentation: AugmentSettings | None = None):
    """Train an adapter; returns (peft_model, metrics).

    With `settings.processes > 1` (and not already inside a distributed launch) this starts
    `torchrun` with that many processes and loads the adapter they trained (`launch_distributed`).
    Checkpoints go to `checkpoint_root/<run fingerprint>/`; a rerun with the same inputs and
    settings resumes from the newest checkpoint (a finished run resumes at its end and returns
    at once). `stop_after_steps` ends the run early (as a crash would) for tests. With
    `augmentation.enabled`, training examples are rebuilt from their audio at every step
    (speed, noise, SpecAugment), seeded per (seed, epoch, example) so resume stays exact.
    """
    if settings.processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return launch_distributed(base_model, features_index, settings, lora, checkpoint_root,
                                  stop_after_steps=stop_after_steps, augmentation=augmentation)
    return _train(base_model, features_index, settings, lora, checkpoint_root, stop_after_steps, augmentation)


def _make_accelerator(device: torch.device, mixed_precision: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        AcceleratorState._reset_state(reset_partial_state=True)  # several runs in one process (tests, notebooks)
    # autocast and loss scaling stay ours (same code path with and without Accelerate)
    return Accelerator(cpu=device.type == "cpu", mixed_precision="no")


def _train(base_model, features_index, settings: TrainSettings, lora: LoraSettings, checkpoint_root,
           stop_after_steps, augmentation):
    from peft import get_peft_model, set_peft_model_state_dict
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    device = pick_device(settings.device)
    if device.type == "cuda":  # TF32 matmuls on Ampere and newer: fp32 accuracy for LoRA, much faster
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    mixed_precision = _mixed_precision(device, settings.precision)
    accelerator = _make_accelerator(device, mixed_precision)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    is_main = accelerator.is_main_process
    _seed_step(settings.seed, 0, 0)  # the adapter's initial weights are the same in every process

    model, processor, family = load_model(base_model, device="cpu")
    family.prepare_for_training(model)  # no KV cache, LayerDrop 0, frozen feature encoder where usual
    peft_config = build_peft_config(model, lora)
    model = get_peft_model(model, peft_config)
    augmentation = augmentation or AugmentSettings()
    if family.name != "whisper" and (settings.cache_encoder_outputs or augmentation.enabled):
        raise ValueError(f"training.cache_encoder_outputs and augmentation work with Whisper models only; the base "
                         f"model {base_model['name_or_path']!r} is a {family.name} model: turn them off")
    if settings.cache_encoder_outputs:
        in_encoder = [n for n, p in model.named_parameters() if p.requires_grad and ".encoder." in n]
        if in_encoder:
            raise ValueError("training.cache_encoder_outputs needs adapters on the decoder only (adapter.scope: "
                             f"decoder); these trainable parameters are in the encoder: {in_encoder[:3]} ...")
        if augmentation.enabled:
            raise ValueError("training.cache_encoder_outputs cannot be combined with augmentation (the encoder "
                             "input changes at every step); disable one of them")
    if settings.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen inputs otherwise leave checkpointed blocks without grads
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    train = _examples(load_split(features_index, "train"))
    if not train:
        raise ValueError("the train split is empty: check the split fractions and the quarantine report")
    validation = _examples(load_split(features_index, "validation")) if "validation" in features_index["splits"] else []
    n_frames = features_index.get("n_frames", 3000)  # None: padded to each batch's longest clip (CTC, RNN-T)
    if features_index.get("family", family.name) != family.name:
        raise ValueError(f"the feature cache {features_index['path']} was built for a {features_index['family']} model "
                         f"but the base model is a {family.name} model: rerun the features stage")

    def collate_fn(examples: list[dict]) -> dict:
        if "encoder_output" in examples[0]:
            return collate(examples, processor.tokenizer.eos_token_id, n_frames)
        return family.collate(examples, processor, n_frames)
    plan = training_plan(train, settings, world)
    step_epochs = _epoch_of_steps(train, settings, world)[:len(plan)]
    total_steps = len(plan)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_ratio * total_steps), total_steps)
    autocast_ctx = _autocast(device, mixed_precision)
    scaler = torch.amp.GradScaler("cuda") if mixed_precision == "fp16" else None

    run_id = run_fingerprint(base_model, features_index, settings, lora, augmentation)
    checkpoint_dir = Path(checkpoint_root) / run_id
    state = {"step": 0, "epoch": 0, "losses": [], "validation_losses": [], "validation_wers": [],
             "best": None, "evals_without_improvement": 0, "stopped_early": False, "train_seconds": 0.0,
             "samples_seen": 0, "run_id": run_id, "resumed_from": None}
    checkpoint = latest_checkpoint(checkpoint_dir)
    if checkpoint is not None:
        saved = torch.load(checkpoint / "state.pt", weights_only=False, map_location="cpu")
        set_peft_model_state_dict(model, saved["adapter"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if scaler and saved["scaler"]:
            scaler.load_state_dict(saved["scaler"])
        state = {**state, **json.loads((checkpoint / "trainer_state.json").read_text())}
        state["resumed_from"] = checkpoint.name
        log.info("resuming adapter training from %s (step %d of %d)", checkpoint, state["step"], total_steps)

    if settings.cache_encoder_outputs:
        started_cache = time.perf_counter()
        _cache_encoder_outputs(model, train + validation, n_frames, device, autocast_ctx, settings.batch_size)
        log.info("cached encoder outputs of %d utterances in %.1f s", len(train) + len(validation),
                 time.perf_counter() - started_cache)

    model = accelerator.prepare_model(model)  # DDP wrapper when distributed, else the model itself
    unwrapped = accelerator.unwrap_model(model)
    micro = [(ids, step_epochs[s]) for s in range(state["step"], total_steps)
             for ids, _ in _rank_share(plan[s], rank, world)]
    loader = torch.utils.data.DataLoader(
        _MicroBatches(train, [m[0] for m in micro], [m[1] for m in micro], collate_fn,
                      getattr(processor, "feature_extractor", None), augmentation, settings.seed),
        batch_size=None, shuffle=False, num_workers=settings.num_workers, pin_memory=_pin(settings, device),
        persistent_workers=False)
    batches = iter(loader)

    model.train()
    bar = tqdm(total=total_steps, initial=state["step"], desc="train adapter",
               disable=not settings.progress or not is_main)
    started = time.perf_counter()
    elapsed_before = state["train_seconds"]
    steps_this_session = 0
    val_subset = validation[:settings.max_validation_utterances] if settings.max_validation_utterances else validation
    while state["step"] < total_steps and not state["stopped_early"]:
        step = state["step"]
        _seed_step(settings.seed, step + 1, rank)
        share = _rank_share(plan[step], rank, world)
        collated = [next(batches) for _ in share]
        weights = [real for _, real in share]  # False: a stand-in micro-batch for an idle rank
        local_tokens = sum(label_tokens(c) for c, w in zip(collated, weights) if w)
        step_tokens = _all_reduce_sum(local_tokens, accelerator)
        loss_value = 0.0
        for index, (micro_batch, real) in enumerate(zip(collated, weights)):
            batch = {k: v.to(device, non_blocking=True) for k, v in micro_batch.items()}
            sync = index == len(collated) - 1
            with _maybe_no_sync(accelerator, model, sync), autocast_ctx:
                scale = (label_tokens(micro_batch) / step_tokens * world) if real else 0.0
                # token-weighted (x world: DDP averages gradients) = the gradient of one large batch
                loss = model(**model_inputs(batch)).loss * scale
                if scaler:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
            loss_value += loss.item() / world
        loss_value = _all_reduce_sum(loss_value, accelerator)
        if scaler:
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                   settings.max_grad_norm)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["samples_seen"] += sum(len(ids) for ids in plan[step])
        state["losses"].append(round(loss_value, 5))
        steps_this_session += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", grad=f"{float(grad_norm):.2f}")
        epoch = step_epochs[step]
        end_of_epoch = state["step"] == total_steps or step_epochs[state["step"]] != epoch
        evaluate_now = (state["step"] % settings.eval_every_steps == 0 or state["step"] == total_steps) \
            if settings.eval_every_steps else end_of_epoch
        if evaluate_now:
            _evaluate(unwrapped, processor, family, validation, val_subset, settings, state, epoch, collate_fn, device,
                      autocast_ctx, accelerator, checkpoint_dir)
        state["epoch"] = epoch + (1.0 if end_of_epoch else 0.0)
        state["train_seconds"] = elapsed_before + time.perf_counter() - started
        if is_main and (evaluate_now or end_of_epoch or state["step"] % settings.checkpoint_every_steps == 0
                        or state["stopped_early"]):
            _save_checkpoint(checkpoint_dir, unwrapped, optimizer, scheduler, scaler, state, settings.keep_checkpoints)
        accelerator.wait_for_everyone()
        if stop_after_steps is not None and steps_this_session >= stop_after_steps:
            break
    bar.close()
    completed = state["step"] >= total_steps or state["stopped_early"]
    best = state.get("best")
    if completed and settings.keep_best and best is not None and best["step"] != state["step"]:
        set_peft_model_state_dict(unwrapped, torch.load(checkpoint_dir / "best" / "adapter.pt", map_location="cpu"))
        log.info("keeping the adapter of step %d (best validation WER %.2f%%)", best["step"], 100 * best["wer"])
    wall = state["train_seconds"]
    metrics = {
        "run_id": run_id,
        "completed": completed,
        "steps": state["step"],
        "total_steps": total_steps,
        "epochs": settings.epochs,
        "train_examples": len(train),
        "validation_examples": len(validation),
        "losses": state["losses"],
        "first_loss": state["losses"][0] if state["losses"] else None,
        "final_loss": float(np.mean(state["losses"][-5:])) if state["losses"] else None,
        "validation_losses": state["validation_losses"],
        "validation_wers": state["validation_wers"],
        "best_step": best["step"] if best else None,
        "best_validation_wer": best["wer"] if best else None,
        "stopped_early": state["stopped_early"],
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / total,
        "device": device.type,
        "device_name": device_name(device),
        "processes": world,
        "precision": "fp32" if mixed_precision == "no" else mixed_precision,
        "train_seconds": wall,
        "device_hours": wall * world / 3600.0,  # every process holds a device
        "samples_per_second": state["samples_seen"] / wall if wall else None,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "resumed_from": state["resumed_from"],
        "settings": asdict(settings),
        "adapter": {**asdict(lora), "resolved_r": getattr(peft_config, "r", None)},
        "augmentation": asdict(augmentation),
    }
    unwrapped.eval()
    return unwrapped, metrics


def _rank_share(step_batches: list[list[int]], rank: int, world: int) -> list[tuple[list[int], bool]]:
    """This process's micro-batches of a step as (ids, real). Every process runs the same number of
    micro-batches (DDP synchronises each backward); a process short of one reruns the step's first
    with zero weight, adding no gradient."""
    share = [(ids, True) for ids in step_batches[rank::world]]
    slots = max(1, math.ceil(len(step_batches) / world))
    return share + [(step_batches[0], False)] * (slots - len(share))


def _maybe_no_sync(accelerator, model, sync: bool):
    import contextlib

    if sync or accelerator.num_processes == 1:
        return contextlib.nullcontext()
    return accelerator.no_sync(model)


def _all_reduce_sum(value: float, accelerator) -> float:
    if accelerator.num_processes == 1:
        return value
    tensor = torch.tensor([float(value)], device=accelerator.device, dtype=torch.float64)
    return float(accelerator.reduce(tensor, reduction="sum").item())


def _evaluate(model, processor, family, validation, val_subset, settings, state, epoch, collate_fn, device,
              autocast_ctx, accelerator, checkpoint_dir) -> None:
    """Validation loss and WER (main process), early stopping and best-adapter bookkeeping (all processes)."""
    record = None
    if accelerator.is_main_process:
        val_loss = _validation_loss(model, validation, settings.batch_size, collate_fn, device, autocast_ctx)
        state["validation_losses"].append({"epoch": epoch + 1, "step": state["step"], "loss": val_loss})
        wer = _validation_wer(model, processor, family, val_subset, autocast_ctx, settings.batch_size) \
            if settings.validation_wer else None
        if wer is not None:
            state["validation_wers"].append({"epoch": epoch + 1, "step": state["step"], "wer": wer})
            if state["best"] is None or wer < state["best"]["wer"]:
                state["best"] = {"step": state["step"], "wer": wer}
                state["evals_without_improvement"] = 0
                _save_best(checkpoint_dir, model, state["best"])
            else:
                state["evals_without_improvement"] += 1
            patience = settings.early_stopping_patience
            if patience is not None and state["evals_without_improvement"] >= patience:
                state["stopped_early"] = True
                log.info("early stopping at step %d: validation WER has not improved for %d evaluations (best %.2f%% "
                         "at step %d)", state["step"], patience, 100 * state["best"]["wer"], state["best"]["step"])
        log.info("step %d validation loss %s, WER %s", state["step"], val_loss,
                 f"{100 * wer:.2f}%" if wer is not None else "n/a")
        record = {k: state[k] for k in ("validation_losses", "validation_wers", "best", "evals_without_improvement",
                                        "stopped_early")}
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        shared = broadcast_object_list([record], from_process=0)[0]
        state.update(shared)


# ---------------------------------------------------------------------------------------------
# Distributed launch: the Kedro node (one process) starts torchrun; every rank runs `_train`.

def launch_distributed(base_model: dict, features_index: dict, settings: TrainSettings, lora: LoraSettings,
                       checkpoint_root: str | Path, stop_after_steps: int | None = None,
                       augmentation: AugmentSettings | None = None):
    """Run training in `settings.processes` processes with torchrun (DDP through Accelerate).

    Rank 0 saves the adapter and metrics to a work folder; this process loads them and returns
    (peft_model, metrics) like a single-process run. `settings.launcher_args` are passed to torchrun
    (e.g. `--nnodes=2 --node_rank=0 --rdzv_endpoint=host:29400` for several machines).
    """
    from peft import PeftModel

    work = Path(tempfile.mkdtemp(prefix="vernacular-ddp-"))
    try:
        spec = {"base_model": base_model, "features_index": features_index, "settings": asdict(settings),
                "lora": asdict(lora), "checkpoint_root": str(checkpoint_root), "stop_after_steps": stop_after_steps,
                "augmentation": asdict(augmentation) if augmentation else None, "out_dir": str(work / "out")}
        (work / "spec.json").write_text(json.dumps(spec, default=str))
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={settings.processes}",
                   *settings.launcher_args]
        if not any(a.startswith(("--master_port", "--rdzv")) for a in settings.launcher_args):
            command.append(f"--master_port={_free_port()}")
        command += ["-m", "vernacular.training", str(work / "spec.json")]
        log.info("launching distributed training: %s", " ".join(command))
        env = {**os.environ, "OMP_NUM_THREADS": str(settings.num_threads or 1)}
        result = subprocess.run(command, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"distributed training failed (exit {result.returncode}); see the ranks' output above. "
                               f"Command: {' '.join(command)}")
        metrics = json.loads((work / "out" / "metrics.json").read_text())
        base, _, _ = load_model(base_model, device="cpu")
        model = PeftModel.from_pretrained(base, str(work / "out" / "adapter"))
        model.to(pick_device(settings.device)).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model, metrics
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    settings = TrainSettings(**spec["settings"])
    augmentation = AugmentSettings(**spec["augmentation"]) if spec["augmentation"] else None
    model, metrics = _train(spec["base_model"], spec["features_index"], settings, LoraSettings(**spec["lora"]),
                            spec["checkpoint_root"], spec["stop_after_steps"], augmentation)
    # every machine's first process writes the result (the weights are the same on every rank), so the
    # Kedro run on each machine carries on
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        out = Path(spec["out_dir"])
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out / "adapter"))
        (out / "metrics.json").write_text(json.dumps(metrics, default=str))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    _worker(sys.argv[1])
