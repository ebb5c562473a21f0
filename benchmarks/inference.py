"""Inference speed: seconds per 30-s segment and real-time factor, six ways of running one model.

    (a) transformers' "automatic-speech-recognition" pipeline, base model
    (b) Vernacular base: `vernacular.serving.decoding.transcribe` (batched greedy generate)
    (c) base + LoRA adapter, unmerged (PeftModel)
    (d) the adapter merged into the weights (`vernacular export`'s checkpoint)
    (e) faster-whisper on the CTranslate2 export of the base model
    (f) faster-whisper on the CTranslate2 export of the merged adapter

All see the same segments (speech clips laid end to end into ~28-s segments by
`transcribe.build_segments`), decode greedily with the same output cap, at each batch size
(faster-whisper: `WhisperModel.transcribe` at batch 1, `BatchedInferencePipeline` above, with
each segment its own clip). Every system is warmed up on one batch first (not timed). Ratios are
against (b) at the same batch size. Texts are not post-processed (Vernacular's repeat trimming is
off), so "words out" shows how much each system decoded: a batch decodes as long as its longest
member, and a segment on which a model loops runs to the output cap. Only transformers, peft,
ctranslate2 and faster-whisper are used, so it also runs on a GPU machine without Kedro:

    python -m benchmarks.inference --segments 8 --device auto
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vernacular.data.audio import TARGET_SAMPLE_RATE
from vernacular.models.families import DecodeSettings
from vernacular.models.families.whisper import max_new_tokens_for
from vernacular.serving.decoding import build_segments, transcribe

DEFAULT_DATA = "../shared/data/speechocean762-mini/test"
SEGMENT_SECONDS = 28.0
LABELS = {
    "a": "transformers pipeline, base",
    "b": "Vernacular base",
    "c": "adapter, unmerged",
    "d": "adapter, merged",
    "e": "faster-whisper, base",
    "f": "faster-whisper, merged adapter",
}
# Whose transcripts each system should reproduce (a sanity check that all do the same work).
TEXT_REFERENCE = {"a": "b", "b": "b", "e": "b", "c": "d", "d": "d", "f": "d"}


# --- data --------------------------------------------------------------------------------------

def load_clips(data: str | os.PathLike, seconds_needed: float) -> tuple[list[np.ndarray], str]:
    """16 kHz clips from a Kaldi data dir (wav.scp) or a folder of audio files, in id order, until
    `seconds_needed` of audio; without `data`, synthetic espeak-ng speech."""
    from vernacular.data.audio import read_audio

    root = Path(data) if data else None
    if root is None:
        return _synthetic_clips(seconds_needed), "synthetic espeak-ng speech (general sentences, voice en-us)"
    if (root / "wav.scp").is_file():
        entries = []
        for number, line in enumerate((root / "wav.scp").read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2 or parts[1].rstrip().endswith("|"):
                raise ValueError(f"{root / 'wav.scp'}:{number}: expected '<utterance-id> <audio path>' "
                                 "(command pipes are not supported: convert them to files)")
            entries.append((parts[0], root / parts[1].strip()))
        paths = [path for _, path in sorted(entries)]
    elif root.is_dir():
        paths = sorted(p for p in root.iterdir() if p.suffix.lower() in (".wav", ".flac", ".ogg", ".mp3"))
    else:
        raise FileNotFoundError(f"{root}: no such data folder; pass --data with a Kaldi data dir (wav.scp) or a "
                                "folder of audio files, or --data '' for synthetic speech")
    clips, total = [], 0.0
    for path in paths:
        audio = read_audio(path)
        clips.append(audio)
        total += len(audio) / TARGET_SAMPLE_RATE
        if total >= seconds_needed:
            break
    if not clips:
        raise ValueError(f"{root}: no audio files (.wav, .flac, .ogg, .mp3) found")
    return clips, f"{root} ({len(clips)} clips, first in id order)"


def _synthetic_clips(seconds_needed: float) -> list[np.ndarray]:
    import importlib.resources

    from vernacular.data.synth import synthesize

    text = (importlib.resources.files("vernacular.data.corpora") / "general.txt").read_text(encoding="utf-8")
    sentences = [line.strip() for line in text.splitlines() if line.strip()]
    clips, total = [], 0.0
    while total < seconds_needed:
        clip = synthesize(sentences[len(clips) % len(sentences)], "en-us")
        clips.append(clip)
        total += len(clip) / TARGET_SAMPLE_RATE
    return clips


# --- systems -----------------------------------------------------------------------------------

def _cap(segments: list[np.ndarray]) -> int:
    """The output-length cap Vernacular's decoder uses for the longest segment."""
    return max_new_tokens_for(max(len(s) for s in segments) / TARGET_SAMPLE_RATE, DecodeSettings())


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


