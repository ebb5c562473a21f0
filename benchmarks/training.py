"""Training throughput and peak memory: Vernacular's LoRA loop vs the transformers `Seq2SeqTrainer` recipe.

Both backends train the same base model with the same LoRA config on the same cached features, with
the same batch size, steps, learning-rate schedule and precision (fp32 on CPU, bf16 autocast + TF32
on CUDA). Each runs in its own subprocess so that peak memory is its own. Samples/s counts only the
steps after the warm-up: a global optimizer-step hook timestamps every step in both loops (CUDA
events on GPU, so the hook adds no synchronisation).

    python -m benchmarks.training                      # CPU, embedded Whisper tiny.en
    python -m benchmarks.training --device cuda        # GPU, bf16, 5 + 50 steps
    python -m benchmarks.training --base openai/whisper-small --batch-size 16

Data: the first utterances of `../shared/data/speechocean762-mini/train` (real speech) when that
folder exists, else synthetic radiology sentences (espeak-ng); `--data` picks either explicitly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.corpus import benchmark_corpus
from vernacular.common.fileio import write_new_file

REPO = Path(__file__).resolve().parents[1]
RESULT_MARKER = "BENCHMARK_RESULT "
BACKENDS = ("vernacular", "seq2seq_trainer")


@dataclass
class BenchConfig:
    device: str = "cpu"
    batch_size: int = 8
    warmup_steps: int = 2  # excluded from samples/s (allocator warm-up, lazy init)
    steps: int = 10
    learning_rate: float = 1e-3
    lr_warmup_steps: int = 1  # the learning-rate schedule's warm-up, the same in both backends
    seed: int = 13
    threads: int | None = None
    dataloader_workers: int = 0

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.steps

    @property
    def precision(self) -> str:
        return "bf16" if self.device == "cuda" else "fp32"


LORA = {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}


def hardware(device: str) -> str:
    """The card, or the CPU model, cores and torch threads."""
    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads (torch {torch.__version__})"


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class StepClock:
    """Timestamps every optimizer step of any torch optimizer while active (a global post-step hook)."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"
        self.marks: list = []
        self.wall: list[float] = []  # host clock at each step (CUDA: when the step was queued)
        self.rss: list[int] = []  # resident memory after each step: growth across steps shows a leak
        self._handle = None

    def _hook(self, optimizer, args, kwargs):
        import torch

        self.wall.append(time.perf_counter())
        self.rss.append(current_rss_bytes())
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def __enter__(self):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handle = register_optimizer_step_post_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()

    def seconds_between(self, first: int, last: int) -> float:
        """Seconds from the end of step `first` to the end of step `last` (1-based step numbers)."""
        if len(self.marks) < last:
            raise RuntimeError(f"only {len(self.marks)} optimizer steps were seen, expected at least {last}")
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return self.marks[first - 1].elapsed_time(self.marks[last - 1]) / 1000.0
        return self.marks[last - 1] - self.marks[first - 1]


