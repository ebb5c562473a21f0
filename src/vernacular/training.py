"""LoRA adapter training for Whisper: AdamW, warmup, clipping, checkpoints and resume."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from vernacular.config import build_settings
from vernacular.audio import read_audio
from vernacular.augment import AugmentSettings, augmented_example
from vernacular.features import load_split, pad_features
from vernacular.models import device_name, load_whisper, pick_device

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


ADAPTER_METHODS = ("lora", "dora", "ia3")


@dataclass
class LoraSettings:
    """Adapter settings. `method`: lora, dora (weight-decomposed LoRA) or ia3.

    `param_budget` (a fraction such as 0.005, or a string such as "0.5%") picks the largest LoRA/DoRA
    rank whose trainable parameters stay within that share of the model; `r` is then ignored.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    method: str = "lora"
    param_budget: float | str | None = None
    feedforward_modules: list[str] = field(default_factory=lambda: ["fc2"])  # IA3 only

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
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_steps: int | None = None
    gradient_accumulation_steps: int = 1  # an optimiser step sees batch_size x this many utterances
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    checkpoint_every_steps: int = 20
    keep_checkpoints: int = 2
    seed: int = 13
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 (or fp16 + loss scaling) on CUDA, fp32 on CPU
    num_threads: int | None = None
    progress: bool = True

    @classmethod
    def from_dict(cls, values: dict) -> "TrainSettings":
        settings = build_settings(cls, values, "training")
        if settings.epochs < 1 or settings.batch_size < 1 or settings.learning_rate <= 0 \
                or settings.gradient_accumulation_steps < 1:
            raise ValueError("training.epochs, batch_size and gradient_accumulation_steps must be >= 1 and "
                             "learning_rate > 0")
        return settings


def lora_from_dict(values: dict) -> LoraSettings:
    settings = build_settings(LoraSettings, values, "adapter")
    if settings.r < 1:
        raise ValueError(f"adapter.r must be >= 1, got {settings.r}")
    if settings.method not in ADAPTER_METHODS:
        raise ValueError(f"adapter.method must be one of {ADAPTER_METHODS}, got {settings.method!r}")
    settings.budget_fraction()  # validates
    return settings


def _targeted_linears(model, target_modules: list[str]) -> list[torch.nn.Linear]:
    return [m for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in set(target_modules)]


def rank_for_budget(model, target_modules: list[str], budget: float) -> int:
    """Largest LoRA rank whose trainable parameters (r x (in + out) per target) fit the budget."""
    per_rank = sum(m.in_features + m.out_features for m in _targeted_linears(model, target_modules))
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

    if adapter.method == "ia3":
        return IA3Config(target_modules=list(adapter.target_modules),
                         feedforward_modules=[m for m in adapter.feedforward_modules if m in adapter.target_modules])
    budget = adapter.budget_fraction()
    rank = rank_for_budget(model, adapter.target_modules, budget) if budget else adapter.r
    alpha = adapter.alpha * rank / adapter.r if budget else adapter.alpha  # keep alpha / r constant
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=adapter.dropout,
                      target_modules=list(adapter.target_modules), bias="none", use_dora=adapter.method == "dora")


def collate(batch: list[dict], pad_token_id: int, n_frames: int = 3000) -> dict:
    """Pad features to Whisper's window and build teacher-forcing inputs and labels."""
    features = pad_features([b["features"] for b in batch], [b["pad_value"] for b in batch], n_frames)
    longest = max(len(b["labels"]) for b in batch) - 1
    decoder_input_ids = torch.full((len(batch), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), longest), IGNORE_INDEX, dtype=torch.long)
    for i, b in enumerate(batch):
        ids = torch.tensor(b["labels"], dtype=torch.long)
        decoder_input_ids[i, : len(ids) - 1] = ids[:-1]
        labels[i, : len(ids) - 1] = ids[1:]
    return {"input_features": features, "decoder_input_ids": decoder_input_ids, "labels": labels}


def _examples(split: dict) -> list[dict]:
    return [{"features": f, "pad_value": p, "labels": l, "audio_path": a}
            for f, p, l, a in zip(split["features"], split["pad_values"], split["labels"], split["audio_paths"])]