class PipelineSystem:
    """(a): transformers.pipeline("automatic-speech-recognition")."""

    def __init__(self, location: str, device: torch.device, dtype: torch.dtype):
        from transformers import pipeline

        with _quiet_transformers():
            self.asr = pipeline("automatic-speech-recognition", model=location, device=device, dtype=dtype)

    def run(self, segments: list[np.ndarray], batch_size: int) -> list[str]:
        inputs = [{"raw": s, "sampling_rate": TARGET_SAMPLE_RATE} for s in segments]
        with _quiet_transformers():
            out = self.asr(inputs, batch_size=batch_size,
                           generate_kwargs={"max_new_tokens": _cap(segments), "num_beams": 1})
        return [o["text"].strip() for o in out]


class TranscribeSystem:
    """(b), (c), (d): vernacular.serving.decoding on a loaded model."""

    def __init__(self, model, processor, device: torch.device):
        self.model, self.processor, self.device = model, processor, device

    def run(self, segments: list[np.ndarray], batch_size: int) -> list[str]:
        # max_ngram_repeats=0: keep loops in the text, so "words out" shows the decoding work done.
        settings = DecodeSettings(batch_size=batch_size, max_ngram_repeats=0)
        return transcribe(self.model, self.processor, segments, settings, self.device)


class FasterWhisperSystem:
    """(e), (f): faster-whisper on a CTranslate2 folder."""

    def __init__(self, ct2_dir: Path, device: torch.device, compute_type: str, threads: int):
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        self.model = WhisperModel(str(ct2_dir), device=device.type, device_index=device.index or 0,
                                  compute_type=compute_type, cpu_threads=threads, num_workers=1)
        self.batched = BatchedInferencePipeline(self.model)

    def run(self, segments: list[np.ndarray], batch_size: int) -> list[str]:
        # Greedy, one temperature (no fallback), no VAD, no silence skipping: what the others do.
        options = dict(beam_size=1, temperature=0.0, without_timestamps=True, vad_filter=False,
                       condition_on_previous_text=False, no_speech_threshold=None, log_prob_threshold=None,
                       compression_ratio_threshold=None, max_new_tokens=_cap(segments))
        if batch_size == 1:
            texts = []
            for segment in segments:
                pieces, _ = self.model.transcribe(segment, **options)
                texts.append("".join(p.text for p in pieces).strip())
            return texts
        # BatchedInferencePipeline batches the clips of one recording: lay the segments end to end
        # and name each as a clip, so every batch holds `batch_size` segments.
        starts = np.cumsum([0] + [len(s) for s in segments])
        clips = [{"start": starts[i] / TARGET_SAMPLE_RATE, "end": starts[i + 1] / TARGET_SAMPLE_RATE}
                 for i in range(len(segments))]
        pieces, _ = self.batched.transcribe(np.concatenate(segments), clip_timestamps=clips,
                                            batch_size=batch_size, **options)
        texts = [[] for _ in segments]
        for piece in pieces:
            index = int(np.searchsorted(starts, piece.start * TARGET_SAMPLE_RATE + 1, side="right")) - 1
            texts[min(max(index, 0), len(segments) - 1)].append(piece.text)
        return ["".join(t).strip() for t in texts]