class _Memory:
    """Peak memory of what runs inside: CUDA max_memory_allocated, or this process's peak RSS on CPU."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        import torch

        if self.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()
        else:
            self.baseline = current_rss_bytes()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
            self.kind = "CUDA max_memory_allocated"
        else:
            self.peak = peak_rss_bytes()
            self.kind = "peak RSS (ru_maxrss)"


def _result(backend: str, config: BenchConfig, clock: StepClock, memory: _Memory, started: float,
            ended: float) -> dict:
    seconds = clock.seconds_between(config.warmup_steps, config.total_steps) if config.warmup_steps else \
        clock.seconds_between(1, config.total_steps)
    measured_steps = config.steps if config.warmup_steps else config.total_steps - 1
    return {"backend": backend, "samples_per_second": measured_steps * config.batch_size / seconds,
            "seconds_per_step": seconds / measured_steps, "measured_steps": measured_steps,
            "optimizer_steps": len(clock.marks), "wall_seconds": ended - started,
            "seconds_to_first_step": clock.wall[0] - started, "seconds_after_last_step": ended - clock.wall[-1],
            "peak_memory_bytes": memory.peak, "rss_after_each_step": clock.rss,
            "baseline_memory_bytes": memory.baseline, "memory_kind": memory.kind, "device": config.device,
            "precision": config.precision, "hardware": hardware(config.device)}


def _set_threads(config: BenchConfig) -> None:
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)


def measure_vernacular(base_model: dict, features_index: dict, config: BenchConfig, work_dir: str | Path) -> dict:
    """Train with `vernacular.training.loop.train_lora_adapter` for `config.total_steps`; return the numbers."""
    from vernacular.training.settings import LoraSettings, TrainSettings
    from vernacular.training.train import train_lora_adapter

    _set_threads(config)
    n_train = features_index["counts"]["train"]
    values = {"epochs": max(1, -(-config.total_steps * config.batch_size // n_train)),
              "batch_size": config.batch_size, "learning_rate": config.learning_rate,
              # the loop takes int(ratio x steps) warm-up steps; +0.5 keeps float rounding from losing one
              "warmup_ratio": (config.lr_warmup_steps + 0.5) / config.total_steps, "max_steps": config.total_steps,
              "checkpoint_every_steps": 10**9,  # only the final checkpoint, after the timed steps
              "keep_checkpoints": 1, "seed": config.seed, "device": config.device,
              "precision": config.precision, "progress": False, "num_workers": config.dataloader_workers,
              "validation_wer": False, "keep_best": False}  # no validation split: nothing to decode
    known = TrainSettings.__dataclass_fields__
    settings = TrainSettings.from_dict({k: v for k, v in values.items() if k in known})
    # A fresh checkpoint folder: an earlier finished run would otherwise be resumed at its end.
    checkpoints = Path(tempfile.mkdtemp(dir=work_dir, prefix="vernacular-ckpt-"))
    try:
        with _Memory(config.device) as memory, StepClock(config.device) as clock:
            started = time.perf_counter()
            _, metrics = train_lora_adapter(base_model, features_index, settings, LoraSettings.from_dict(LORA), checkpoints)
            ended = time.perf_counter()
    finally:
        shutil.rmtree(checkpoints, ignore_errors=True)
    if metrics["steps"] != config.total_steps:
        raise RuntimeError(f"vernacular ran {metrics['steps']} steps, expected {config.total_steps}")
    return _result("vernacular", config, clock, memory, started, ended)


class PaddedFeatures:
    """The usual recipe's dataset: one utterance's padded log-mel (n_mels, 3000) and its label ids."""

    def __init__(self, split: dict, n_frames: int):
        self.split = split
        self.n_frames = n_frames

    def __len__(self) -> int:
        return len(self.split["labels"])

    def __getitem__(self, i: int) -> dict:
        from vernacular.models.families.whisper import pad_features

        features = pad_features([self.split["features"][i]], [self.split["pad_values"][i]], self.n_frames)[0]
        return {"input_features": features.numpy(), "labels": list(self.split["labels"][i])}


class SpeechSeq2SeqCollator:
    """`DataCollatorSpeechSeq2SeqWithPadding` from the Hugging Face Whisper fine-tuning blog."""

    def __init__(self, processor, decoder_start_token_id: int):
        self.processor = processor
        self.decoder_start_token_id = decoder_start_token_id

    def __call__(self, features: list[dict]) -> dict:
        batch = self.processor.feature_extractor.pad([{"input_features": f["input_features"]} for f in features],
                                                     return_tensors="pt")
        labels_batch = self.processor.tokenizer.pad([{"input_ids": f["labels"]} for f in features],
                                                    return_tensors="pt")
        labels = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)
        # the model prepends the start token itself when it shifts the labels right
        if (labels[:, 0] == self.decoder_start_token_id).all().cpu().item():
            labels = labels[:, 1:]
        batch["labels"] = labels
        return batch


def measure_seq2seq_trainer(base_model: dict, features_index: dict, config: BenchConfig,
                            work_dir: str | Path) -> dict:
    """Train the same LoRA with `Seq2SeqTrainer` for `config.total_steps`; return the numbers."""
    import torch
    from peft import get_peft_model
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, set_seed

    from vernacular.data.features import load_split
    from vernacular.models.loading import load_model
    from vernacular.training.adapters import build_peft_config
    from vernacular.training.settings import LoraSettings

    _set_threads(config)
    set_seed(config.seed)
    output_dir = Path(tempfile.mkdtemp(dir=work_dir, prefix="seq2seq-trainer-"))
    try:
        with _Memory(config.device) as memory, StepClock(config.device) as clock:
            started = time.perf_counter()
            model, processor = load_model(base_model, device="cpu")[:2]
            model.config.use_cache = False
            model = get_peft_model(model, build_peft_config(model, LoraSettings.from_dict(LORA)))
            dataset = PaddedFeatures(load_split(features_index, "train"), int(features_index.get("n_frames", 3000)))
            cuda = config.device == "cuda"
            args = Seq2SeqTrainingArguments(
                output_dir=str(output_dir), per_device_train_batch_size=config.batch_size,
                max_steps=config.total_steps, learning_rate=config.learning_rate, lr_scheduler_type="linear",
                warmup_steps=config.lr_warmup_steps, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
                bf16=cuda, tf32=True if cuda and torch.cuda.is_bf16_supported() else None, use_cpu=not cuda,
                logging_strategy="no", save_strategy="no", eval_strategy="no",
                report_to=[], disable_tqdm=True, predict_with_generate=False,
                dataloader_num_workers=config.dataloader_workers, remove_unused_columns=False,
                label_names=["labels"], seed=config.seed)
            trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=dataset,
                                     data_collator=SpeechSeq2SeqCollator(processor,
                                                                         model.config.decoder_start_token_id))
            trainer.train()
            ended = time.perf_counter()
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
    return _result("seq2seq_trainer", config, clock, memory, started, ended)


MEASURES = {"vernacular": measure_vernacular, "seq2seq_trainer": measure_seq2seq_trainer}


def _preload() -> None:
    """Import what either backend uses, so that neither's timing or memory baseline carries import costs."""
    import accelerate  # noqa: F401
    import peft  # noqa: F401
    from transformers import Seq2SeqTrainer, WhisperForConditionalGeneration  # noqa: F401

    import vernacular.training.loop  # noqa: F401


