"""Distributed launch: the Kedro node (one process) starts torchrun; every rank runs the training loop.

`python -m vernacular.training.distributed SPEC.json` is what each rank executes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from vernacular.data.augment import AugmentSettings
from vernacular.models.families import DecodeSettings
from vernacular.models.loading import load_adapter, pick_device
from vernacular.training.loop import train_in_process
from vernacular.training.settings import LoraSettings, TrainSettings

log = logging.getLogger(__name__)

def launch_distributed(base_model: dict, features_index: dict, settings: TrainSettings, lora: LoraSettings,
                       checkpoint_root: str | Path, stop_after_steps: int | None = None,
                       augmentation: AugmentSettings | None = None, decoding: DecodeSettings | None = None,
                       normaliser: str = "whisper_english"):
    """Run training with torchrun (DDP through Accelerate): `settings.processes_per_node` ranks on this
    machine, one of `settings.nodes` machines.

    Rank 0 saves the adapter and metrics to a work folder; this process loads them and returns
    (peft_model, metrics) like a single-process run. `settings.launcher_args` are passed to torchrun
    (e.g. `--nnodes=2 --node_rank=0 --rdzv_endpoint=host:29400` for several machines).
    """
    work = Path(tempfile.mkdtemp(prefix="vernacular-ddp-"))
    try:
        spec = {"base_model": base_model, "features_index": features_index, "settings": asdict(settings),
                "lora": asdict(lora), "checkpoint_root": str(checkpoint_root), "stop_after_steps": stop_after_steps,
                "augmentation": asdict(augmentation) if augmentation else None,
                "decoding": asdict(decoding) if decoding else None, "normaliser": normaliser,
                "out_dir": str(work / "out")}
        (work / "spec.json").write_text(json.dumps(spec, default=str))
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={settings.processes_per_node}",
                   f"--nnodes={settings.nodes}",
                   *settings.launcher_args]
        if not any(a.startswith(("--master_port", "--rdzv")) for a in settings.launcher_args):
            command.append(f"--master_port={_free_port()}")
        command += ["-m", "vernacular.training.distributed", str(work / "spec.json")]
        log.info("launching distributed training: %s", " ".join(command))
        env = {**os.environ, "OMP_NUM_THREADS": str(settings.num_threads or 1)}
        result = subprocess.run(command, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"distributed training failed (exit {result.returncode}); see the ranks' output above. "
                               f"Command: {' '.join(command)}")
        metrics = json.loads((work / "out" / "metrics.json").read_text())
        model, _ = load_adapter(base_model, work / "out" / "adapter", device=pick_device(settings.device), merge=False)
        for p in model.parameters():
            p.requires_grad_(False)
        return model, metrics
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    settings = TrainSettings(**spec["settings"])
    augmentation = AugmentSettings(**spec["augmentation"]) if spec["augmentation"] else None
    decoding = DecodeSettings(**spec["decoding"]) if spec["decoding"] else None
    model, metrics = train_in_process(spec["base_model"], spec["features_index"], settings,
                                      LoraSettings(**spec["lora"]), spec["checkpoint_root"], spec["stop_after_steps"],
                                      augmentation, decoding, spec["normaliser"])
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