# --- timing ------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_systems(systems: dict, segments: list[np.ndarray], batch_sizes: list[int], repeats: int,
                 device: torch.device, log=print) -> dict:
    """{(label, batch): {"seconds": [per pass], "texts": [...]}} or {"error": ...}; round-robin over
    systems within each repeat so a busy shared machine slows all of them alike."""
    results = {}
    for batch_size in batch_sizes:
        live = {}
        for label, system in systems.items():
            try:
                system.run(segments[:batch_size], batch_size)  # warm-up, not timed
                _sync(device)
                live[label] = system
                results[(label, batch_size)] = {"seconds": [], "texts": None}
            except Exception as exc:  # a system that cannot run here is reported, not fatal
                results[(label, batch_size)] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:200]}
                log(f"  ({label}) batch {batch_size}: skipped, {results[(label, batch_size)]['error']}")
        for _ in range(repeats):
            for label, system in live.items():
                started = time.perf_counter()
                texts = system.run(segments, batch_size)
                _sync(device)
                elapsed = time.perf_counter() - started
                entry = results[(label, batch_size)]
                entry["seconds"].append(elapsed)
                entry["texts"] = entry["texts"] or texts
                log(f"  ({label}) batch {batch_size}: {elapsed:.2f} s for {len(segments)} segments")
    return results


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w' ]+", " ", text.lower()).split())


def summarise(results: dict, segments: list[np.ndarray], batch_sizes: list[int], labels: list[str]) -> list[dict]:
    audio_seconds = sum(len(s) for s in segments) / TARGET_SAMPLE_RATE
    rows = []
    for batch_size in batch_sizes:
        seconds = {label: statistics.median(results[(label, batch_size)]["seconds"])
                   for label in labels if "seconds" in results.get((label, batch_size), {})}
        for label in labels:
            entry = results.get((label, batch_size), {"error": "not run"})
            row = {"system": label, "name": LABELS[label], "batch_size": batch_size}
            if "error" in entry:
                rows.append({**row, "error": entry["error"]})
                continue
            reference = results.get((TEXT_REFERENCE[label], batch_size), {}).get("texts")
            same = (sum(_norm(a) == _norm(b) for a, b in zip(entry["texts"], reference))
                    if reference else None)
            rows.append({**row, "seconds_total": seconds[label],
                         "seconds_per_30s": seconds[label] / audio_seconds * 30.0,
                         "real_time_factor": seconds[label] / audio_seconds,
                         "vs_b": seconds[label] / seconds["b"] if "b" in seconds else None,
                         "words": sum(len(t.split()) for t in entry["texts"]),
                         "same_text_as": TEXT_REFERENCE[label] if reference else None,
                         "same_text": same, "segments": len(segments), "passes": len(entry["seconds"]),
                         "texts": entry["texts"]})
    return rows


