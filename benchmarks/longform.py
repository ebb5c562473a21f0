"""Long-form batch transcription, three ways, same audio, same threads:

    (a) `vernacular transcribe` as a user runs it (CLI subprocess; the CTranslate2 int8 backend)
    (b) faster-whisper int8 called directly on the same export (`BatchedInferencePipeline` with its VAD)
    (c) transformers' "automatic-speech-recognition" pipeline with 30-s chunking, on the merged adapter (fp32)

The long files are real utterances (a Kaldi data dir, default speechocean762-mini test) laid end to
end with 0.5-s pauses into recordings of 1-5 minutes; each file's reference is the utterances'
transcripts joined. Prints seconds, real-time factor and WER (Whisper English normaliser) of each
system and the ratios (a)/(b) and (c)/(a). Run from the project folder after a training run:

    python -m benchmarks.longform --vertical radiology --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = "../shared/data/speechocean762-mini/test"
LENGTHS_S = (60.0, 120.0, 180.0, 300.0)
GAP_S = 0.5


def build_long_files(data: Path, out: Path, lengths=LENGTHS_S) -> list[dict]:
    """WAVs of utterances laid end to end (lengths cycle through `lengths`); [{"path", "seconds", "text"}]."""
    from vernacular.data.audio import TARGET_SAMPLE_RATE, read_audio, write_wav
    from vernacular.data.manifest import read_manifest, resolve_rows

    rows, _ = read_manifest(data, "kaldi")
    rows = resolve_rows(rows, data).sort_values("utterance_id")
    gap = np.zeros(int(GAP_S * TARGET_SAMPLE_RATE), dtype=np.float32)
    files, pieces, texts, seconds, target = [], [], [], 0.0, 0
    for row in rows.to_dict("records"):
        audio = read_audio(row["audio_path"])
        pieces += [audio, gap]
        texts.append(str(row["text"]))
        seconds += len(audio) / TARGET_SAMPLE_RATE + GAP_S
        if seconds >= lengths[target % len(lengths)]:
            path = write_wav(out / f"long-{len(files):02d}.wav", np.concatenate(pieces))
            files.append({"path": str(path), "seconds": seconds, "text": " ".join(texts)})
            pieces, texts, seconds, target = [], [], 0.0, target + 1
    return files


def wer(references: list[str], hypotheses: list[str]) -> float:
    from vernacular.evaluation.metrics import error_rates, normalise

    return error_rates([normalise(r, "whisper_english") for r in references],
                       [normalise(h, "whisper_english") for h in hypotheses])["wer"]


def run_cli(files: list[dict], vertical: str, adapter: str | None, threads: int, out: Path) -> tuple[float, list[str]]:
    command = [sys.executable, "-m", "vernacular", "transcribe", *[f["path"] for f in files], "--vertical", vertical,
               "--output", str(out), "--no-progress"] + (["--adapter", adapter] if adapter else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    records = {}
    for line in next(out.rglob("*.jsonl")).read_text().splitlines():
        record = json.loads(line)
        records[Path(record["path"]).name] = record["text"] or ""
    return seconds, [records[Path(f["path"]).name] for f in files]


def run_faster_whisper(files: list[dict], model_dir: str, threads: int) -> tuple[float, float, list[str]]:
    """(load seconds, transcribe seconds, texts) with the project's CTranslate2 settings, called directly."""
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from vernacular.data.audio import read_audio

    started = time.perf_counter()
    model = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=threads)
    pipeline = BatchedInferencePipeline(model)
    load = time.perf_counter() - started
    texts, started = [], time.perf_counter()
    for f in files:
        segments, _ = pipeline.transcribe(read_audio(f["path"]), language="en", beam_size=1, batch_size=8,
                                          vad_filter=True, condition_on_previous_text=False)
        texts.append(" ".join(s.text.strip() for s in segments))
    return load, time.perf_counter() - started, texts