def prepare_features(base_model: dict, n_utterances: int, work_dir: str | Path, data: str = "auto",
                     progress: bool = True) -> tuple[dict, str]:
    """Build (or reuse) the benchmark's train features; return (features index, a description of the data).

    `data`: `auto` (speechocean762-mini when present, else synthetic), `synthetic`, or a corpus path
    that `manifest.read_manifest` reads (Kaldi dir, CSV, ...).
    """
    from vernacular.data.features import extract_features, load_split
    from vernacular.data.manifest import default_root, read_manifest, resolve_rows
    from vernacular.models.loading import load_processor

    work_dir = Path(work_dir)
    path, description = benchmark_corpus(data, n_utterances, work_dir, progress)
    raw, _ = read_manifest(path)
    rows = resolve_rows(raw, default_root(path)).sort_values("utterance_id").head(n_utterances).assign(split="train")
    if len(rows) < n_utterances:
        print(f"note: {len(rows)} utterances for {n_utterances} samples: the loops see some twice", file=sys.stderr)
    index = extract_features(rows, load_processor(base_model), work_dir / "features", splits=("train",),
                             progress=progress)
    minutes = sum(load_split(index, "train")["durations"]) / 60
    return index, f"{description}: {index['counts']['train']} utterances, {minutes:.1f} min of audio"


