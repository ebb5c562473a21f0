"""PEFT adapter configuration: target modules within a scope, rank from a parameter budget."""

from __future__ import annotations

import torch
from peft import IA3Config, LoraConfig

from vernacular.training.settings import LoraSettings


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


