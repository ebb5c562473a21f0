"""The adapter training loop: PEFT adapters on a frozen ASR model, in this process or one rank of many.

One loop serves every setting: batches by count or by total audio duration (length bucketing),
a DataLoader with workers and pinned memory, gradient accumulation weighted by label tokens (equal
to one large batch), bf16/fp16 autocast on CUDA, TF32, gradient checkpointing, checkpoints with
exact resume, validation WER with early stopping and best-adapter selection, optional caching of
the frozen Whisper encoder's outputs, and data-parallel training across processes through
Hugging Face Accelerate (DDP), launched with `torchrun` (`vernacular.training.distributed`).
Everything that differs between model families goes through the family interface.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import broadcast_object_list
from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from vernacular.common.fileio import sha256_text, write_directory_atomically
from vernacular.data.audio import read_audio
from vernacular.data.augment import AugmentSettings
from vernacular.data.features import load_split
from vernacular.evaluation.metrics import error_rates, normalise
from vernacular.models.families import DecodeSettings
from vernacular.models.loading import device_name, load_model, pick_device
from vernacular.training.adapters import build_peft_config
from vernacular.training.settings import LoraSettings, TrainSettings

log = logging.getLogger(__name__)


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

    def __init__(self, examples, micro_batches, epochs, collate_fn, family, processor, augmentation, seed):
        self.examples, self.micro_batches, self.epochs = examples, micro_batches, epochs
        self.collate_fn = collate_fn
        self.family, self.processor, self.augmentation, self.seed = family, processor, augmentation, seed

    def __len__(self) -> int:
        return len(self.micro_batches)

    def __getitem__(self, index: int) -> dict:
        ids, epoch = self.micro_batches[index], self.epochs[index]
        batch = [self.examples[i] for i in ids]
        if self.augmentation is not None and self.augmentation.enabled:
            batch = [self._augmented(ex, (self.seed * 1_000_003 + epoch) * 1_000_003 + i) for ex, i in zip(batch, ids)]
        return self.collate_fn(batch)

    def _augmented(self, example: dict, seed: int) -> dict:
        features, pad_value = self.family.augmented_features(self.processor, read_audio(example["audio_path"]),
                                                             self.augmentation, seed)
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
    ignored = ("progress", "num_threads", "device", "num_workers", "pin_memory", "launcher_args", "processes_per_node",
               "nodes")
    payload = {"base": base_model["name_or_path"], "features": features_index["fingerprint"],
               "train": {k: v for k, v in asdict(settings).items() if k not in ignored},
               "processes": settings.processes_per_node * settings.nodes, "lora": asdict(lora)}
    if augmentation is not None and augmentation.enabled:
        payload["augmentation"] = asdict(augmentation)
    return sha256_text(json.dumps(payload, sort_keys=True, default=str))[:16]


def _save_checkpoint(directory: Path, model, optimizer, scheduler, scaler, state: dict, keep: int) -> Path:
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
def _validation_loss(model, family, examples, batch_size, collate_fn, device, autocast_ctx) -> float | None:
    if not examples:
        return None
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate_fn(examples[start:start + batch_size]).items()}
        with autocast_ctx:
            loss = family.loss(model, batch)
        n_tokens = family.n_label_tokens(batch)
        total += float(loss) * n_tokens
        count += n_tokens
    model.train()
    return total / max(count, 1)


@torch.no_grad()
def _validation_wer(model, processor, family, examples: list[dict], autocast_ctx, decoding: DecodeSettings,
                    normaliser: str) -> float | None:
    """Decode the validation examples (from their audio) as evaluation does and score normalised WER."""
    if not examples:
        return None
    references = [ex["text"] if ex.get("text") is not None
                  else processor.tokenizer.decode(ex["labels"], skip_special_tokens=True).strip() for ex in examples]
    audios = [read_audio(ex["audio_path"]) for ex in examples]
    model.eval()
    with autocast_ctx:
        hypotheses = family.transcribe(model, processor, audios, decoding)
    model.train()
    rates = error_rates([normalise(r, normaliser) for r in references],
                        [normalise(h, normaliser) for h in hypotheses])
    return rates["wer"]


def _pin(settings: TrainSettings, device: torch.device) -> bool:
    return device.type == "cuda" if settings.pin_memory == "auto" else bool(settings.pin_memory)


def _make_accelerator(device: torch.device, mixed_precision: str):
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        AcceleratorState._reset_state(reset_partial_state=True)  # several runs in one process (tests, notebooks)
    # autocast and loss scaling stay ours (same code path with and without Accelerate)
    return Accelerator(cpu=device.type == "cpu", mixed_precision="no")


def train_in_process(base_model: dict, features_index: dict, settings: TrainSettings, lora: LoraSettings,
                     checkpoint_root, stop_after_steps: int | None = None, augmentation: AugmentSettings | None = None,
                     decoding: DecodeSettings | None = None, normaliser: str = "whisper_english"):
    """Train in this process (a single run, or one rank under torchrun); returns (peft_model, metrics).

    `decoding` and `normaliser` are evaluation's, so the validation WER is scored as the test WER is.
    """
    decoding = decoding or DecodeSettings(batch_size=settings.batch_size)

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
    if augmentation.enabled:
        family.check_augmentation()
    if settings.cache_encoder_outputs:
        family.check_encoder_cache(model)
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
        # weights_only: a checkpoint holds tensors and plain numbers only; never unpickle objects from disk
        saved = torch.load(checkpoint / "state.pt", weights_only=True, map_location="cpu")
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
        family.cache_encoder_outputs(model, train + validation, n_frames, device, autocast_ctx, settings.batch_size)
        log.info("cached encoder outputs of %d utterances in %.1f s", len(train) + len(validation),
                 time.perf_counter() - started_cache)

    model = accelerator.prepare_model(model)  # DDP wrapper when distributed, else the model itself
    unwrapped = accelerator.unwrap_model(model)
    micro = [(ids, step_epochs[s]) for s in range(state["step"], total_steps)
             for ids, _ in _rank_share(plan[s], rank, world)]
    loader = torch.utils.data.DataLoader(
        _MicroBatches(train, [m[0] for m in micro], [m[1] for m in micro], collate_fn,
                      family, processor, augmentation, settings.seed),
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
        local_tokens = sum(family.n_label_tokens(c) for c, w in zip(collated, weights) if w)
        step_tokens = _all_reduce_sum(local_tokens, accelerator)
        loss_value = 0.0
        for index, (micro_batch, real) in enumerate(zip(collated, weights)):
            batch = {k: v.to(device, non_blocking=True) for k, v in micro_batch.items()}
            sync = index == len(collated) - 1
            with _maybe_no_sync(accelerator, model, sync), autocast_ctx:
                scale = (family.n_label_tokens(micro_batch) / step_tokens * world) if real else 0.0
                # token-weighted (x world: DDP averages gradients) = the gradient of one large batch
                loss = family.loss(model, batch) * scale
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
                      autocast_ctx, accelerator, checkpoint_dir, decoding, normaliser)
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
        "family": family.name,
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
    if sync or accelerator.num_processes == 1:
        return contextlib.nullcontext()
    return accelerator.no_sync(model)


def _all_reduce_sum(value: float, accelerator) -> float:
    if accelerator.num_processes == 1:
        return value
    tensor = torch.tensor([float(value)], device=accelerator.device, dtype=torch.float64)
    return float(accelerator.reduce(tensor, reduction="sum").item())


def _evaluate(model, processor, family, validation, val_subset, settings, state, epoch, collate_fn, device,
              autocast_ctx, accelerator, checkpoint_dir, decoding, normaliser) -> None:
    """Validation loss and WER (main process), early stopping and best-adapter bookkeeping (all processes)."""
    record = None
    if accelerator.is_main_process:
        val_loss = _validation_loss(model, family, validation, settings.batch_size, collate_fn, device, autocast_ctx)
        state["validation_losses"].append({"epoch": epoch + 1, "step": state["step"], "loss": val_loss})
        wer = _validation_wer(model, processor, family, val_subset, autocast_ctx, decoding, normaliser) \
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
        shared = broadcast_object_list([record], from_process=0)[0]
        state.update(shared)