def run_child(backend: str, base_model: dict, features_index: dict, config: BenchConfig,
              work_dir: Path) -> dict:
    """Run one backend in a fresh interpreter (so its peak memory is its own) and return its numbers."""
    payload = json.dumps({"backend": backend, "base_model": base_model, "features_index": features_index,
                          "config": asdict(config), "work_dir": str(work_dir)})
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.training", "--child", payload],
                          stdout=subprocess.PIPE, text=True, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_MARKER)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the {backend} benchmark failed (exit {proc.returncode}); its output is above")
    return json.loads(lines[-1][len(RESULT_MARKER):])


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def format_table(results: list[dict]) -> str:
    header = ("| backend | samples/s | s/step | peak memory | over baseline | whole call | "
              "of which before step 1 | after the last step |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['backend']} | {r['samples_per_second']:.2f} | {r['seconds_per_step']:.3f} | "
                     f"{_mib(r['peak_memory_bytes'])} | {_mib(r['peak_memory_bytes'] - r['baseline_memory_bytes'])} | "
                     f"{r['wall_seconds']:.1f} s | {r['seconds_to_first_step']:.1f} s | "
                     f"{r['seconds_after_last_step']:.1f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--base", default="embedded:whisper-tiny.en",
                        help="embedded:whisper-tiny.en, a save_pretrained folder or a hub id (HF_HUB_OFFLINE honoured)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10 on CPU, 50 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 2 on CPU, 5 on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each backend (default: torch's)")
    parser.add_argument("--workers", type=int, default=0, help="dataloader workers (where the backend has them)")
    parser.add_argument("--data", default="auto", help="auto | synthetic | a corpus folder or manifest")
    parser.add_argument("--features-index", default=None,
                        help="an existing features index.json (skips feature extraction; its folder is the cache entry)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated subset of {BACKENDS}")
    parser.add_argument("--work-dir", default=str(REPO / "data" / "benchmarks" / "training"),
                        help="scratch folder: synthetic audio, feature cache, temporary checkpoints")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file (a new file)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.child:
        _preload()
        job = json.loads(args.child)
        config = BenchConfig(**job["config"])
        result = MEASURES[job["backend"]](job["base_model"], job["features_index"], config, job["work_dir"])
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return 0

    if args.json and Path(args.json).exists():
        parser.error(f"--json {args.json}: the file exists; name a new file (results are never overwritten)")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backend(s) {sorted(unknown)}; choose from {BACKENDS}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is available")
    cuda = args.device == "cuda"
    config = BenchConfig(device=args.device, batch_size=args.batch_size,
                         warmup_steps=args.warmup if args.warmup is not None else (5 if cuda else 2),
                         steps=args.steps if args.steps is not None else (50 if cuda else 10),
                         threads=args.threads, dataloader_workers=args.workers)
    if config.steps < 1 or config.batch_size < 1 or config.warmup_steps < 0:
        parser.error("--steps and --batch-size must be >= 1, --warmup >= 0")
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)

    from vernacular.models.loading import resolve_base_model

    base_model = resolve_base_model(args.base, REPO / "data" / "06_models" / "base")
    if args.features_index:
        index_path = Path(args.features_index)
        if not index_path.is_file():
            parser.error(f"{index_path}: no such features index (a cache entry's index.json)")
        features_index = {**json.loads(index_path.read_text()), "path": str(index_path.parent.resolve())}
        data = f"features from {index_path.parent}: {features_index['counts']['train']} utterances"
    else:
        features_index, data = prepare_features(base_model, config.batch_size * config.total_steps, work_dir,
                                                args.data)
    print(f"data: {data}", flush=True)
    print(f"model: {args.base}; LoRA r={LORA['r']} on {','.join(LORA['target_modules'])}; batch {config.batch_size}; "
          f"{config.warmup_steps} warm-up + {config.steps} timed steps; {config.precision}", flush=True)
    results = [run_child(b, base_model, features_index, config, work_dir) for b in backends]
    print(f"\nhardware: {results[0]['hardware']}")
    print(f"memory: {results[0]['memory_kind']}; 'over baseline' subtracts the process's "
          f"{'CUDA allocation' if cuda else 'RSS after the same imports'} before the model was loaded; "
          "'whole call' = model load + all steps + the backend's own wrap-up\n")
    print(format_table(results))
    if args.json:
        write_new_file(Path(args.json), json.dumps({"config": asdict(config), "data": data, "base": args.base,
                                               "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