def run_transformers(files: list[dict], merged_dir: str, threads: int) -> tuple[float, float, list[str]]:
    import torch
    from transformers import pipeline

    from vernacular.data.audio import read_audio

    torch.set_num_threads(threads)
    started = time.perf_counter()
    asr = pipeline("automatic-speech-recognition", model=merged_dir, device="cpu", chunk_length_s=30,
                   batch_size=8)
    load = time.perf_counter() - started
    texts, started = [], time.perf_counter()
    for f in files:
        texts.append(asr(read_audio(f["path"]))["text"].strip())
    return load, time.perf_counter() - started, texts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, type=Path, help="Kaldi data dir (default: %(default)s)")
    parser.add_argument("--vertical", default="radiology")
    parser.add_argument("--adapter", help="adapter directory (default: the vertical's latest)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-files", type=int, default=None)
    parser.add_argument("--skip-transformers", action="store_true", help="leave (c) out (the slow one)")
    args = parser.parse_args(argv)
    if not (args.data / "wav.scp").is_file():
        print(f"{args.data}: not a Kaldi data dir (wav.scp); pass --data", file=sys.stderr)
        return 2
    from vernacular.catalog_datasets import ProjectCatalog
    from vernacular.models.export import export_adapter
    from vernacular.serving.batch import BatchSettings, load_transcriber

    catalog = ProjectCatalog()
    adapter = args.adapter or catalog.latest_adapter(args.vertical)
    base = catalog.base_model(args.vertical)
    with tempfile.TemporaryDirectory(prefix="longform-") as tmp:
        tmp = Path(tmp)
        files = build_long_files(args.data, tmp / "audio")[: args.max_files]
        audio_s = sum(f["seconds"] for f in files)
        refs = [f["text"] for f in files]
        lengths = ", ".join(f"{f['seconds']:.0f}" for f in files)
        print(f"data: {len(files)} files of {lengths} s "
              f"({audio_s / 60:.1f} min) from {args.data}; adapter {adapter}")
        # the export the CLI serves (made once per adapter version, int8 on CPU) is (b)'s model too
        from vernacular.serving.ct2 import ct2_model_dir, export_quantization

        ct2_cache = catalog.storage(args.vertical).ct2_cache_dir
        load_transcriber(base, adapter, BatchSettings(device="cpu"), ct2_cache)
        model_dir = str(ct2_model_dir(base, adapter, ct2_cache, export_quantization("int8")))
        merged = export_adapter(base, adapter, tmp / "merged")["paths"]["transformers"]

        a_wall, a_texts = run_cli(files, args.vertical, adapter, args.threads, tmp / "cli")
        a_records = [json.loads(line) for line in next((tmp / "cli").rglob("*.jsonl")).read_text().splitlines()]
        a_decode = sum(r["seconds"] or 0 for r in a_records)
        b_load, b_decode, b_texts = run_faster_whisper(files, model_dir, args.threads)
        c = None if args.skip_transformers else run_transformers(files, merged, args.threads)

    rows = [("(a) vernacular transcribe (CLI, CT2 int8)", a_decode, a_wall, wer(refs, a_texts)),
            ("(b) faster-whisper int8, direct", b_decode, b_decode + b_load, wer(refs, b_texts))]
    if c is not None:
        rows.append(("(c) transformers pipeline, chunked, fp32", c[1], c[1] + c[0], wer(refs, c[2])))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads; "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| system | transcribe s | RTF | wall s (with load) | WER |")
    print("|---|---|---|---|---|")
    for name, decode, wall, w in rows:
        print(f"| {name} | {decode:.1f} | {decode / audio_s:.4f} | {wall:.1f} | {100 * w:.1f}% |")
    print(f"(a)/(b) transcribe time: {rows[0][1] / rows[1][1]:.2f}x; WER (a) - (b): {100 * (rows[0][3] - rows[1][3]):+.1f} pts")
    if c is not None:
        print(f"(c)/(a): {rows[2][1] / rows[0][1]:.2f}x; WER (a) - (c): {100 * (rows[0][3] - rows[2][3]):+.1f} pts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
