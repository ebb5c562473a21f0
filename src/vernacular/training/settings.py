"""Training and adapter settings (`params:<vertical>.training`, `params:<vertical>.adapter`).

The dataclass defaults are the defaults: conf/base/parameters.yml restates them for the reader, and a
test keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vernacular.common.config import build_settings

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
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])  # every family has them
    method: str = "lora"
    param_budget: float | str | None = None
    feedforward_modules: list[str] = field(default_factory=lambda: ["fc2"])  # IA3 only
    scope: str = "all"

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"adapter.r must be >= 1, got {self.r}")
        if self.method not in ADAPTER_METHODS:
            raise ValueError(f"adapter.method must be one of {ADAPTER_METHODS}, got {self.method!r}")
        if self.scope not in ADAPTER_SCOPES:
            raise ValueError(f"adapter.scope must be one of {ADAPTER_SCOPES}, got {self.scope!r}")
        self.budget_fraction()  # validates

    @classmethod
    def from_dict(cls, values: dict | None) -> "LoraSettings":
        return build_settings(cls, values, "adapter")

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
    epochs: int = 1
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
    # Data-parallel (DDP) via torchrun + Accelerate: processes_per_node ranks (one per GPU) on each
    # of `nodes` machines, nodes x processes_per_node ranks in all.
    processes_per_node: int = 1
    nodes: int = 1
    launcher_args: list[str] = field(default_factory=list)  # extra torchrun args: rendezvous, --node_rank
    seed: int = 13
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 (or fp16 + loss scaling) on CUDA, fp32 on CPU
    num_threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0 \
                or self.gradient_accumulation_steps < 1 or self.processes_per_node < 1 or self.nodes < 1:
            raise ValueError("training.epochs, batch_size, gradient_accumulation_steps, processes_per_node and nodes "
                             "must be >= 1 and learning_rate > 0")
        owned = [a for a in self.launcher_args if a.split("=")[0] in ("--nnodes", "--nproc_per_node", "--nproc-per-node")]
        if owned:
            raise ValueError(f"training.launcher_args {owned}: set training.nodes and training.processes_per_node "
                             "instead (they give torchrun --nnodes and --nproc_per_node)")
        if self.nodes > 1 and not any(a.startswith(("--rdzv_endpoint", "--rdzv-endpoint", "--master_addr"))
                                      for a in self.launcher_args):
            raise ValueError(f"training.nodes: {self.nodes} needs the rendezvous in training.launcher_args, e.g. "
                             '["--node_rank=0", "--rdzv_backend=c10d", "--rdzv_endpoint=node0:29400"]')
        if self.batching not in BATCHING:
            raise ValueError(f"training.batching must be one of {BATCHING}, got {self.batching!r}")
        if self.batching == "duration" and self.max_batch_seconds <= 0:
            raise ValueError("training.max_batch_seconds must be > 0 with batching: duration")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError("training.early_stopping_patience must be >= 1 or null")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"training.precision must be auto, bf16, fp16 or fp32, got {self.precision!r}")

    @property
    def distributed(self) -> bool:
        return self.processes_per_node * self.nodes > 1

    @classmethod
    def from_dict(cls, values: dict | None) -> "TrainSettings":
        return build_settings(cls, values, "training")