def _augmented(example: dict, feature_extractor, augmentation: AugmentSettings, seed: int) -> dict:
    features, pad_value = augmented_example(read_audio(example["audio_path"]), feature_extractor, augmentation, seed)
    return {**example, "features": features, "pad_value": pad_value}


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def _autocast(device: torch.device, precision: str):
    if device.type != "cuda" or precision == "fp32":
        return torch.autocast(device_type=device.type, enabled=False), None
    if precision in ("auto", "bf16") and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16), None
    return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


def run_fingerprint(base_model: dict, features_index: dict, settings: TrainSettings, lora: LoraSettings,
                    augmentation: AugmentSettings | None = None) -> str:
    payload = {"base": base_model["name_or_path"], "features": features_index["fingerprint"],
               "train": {k: v for k, v in asdict(settings).items() if k not in ("progress", "num_threads", "device")},
               "lora": asdict(lora)}
    if augmentation is not None and augmentation.enabled:
        payload["augmentation"] = asdict(augmentation)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save_checkpoint(directory: Path, model, optimizer, scheduler, scaler, state: dict, keep: int) -> Path:
    from peft import get_peft_model_state_dict

    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{state['step']:07d}"
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=".tmp-"))
    try:
        torch.save({"adapter": get_peft_model_state_dict(model), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                    "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                            "python": random.getstate(),
                            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}},
                   tmp / "state.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted(directory.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(directory: Path) -> Path | None:
    """Newest complete checkpoint (both files present), or None."""
    for candidate in sorted(directory.glob("step-*"), reverse=True):
        if (candidate / "state.pt").is_file() and (candidate / "trainer_state.json").is_file():
            return candidate
    return None


@torch.no_grad()
def _validation_loss(model, examples, batch_size, pad_id, device, autocast_ctx, n_frames) -> float | None:
    if not examples:
        return None
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[start:start + batch_size], pad_id, n_frames).items()}
        with autocast_ctx:
            loss = model(**batch).loss
        n_tokens = int((batch["labels"] != IGNORE_INDEX).sum())
        total += float(loss) * n_tokens
        count += n_tokens
    model.train()
    return total / max(count, 1)