def render_table(rows: list[dict]) -> str:
    lines = ["| system | batch | s per 30-s segment | RTF | vs (b) | words out | same text as |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        name = f"({r['system']}) {r['name']}"
        if "error" in r:
            lines.append(f"| {name} | {r['batch_size']} | skipped: {r['error']} | | | | |")
            continue
        vs_b = f"{r['vs_b']:.2f}x" if r["vs_b"] is not None else "-"
        same = (f"({r['same_text_as']}) {r['same_text']}/{r['segments']}" if r["same_text_as"] != r["system"]
                else "(reference)") if r["same_text_as"] else "-"
        lines.append(f"| {name} | {r['batch_size']} | {r['seconds_per_30s']:.3f} | {r['real_time_factor']:.4f} "
                     f"| {vs_b} | {r['words']} | {same} |")
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inference",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help="Kaldi data dir (wav.scp) or folder of audio files (default: %(default)s; "
                             "'' for synthetic speech)")
    parser.add_argument("--segments", type=int, default=8, help="number of segments (default: %(default)s)")
    parser.add_argument("--segment-seconds", type=float, default=SEGMENT_SECONDS,
                        help="target segment length, at most 30 (default: %(default)s)")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes per system, median kept")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"),
                        help="transformers weights and CTranslate2 compute type; auto: float32 on CPU, "
                             "float16 on CUDA")
    parser.add_argument("--ct2-compute-type", default=None,
                        help="override faster-whisper's compute_type (e.g. int8, int8_float16)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch and CTranslate2")
    parser.add_argument("--base", default="embedded:whisper-tiny.en", help="base model (default: %(default)s)")
    parser.add_argument("--adapter", default=None, help="PEFT adapter directory (default: the newest version of "
                                                        "the project's radiology.adapter)")
    parser.add_argument("--env", default=None, help="Kedro environment whose catalog names the adapter")
    parser.add_argument("--systems", default="abcdef", help="which of a-f to run (default: %(default)s)")
    parser.add_argument("--work-dir", default=None, help="where the exports go (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here (a new file)")
    return parser


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from vernacular.models.export import export_adapter, export_ct2
    from vernacular.catalog_datasets import ProjectCatalog
    from vernacular.models.loading import AdapterNotFoundError, check_adapter_dir
    from vernacular.models.loading import device_name, load_model, model_location, pick_device, resolve_base_model

    if args.json and args.json.exists():
        print(f"{args.json} exists; results are never overwritten: choose a new --json path", file=sys.stderr)
        return 2
    wanted = [s for s in "abcdef" if s in args.systems]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    device = pick_device(args.device)
    dtype = _dtype(args.dtype, device)
    compute_type = args.ct2_compute_type or str(dtype).removeprefix("torch.")
    started = time.perf_counter()
    load_before = os.getloadavg()

    adapter = args.adapter
    if adapter is None and set(wanted) & set("cdf"):
        try:
            adapter = ProjectCatalog(args.env).latest_adapter("radiology")
        except AdapterNotFoundError as exc:
            print(f"no adapter, skipping (c), (d), (f): {exc}", file=sys.stderr)
    if adapter is None:
        wanted = [s for s in wanted if s not in "cdf"]
    else:
        check_adapter_dir(adapter)

    if not 1 <= args.segment_seconds <= 30:
        print("--segment-seconds must be between 1 and 30 (Whisper's window)", file=sys.stderr)
        return 2
    # whole clips are packed, so each segment falls short of the target by up to one clip
    clips, source = load_clips(args.data, (args.segments + 2) * args.segment_seconds)
    segments = build_segments(clips, target_seconds=args.segment_seconds, max_segments=args.segments)
    if len(segments) < args.segments:
        print(f"only {len(segments)} segments could be built from {source} (not enough audio)", file=sys.stderr)
    cache = ProjectCatalog(args.env).storage("radiology").base_model_cache_dir if args.base.startswith("embedded:") \
        else None  # only the embedded model is converted into a cache
    base = resolve_base_model(args.base, cache)

    with contextlib.ExitStack() as stack:
        work = Path(args.work_dir) if args.work_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(dir=work, prefix="inference-"))
        base_dir = base.get("local_dir")
        if base_dir is None:  # a hub id: save a local copy for the CTranslate2 converter
            model, processor = load_model(base)[:2]
            base_dir = str(run_dir / "base")
            model.save_pretrained(base_dir)
            processor.save_pretrained(base_dir)
        print(f"preparing models in {run_dir} ...", file=sys.stderr)
        systems = {}
        if "a" in wanted:
            systems["a"] = PipelineSystem(model_location(base), device, dtype)
        if "b" in wanted:
            systems["b"] = TranscribeSystem(*load_model(base, device=device, dtype=dtype)[:2], device)
        if "c" in wanted:
            from peft import PeftModel

            model, processor = load_model(base, device="cpu")[:2]
            model = PeftModel.from_pretrained(model, adapter).to(device, dtype).eval()
            systems["c"] = TranscribeSystem(model, processor, device)
        if set(wanted) & set("df"):
            merged_dir = run_dir / "adapter-export"
            ct2_ok = "f" in wanted and _has_ct2()
            export_adapter(base, adapter, merged_dir, ct2=ct2_ok, quantization="float32")
            if "d" in wanted:
                local = str(merged_dir / "transformers")
                systems["d"] = TranscribeSystem(*load_model({"name_or_path": local, "local_dir": local},
                                                              device=device, dtype=dtype)[:2], device)
        for label, make in (("e", lambda: export_ct2(base_dir, run_dir / "base-ct2")),
                            ("f", lambda: merged_dir / "ct2")):
            if label in wanted:
                try:
                    systems[label] = FasterWhisperSystem(make(), device, compute_type, threads)
                except Exception as exc:
                    print(f"({label}) skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
        systems = {label: systems[label] for label in wanted if label in systems}
        print(f"timing {list(systems)} on {len(segments)} segments, batch sizes {batch_sizes} ...", file=sys.stderr)
        results = time_systems(systems, segments, batch_sizes, args.repeats, device,
                               log=lambda m: print(m, file=sys.stderr))
    for label in wanted:
        for batch_size in batch_sizes:
            results.setdefault((label, batch_size), {"error": "could not be loaded (see log)"})

    rows = summarise(results, segments, batch_sizes, wanted)
    audio = sum(len(s) for s in segments) / TARGET_SAMPLE_RATE
    header = {
        "device": device_name(device), "dtype": str(dtype).removeprefix("torch."), "ct2_compute_type": compute_type,
        "threads": threads, "platform": platform.platform(), "processor": _cpu_model(),
        "data": source, "segments": len(segments), "mean_segment_seconds": audio / len(segments),
        "batch_sizes": batch_sizes, "repeats": args.repeats, "base": base["name_or_path"], "adapter": adapter,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "wall_seconds": time.perf_counter() - started, "versions": _versions(),
    }
    print(f"device: {header['device']} ({header['processor']}), dtype {header['dtype']}, "
          f"CTranslate2 compute type {compute_type}")
    print(f"data: {source}; {len(segments)} segments, mean {header['mean_segment_seconds']:.1f} s; "
          f"batch sizes {batch_sizes}; {args.repeats} timed pass(es) per system after a warm-up batch")
    print(f"base: {base['name_or_path']}; adapter: {adapter or 'none'}")
    print(f"load average before/after: {load_before[0]:.2f} / {header['load_average_after'][0]:.2f}; "
          f"wall time {header['wall_seconds']:.0f} s; " + ", ".join(f"{k} {v}" for k, v in header["versions"].items()))
    print()
    print(render_table(rows))
    merge = _merge_ratios(rows)
    if merge:
        # (d) vs (b) also differs in work when the adapter changes output lengths (a batch decodes
        # as long as its longest member); (c) and (d) give the same transcripts.
        print("\nunmerged / merged adapter, (c)/(d): " + ", ".join(f"batch {b}: {r:.2f}x" for b, r in merge))
    if args.json:
        payload = json.dumps({"header": header, "rows": rows}, indent=2, ensure_ascii=False) + "\n"
        with open(args.json, "x", encoding="utf-8") as handle:  # "x": never overwrite
            handle.write(payload)
    return 0


def _merge_ratios(rows: list[dict]) -> list[tuple[int, float]]:
    seconds = {(r["system"], r["batch_size"]): r["seconds_total"] for r in rows if "seconds_total" in r}
    return [(b, seconds[("c", b)] / seconds[("d", b)]) for (label, b) in seconds
            if label == "d" and ("c", b) in seconds]


def _has_ct2() -> bool:
    try:
        import ctranslate2  # noqa: F401
        import faster_whisper  # noqa: F401
    except ImportError as exc:
        print(f"(f) skipped: {exc} (pip install faster-whisper)", file=sys.stderr)
        return False
    return True


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _versions() -> dict:
    import importlib.metadata

    out = {}
    for name in ("torch", "transformers", "peft", "ctranslate2", "faster-whisper"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
