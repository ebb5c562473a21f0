"""Pipeline benchmarks: a rerun with unchanged inputs, and peak memory as the corpus grows.

    python -m benchmarks.pipeline rerun    # full run, then a rerun: per-stage time, what was redone
    python -m benchmarks.pipeline memory   # ingestion + features + a few training steps at 1x/4x/10x
    python -m benchmarks.pipeline all      # both

`rerun` runs a vertical (radiology by default, on a small synthetic corpus) twice through a Kedro
session in a scratch copy of the project (its own `data/`; the converted base model is shared with
the repo's `data/06_models/base`), times every node, and lists which cached files the rerun wrote
again. `memory` tiles a base set of audio files (speechocean762-mini when present, else synthetic
speech) into manifests of 1x/4x/10x the rows with distinct utterance ids and runs each size in its
own process, reporting wall time and the process's peak RSS (ru_maxrss) after each stage.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.corpus import benchmark_corpus
from vernacular.common.fileio import write_new_file

REPO = Path(__file__).resolve().parents[1]
RESULT_MARKER = "BENCHMARK_RESULT "
CACHE_FOLDERS = {  # scratch-project paths of the content-addressed caches (relative to its root)
    "synthetic audio": "data/01_raw/{v}/synthetic/audio",
    "16 kHz audio copies": "data/02_intermediate/{v}/audio",
    "feature cache": "data/04_feature/{v}/cache",
    "training checkpoints": "data/06_models/{v}/checkpoints",
    "forgetting control audio": "data/01_raw/{v}/control",
}


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def vertical_parameters(vertical: str, conf: Path = REPO / "conf" / "base" / "parameters.yml") -> dict:
    """The vertical's block of the project's parameters (YAML anchors resolved)."""
    import yaml

    params = yaml.safe_load(conf.read_text())
    if vertical not in params:
        raise ValueError(f"{conf}: no `{vertical}` block; verticals there: "
                         f"{[k for k, v in params.items() if isinstance(v, dict) and not k.startswith('_')]}")
    return params[vertical]


def _child(kind: str, job: dict, timeout: float | None = None) -> dict:
    """Run `kind` (run_pipeline / memory_size) in a fresh interpreter; return the JSON it prints."""
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "KEDRO_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.pipeline", "--child", kind, json.dumps(job)],
                          stdout=subprocess.PIPE, text=True, env=env, cwd=job.get("cwd"), timeout=timeout)
    lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_MARKER)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark child {kind} failed (exit {proc.returncode}); its log is above")
    return json.loads(lines[-1][len(RESULT_MARKER):])


# ---------------------------------------------------------------- rerun ----------------------------------------


def scratch_project(root: Path) -> Path:
    """A copy of the project's conf/ and pyproject.toml in `root` (its own data/), runnable by Kedro."""
    root.mkdir(parents=True, exist_ok=False)
    shutil.copytree(REPO / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir(exist_ok=True)
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    (root / "src").mkdir()  # bootstrap_project checks that it exists; the package itself is installed
    return root


def small_run_params(vertical: str, sentences: int, base_cache: str) -> dict:
    """Runtime parameters that keep a whole run of `vertical` to a few minutes on 2 CPU cores."""
    return {vertical: {
        "source": {"max_sentences": sentences},
        "training": {"epochs": 1, "progress": False},
        "evaluation": {"latency_segments": 1, "latency_repeats": 1, "progress": False,
                       "bootstrap": {"n_resamples": 200}, "forgetting": {"sentences": 8}},
    }}


def stage_of_nodes(vertical: str) -> dict[str, str]:
    from vernacular.pipeline_registry import stage_pipelines

    return {f"{vertical}.{node.name}": stage for stage, pipe in stage_pipelines().items() for node in pipe.nodes}


def run_pipeline_timed(project: Path, pipeline_name: str, runtime_params: dict) -> dict:
    """Run `pipeline_name` in a Kedro session of `project`; return wall time, per-node time and peak RSS."""
    from kedro.framework.hooks import hook_impl
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    class NodeTimer:
        def __init__(self):
            self.started: dict[str, float] = {}
            self.nodes: dict[str, dict] = {}

        @hook_impl
        def before_node_run(self, node):
            self.started[node.name] = time.perf_counter()

        @hook_impl
        def after_node_run(self, node):
            self.nodes[node.name] = {"seconds": time.perf_counter() - self.started[node.name],
                                     "peak_rss_bytes": peak_rss_bytes()}

    timer = NodeTimer()
    previous = Path.cwd()
    os.chdir(project)  # the catalog's relative paths resolve against the working directory
    try:
        bootstrap_project(project)
        started = time.perf_counter()
        with KedroSession.create(project_path=project, runtime_params=runtime_params) as session:
            session._hook_manager.register(timer)  # no public way to add a hook to a created session
            session.run(pipeline_name=pipeline_name)
        wall = time.perf_counter() - started
    finally:
        os.chdir(previous)
    return {"wall_seconds": wall, "nodes": timer.nodes, "peak_rss_bytes": peak_rss_bytes()}


def snapshot(project: Path, vertical: str) -> dict[str, dict[str, int]]:
    """mtime_ns of every file in each cache folder of the scratch project."""
    out = {}
    for label, pattern in CACHE_FOLDERS.items():
        folder = project / pattern.format(v=vertical)
        out[label] = {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} \
            if folder.is_dir() else {}
    return out


def rewritten(before: dict, after: dict) -> dict[str, dict]:
    """Per cache folder: files kept as they were, rewritten (new mtime) and new."""
    out = {}
    for label in before:
        old, new = before[label], after.get(label, {})
        out[label] = {"files_before": len(old), "unchanged": sum(1 for k, v in new.items() if old.get(k) == v),
                      "rewritten": sum(1 for k, v in new.items() if k in old and old[k] != v),
                      "new": sum(1 for k in new if k not in old)}
    return out


def _latest_json(folder: Path) -> dict | None:
    versions = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return json.loads((versions[-1] / folder.name).read_text()) if versions else None


def rerun_benchmark(vertical: str, sentences: int, work_dir: Path, base_cache: Path,
                    in_process: bool = False) -> dict:
    """Full run then rerun of `vertical` in a fresh scratch project; per-stage times and cache reuse."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    project = scratch_project(work_dir / f"rerun-{vertical}-{stamp}")
    params = small_run_params(vertical, sentences, str(base_cache.resolve()))
    runs, snapshots = [], [snapshot(project, vertical)]
    for _ in ("full", "rerun"):
        if in_process:
            result = run_pipeline_timed(project, vertical, params)
        else:
            result = _child("run_pipeline", {"project": str(project), "pipeline": vertical, "params": params})
        runs.append(result)
        snapshots.append(snapshot(project, vertical))
    stages = stage_of_nodes(vertical)
    per_stage = []
    for result in runs:
        sums: dict[str, float] = {}
        for name, node in result["nodes"].items():
            sums[stages.get(name, name)] = sums.get(stages.get(name, name), 0.0) + node["seconds"]
        per_stage.append(sums)
    features = _latest_json(project / f"data/04_feature/{vertical}/features_index.json")
    training = _latest_json(project / f"data/07_model_output/{vertical}/training_metrics.json")
    manifest_rows = features["counts"] if features else None
    return {"project": str(project), "vertical": vertical, "sentences": sentences, "runs": runs,
            "per_stage": per_stage, "full_run_files": rewritten(snapshots[0], snapshots[1]),
            "rerun_files": rewritten(snapshots[1], snapshots[2]),
            "rerun_features_reused": features.get("reused") if features else None,
            "rerun_training_resumed_from": training.get("resumed_from") if training else None,
            "training_steps": training.get("steps") if training else None, "feature_counts": manifest_rows}


def format_rerun(result: dict) -> str:
    full, rerun = result["per_stage"]
    lines = ["| stage | full run | rerun |", "|---|---|---|"]
    for stage in dict.fromkeys([*full, *rerun]):
        lines.append(f"| {stage} | {full.get(stage, 0):.1f} s | {rerun.get(stage, 0):.1f} s |")
    walls = [r["wall_seconds"] for r in result["runs"]]
    lines.append(f"| **session total** (incl. Kedro start-up) | {walls[0]:.1f} s | {walls[1]:.1f} s |")
    lines.append(f"| peak RSS | {_mib(result['runs'][0]['peak_rss_bytes'])} | {_mib(result['runs'][1]['peak_rss_bytes'])} |")
    lines += ["", "| cache (rerun) | files | unchanged | rewritten | new |", "|---|---|---|---|---|"]
    for label, c in result["rerun_files"].items():
        lines.append(f"| {label} | {c['files_before']} | {c['unchanged']} | {c['rewritten']} | {c['new']} |")
    lines += ["", f"features_index.reused on the rerun: {result['rerun_features_reused']}; training resumed from "
                  f"{result['rerun_training_resumed_from']} ({result['training_steps']} steps in all); "
                  f"feature rows {result['feature_counts']}"]
    return "\n".join(lines)


# ---------------------------------------------------------------- memory ---------------------------------------


def base_audio_set(n: int, work_dir: Path, data: str = "auto") -> tuple[list[dict], Path, str]:
    """`n` distinct (utterance_id, audio_path, text, speaker) rows to tile, their common root, and a description."""
    from vernacular.data.manifest import default_root, read_manifest, resolve_rows

    path, description = benchmark_corpus(data, n, work_dir)
    raw, _ = read_manifest(path)
    root = default_root(path).resolve()
    rows = resolve_rows(raw, root).sort_values("utterance_id").head(n)
    if len(rows) < n:
        raise ValueError(f"{path}: {len(rows)} utterances, fewer than the {n} asked for (--base-utterances)")
    keep = ["utterance_id", "audio_path", "text", "speaker"]
    return rows[keep].to_dict("records"), root, description


def tile_manifest(rows: list[dict], times: int, path: Path) -> Path:
    """A CSV manifest repeating `rows` `times` times with distinct utterance ids (`<id>-x<k>`)."""
    import pandas as pd

    tiled = [{**row, "utterance_id": f"{row['utterance_id']}-x{k}"} for k in range(times) for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pd.DataFrame(tiled).to_csv(tmp, index=False)
    tmp.replace(path)
    return path


def memory_size_run(manifest: str, root: str, storage_dir: str, vertical: str, train_steps: int,
                    base_model: str, base_cache: str, batch_size: int | None = None) -> dict:
    """Ingestion, features and `train_steps` training steps on `manifest` with the vertical's settings.

    Calls the Kedro node functions directly. Returns per-stage wall time and the process's peak RSS
    after each stage (ru_maxrss is a high-water mark: a stage's value includes everything before it).
    """
    from vernacular.common.storage import StorageLayout
    from vernacular.models.loading import resolve_base_model
    from vernacular.pipelines.features.nodes import build_features
    from vernacular.pipelines.ingestion.nodes import load_source, split_corpus, validate_corpus
    from vernacular.training.settings import LoraSettings, TrainSettings
    from vernacular.training.train import train_lora_adapter

    params = vertical_parameters(vertical)
    storage = {"root": str(storage_dir), "suffix": ""}
    split = {**params["split"], "by": "utterance", "test_only_speakers": []}
    stages, started = [], time.perf_counter()

    def mark(stage: str, t0: float, **extra) -> float:
        now = time.perf_counter()
        stages.append({"stage": stage, "seconds": now - t0, "peak_rss_bytes": peak_rss_bytes(), **extra})
        return now

    t = time.perf_counter()
    raw = load_source({"kind": "manifest", "path": manifest, "format": "csv", "root": root}, split, storage, vertical)
    clean, quarantine = validate_corpus(raw, params["audio_limits"], storage, vertical)
    table, report, summary = split_corpus(clean, quarantine, raw, split)
    t = mark("ingestion", t, rows=len(table), audio_hours=float(table["duration"].sum() / 3600),
             quarantined=len(report))
    base = resolve_base_model(base_model, base_cache)
    index = build_features(table, base, params["features"], storage, vertical)
    cache_bytes = sum(p.stat().st_size for p in Path(index["path"]).glob("*.pt"))
    t = mark("features", t, feature_rows=index["counts"], cache_bytes=cache_bytes)
    training = {**params["training"], "max_steps": train_steps, "progress": False, "device": "cpu",
                "checkpoint_every_steps": 10**9, "validation_wer": False}  # decoding is not what is measured
    if batch_size:
        training["batch_size"] = batch_size
    training = {k: v for k, v in training.items() if k in TrainSettings.__dataclass_fields__}
    _, metrics = train_lora_adapter(base, index, TrainSettings.from_dict(training), LoraSettings.from_dict(params["adapter"]),
                                    StorageLayout.for_vertical(vertical, storage).checkpoint_dir)
    mark("training", t, steps=metrics["steps"])
    return {"stages": stages, "wall_seconds": time.perf_counter() - started, "peak_rss_bytes": peak_rss_bytes()}


def memory_benchmark(sizes: list[int], base_utterances: int, train_steps: int, work_dir: Path, vertical: str,
                     base_model: str, base_cache: Path, data: str = "auto", in_process: bool = False,
                     batch_size: int | None = None) -> dict:
    """Run ingestion + features + a few training steps at each corpus size, each in its own process."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    root_dir = work_dir / f"memory-{stamp}"
    rows, root, description = base_audio_set(base_utterances, work_dir, data)
    results = []
    for times in sizes:
        job = {"manifest": str(tile_manifest(rows, times, root_dir / f"x{times}" / "manifest.csv")), "root": str(root),
               "storage_dir": str(root_dir / f"x{times}" / "storage"), "vertical": vertical,
               "train_steps": train_steps, "base_model": base_model, "base_cache": str(base_cache.resolve()),
               "batch_size": batch_size}
        result = memory_size_run(**job) if in_process else _child("memory_size", job)
        results.append({"times": times, **result})
    return {"data": description, "base_utterances": base_utterances, "folder": str(root_dir), "sizes": results}


def format_memory(result: dict) -> str:
    lines = ["| size | utterances | audio hours | features on disk | wall time | peak RSS after ingestion | "
             "after features | after training steps |", "|---|---|---|---|---|---|---|---|"]
    for r in result["sizes"]:
        s = {x["stage"]: x for x in r["stages"]}
        lines.append(f"| {r['times']}x | {s['ingestion']['rows']} | {s['ingestion']['audio_hours']:.3f} | "
                     f"{_mib(s['features']['cache_bytes'])} | {r['wall_seconds']:.0f} s "
                     f"({s['ingestion']['seconds']:.0f} + {s['features']['seconds']:.0f} + "
                     f"{s['training']['seconds']:.0f}) | {_mib(s['ingestion']['peak_rss_bytes'])} | "
                     f"{_mib(s['features']['peak_rss_bytes'])} | {_mib(s['training']['peak_rss_bytes'])} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI ------------------------------------------


def _hardware() -> str:
    import torch

    model = "unknown CPU"
    try:
        model = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                     if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", choices=("rerun", "memory", "all"), default="all")
    parser.add_argument("--vertical", default="radiology")
    parser.add_argument("--sentences", type=int, default=40, help="rerun: synthetic sentences in the corpus")
    parser.add_argument("--sizes", default="1,4,10", help="memory: corpus sizes as multiples of the base set")
    parser.add_argument("--base-utterances", type=int, default=100, help="memory: utterances in the 1x set")
    parser.add_argument("--train-steps", type=int, default=2, help="memory: training steps at each size")
    parser.add_argument("--data", default="auto", help="memory: auto | synthetic | a corpus folder or manifest")
    parser.add_argument("--base", default="embedded:whisper-tiny.en", help="memory: base model")
    parser.add_argument("--base-cache", default=str(REPO / "data" / "06_models" / "base"),
                        help="where the embedded model is converted (shared with the project; reused)")
    parser.add_argument("--work-dir", default=str(REPO / "data" / "benchmarks" / "pipeline"),
                        help="scratch folder; every invocation makes a new timestamped subfolder")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file (a new file)")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")

    if args.child:
        kind, job = args.child[0], json.loads(args.child[1])
        if kind == "run_pipeline":
            result = run_pipeline_timed(Path(job["project"]), job["pipeline"], job["params"])
        elif kind == "memory_size":
            result = memory_size_run(**job)
        else:
            parser.error(f"unknown child {kind}")
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return 0

    if args.json and Path(args.json).exists():
        parser.error(f"--json {args.json}: the file exists; name a new file (results are never overwritten)")
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    base_cache = Path(args.base_cache)
    out: dict = {"hardware": _hardware()}
    print(f"hardware: {out['hardware']}", flush=True)
    if args.what in ("rerun", "all"):
        out["rerun"] = rerun_benchmark(args.vertical, args.sentences, work_dir, base_cache)
        print(f"\n## rerun: {args.vertical}, {args.sentences} synthetic sentences ({out['rerun']['project']})\n")
        print(format_rerun(out["rerun"]), flush=True)
    if args.what in ("memory", "all"):
        out["memory"] = memory_benchmark(sizes, args.base_utterances, args.train_steps, work_dir, args.vertical,
                                         args.base, base_cache, args.data)
        print(f"\n## memory: {out['memory']['data']}, 1x = {args.base_utterances} utterances tiled; "
              f"{args.train_steps} training steps; each size in its own process\n")
        print(format_memory(out["memory"]), flush=True)
    if args.json:
        write_new_file(Path(args.json), json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