def train_lora_adapter(base_model: dict, features_index: dict, settings: TrainSettings, lora: LoraSettings,
                       checkpoint_root: str | Path, stop_after_steps: int | None = None,
                       augmentation: AugmentSettings | None = None):
    """Train a LoRA adapter; returns (peft_model, metrics).

    Checkpoints go to `checkpoint_root/<run fingerprint>/`; a rerun with the same inputs and
    settings resumes from the newest checkpoint (a finished run resumes at its end and returns
    at once). `stop_after_steps` ends the run early (as a crash would) for tests. With
    `augmentation.enabled`, training examples are rebuilt from their audio at every step
    (speed, noise, SpecAugment), seeded per (seed, epoch, example) so resume stays exact.
    """
    from peft import get_peft_model, set_peft_model_state_dict
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    device = pick_device(settings.device)
    if device.type == "cuda":  # TF32 matmuls on Ampere and newer: fp32 accuracy for LoRA, much faster
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    random.seed(settings.seed)
    np.random.seed(settings.seed)
    torch.manual_seed(settings.seed)

    model, processor = load_whisper(base_model, device="cpu")
    model.config.use_cache = False
    peft_config = build_peft_config(model, lora)
    model = get_peft_model(model, peft_config)
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
    n_frames = int(features_index.get("n_frames", 3000))
    pad_id = processor.tokenizer.eos_token_id
    per_step = settings.batch_size * settings.gradient_accumulation_steps
    steps_per_epoch = (len(train) + per_step - 1) // per_step
    total_steps = steps_per_epoch * settings.epochs
    if settings.max_steps:
        total_steps = min(total_steps, settings.max_steps)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_ratio * total_steps), total_steps)
    autocast_ctx, scaler = _autocast(device, settings.precision)

    augmentation = augmentation or AugmentSettings()
    run_id = run_fingerprint(base_model, features_index, settings, lora, augmentation)
    checkpoint_dir = Path(checkpoint_root) / run_id
    state = {"step": 0, "epoch": 0, "losses": [], "validation_losses": [], "train_seconds": 0.0,
             "samples_seen": 0, "run_id": run_id, "resumed_from": None}
    checkpoint = latest_checkpoint(checkpoint_dir)
    if checkpoint is not None:
        saved = torch.load(checkpoint / "state.pt", weights_only=False)
        set_peft_model_state_dict(model, saved["adapter"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if scaler and saved["scaler"]:
            scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"]["torch"])
        np.random.set_state(saved["rng"]["numpy"])
        random.setstate(saved["rng"]["python"])
        if saved["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        state["resumed_from"] = checkpoint.name
        log.info("resuming adapter training from %s (step %d of %d)", checkpoint, state["step"], total_steps)

    model.train()
    bar = tqdm(total=total_steps, initial=state["step"], desc="train adapter", disable=not settings.progress)
    started = time.perf_counter()
    elapsed_before = state["train_seconds"]
    steps_this_session = 0
    while state["step"] < total_steps:
        epoch = state["step"] // steps_per_epoch
        order = _epoch_order(len(train), settings.seed, epoch)
        position = state["step"] % steps_per_epoch
        batch_ids = order[position * per_step:(position + 1) * per_step]
        micro_batches = [batch_ids[i:i + settings.batch_size] for i in range(0, len(batch_ids), settings.batch_size)]
        collated = []
        for micro_ids in micro_batches:
            examples = [train[i] for i in micro_ids]
            if augmentation.enabled:
                examples = [_augmented(ex, processor.feature_extractor, augmentation,
                                       (settings.seed * 1_000_003 + epoch) * 1_000_003 + i)
                            for ex, i in zip(examples, micro_ids)]
            collated.append(collate(examples, pad_id, n_frames))
        step_tokens = sum(int((c["labels"] != IGNORE_INDEX).sum()) for c in collated)
        loss_value = 0.0
        for micro in collated:
            batch = {k: v.to(device, non_blocking=True) for k, v in micro.items()}
            with autocast_ctx:
                # token-weighted, so accumulation gives the same gradient as one large batch
                loss = model(**batch).loss * (int((micro["labels"] != IGNORE_INDEX).sum()) / step_tokens)
            if scaler:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            loss_value += loss.item()
        if scaler:
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["samples_seen"] += len(batch_ids)
        state["losses"].append(round(loss_value, 5))
        steps_this_session += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", grad=f"{grad_norm.item():.2f}")
        end_of_epoch = state["step"] % steps_per_epoch == 0 or state["step"] == total_steps
        if end_of_epoch:
            val = _validation_loss(model, validation, settings.batch_size, pad_id, device, autocast_ctx, n_frames)
            state["validation_losses"].append({"epoch": epoch + 1, "step": state["step"], "loss": val})
            log.info("epoch %d step %d validation loss %s", epoch + 1, state["step"], val)
        state["epoch"] = state["step"] / steps_per_epoch
        state["train_seconds"] = elapsed_before + time.perf_counter() - started
        if end_of_epoch or state["step"] % settings.checkpoint_every_steps == 0:
            _save_checkpoint(checkpoint_dir, model, optimizer, scheduler, scaler, state, settings.keep_checkpoints)
        if stop_after_steps is not None and steps_this_session >= stop_after_steps:
            break
    bar.close()
    wall = state["train_seconds"]
    metrics = {
        "run_id": run_id,
        "completed": state["step"] >= total_steps,
        "steps": state["step"],
        "total_steps": total_steps,
        "epochs": settings.epochs,
        "train_examples": len(train),
        "validation_examples": len(validation),
        "losses": state["losses"],
        "first_loss": state["losses"][0] if state["losses"] else None,
        "final_loss": float(np.mean(state["losses"][-5:])) if state["losses"] else None,
        "validation_losses": state["validation_losses"],
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / total,
        "device": device.type,
        "device_name": device_name(device),
        "precision": "fp32" if device.type == "cpu" else settings.precision,
        "train_seconds": wall,
        "device_hours": wall / 3600.0,
        "samples_per_second": state["samples_seen"] / wall if wall else None,
        "resumed_from": state["resumed_from"],
        "settings": asdict(settings),
        "adapter": {**asdict(lora), "resolved_r": getattr(peft_config, "r", None)},
        "augmentation": asdict(augmentation),
    }
    model.eval()
    return model, metrics
