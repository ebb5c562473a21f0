"""Batch transcription of an inbox folder with an adapter: incremental, resumable, long-form.

Results live in `results_dir/<run id>/results.jsonl` (one JSON line per file) with
`summary.json` and `summary.md` beside it when the run finishes. The results files are also the
checkpoint: a file counts as done once its line is written, keyed by its path relative to the inbox,
its size and its modification time (a changed file is transcribed again). Each batch's lines are
written and fsynced before the next batch starts, so a run killed halfway redoes at most the batch
it was working on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from vernacular.common.config import build_settings
from vernacular.common.fileio import exclusive_lock, file_key, write_text_atomically
from vernacular.common.storage import version_of
from vernacular.common.text import word_key
from vernacular.data.audio import AUDIO_EXTENSIONS, TARGET_SAMPLE_RATE, AudioError, read_audio
from vernacular.models.families import WHISPER, DecodeSettings, family_for
from vernacular.models.loading import (adapter_speech_task, device_name, load_adapter, load_model, load_processor,
                                      pick_device, speech_task, with_speech_task)
from vernacular.serving.ct2 import (CT2Settings, FasterWhisperModel, ct2_model_dir, export_quantization,
                                    precision_reason, read_precision_choice)
from vernacular.serving.decoding import transcribe
from vernacular.serving.ray_engine import RaySettings, ray_batches
from vernacular.serving.subtitles import SUBTITLE_FORMATS, subtitles

log = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
LOCK_FILE = ".lock"
SUBTITLES_DIR = "subtitles"


ENGINES = ("local", "ray")
BACKENDS = ("auto", "ctranslate2", "transformers")


class RunInterrupted(RuntimeError):
    """Raised by `interrupt_after_batches` to stand in for a process killed in the middle of a batch."""


@dataclass
class BatchSettings:
    device: str = "auto"
    # Chunks (<= 30 s each) per generate() call; files are grouped into batches of about this
    # many chunks, and results are written (the checkpoint advances) after each batch.
    batch_size: int = 8
    chunk_seconds: float = 30.0
    # Recordings longer than chunk_seconds are cut at the quietest point in the last
    # search_seconds of each chunk; where that point is not silence, chunks overlap by
    # overlap_seconds and the words spoken twice are merged.
    search_seconds: float = 5.0
    overlap_seconds: float = 2.0
    silence_ratio: float = 0.1
    merge: bool = True
    # "" decodes in the language the adapter was trained for; a code (de, cy) or auto (detect per
    # 30-s chunk, multilingual models only) overrides it.
    language: str = ""
    decoding: DecodeSettings = field(default_factory=DecodeSettings)  # its batch_size is ignored: see above
    progress: bool = False
    # auto: CTranslate2 (faster-whisper: int8, VAD, timestamps) for Whisper-family models, transformers
    # for CTC and RNN-T; or name one. `decoding` and the chunk settings above are the transformers
    # backend's; `ct2` is the CTranslate2 backend's.
    backend: str = "auto"
    ct2: CT2Settings = field(default_factory=CT2Settings)
    subtitles: list[str] = field(default_factory=list)  # srt, vtt: beside each run's results (timed backends)
    engine: str = "local"  # local (this process) | ray (a pool of model actors on a Ray cluster)
    ray: RaySettings = field(default_factory=RaySettings)

    def __post_init__(self) -> None:
        if isinstance(self.ray, dict):
            self.ray = RaySettings.from_dict(self.ray)
        if self.engine not in ENGINES:
            raise ValueError(f"transcription.engine must be one of {list(ENGINES)}, got {self.engine!r}")
        if isinstance(self.decoding, dict):
            self.decoding = DecodeSettings.from_dict(self.decoding, "transcription.decoding")
        if isinstance(self.ct2, dict):
            self.ct2 = CT2Settings.from_dict(self.ct2)
        if self.backend not in BACKENDS:
            raise ValueError(f"transcription.backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        unknown = [f for f in self.subtitles if f not in SUBTITLE_FORMATS]
        if unknown:
            raise ValueError(f"transcription.subtitles {unknown}: formats are {list(SUBTITLE_FORMATS)}")
        if self.subtitles and self.backend == "transformers":
            raise ValueError("transcription.subtitles need segment times, which the transformers backend does not "
                             "give: use backend auto or ctranslate2")
        if not 1.0 <= self.chunk_seconds <= 30.0:
            raise ValueError(f"transcription.chunk_seconds must be in [1, 30] (Whisper's window), got "
                             f"{self.chunk_seconds}")
        if not 0 <= self.overlap_seconds < self.chunk_seconds / 2:
            raise ValueError("transcription.overlap_seconds must be >= 0 and below half of chunk_seconds")
        if not 0 <= self.search_seconds < self.chunk_seconds:
            raise ValueError("transcription.search_seconds must be >= 0 and below chunk_seconds")
        if self.batch_size < 1:
            raise ValueError("transcription.batch_size must be >= 1")

    @classmethod
    def from_dict(cls, values: dict | None) -> "BatchSettings":
        return build_settings(cls, values, "transcription")


# --- long-form segmentation -------------------------------------------------------------------

def chunk_bounds(n_samples: int, settings: BatchSettings, sample_rate: int = TARGET_SAMPLE_RATE,
                 audio: np.ndarray | None = None) -> list[tuple[int, int, bool]]:
    """(start, end, overlaps_previous) sample bounds of chunks of at most `chunk_seconds`."""
    limit = int(settings.chunk_seconds * sample_rate)
    if n_samples <= limit:
        return [(0, n_samples, False)]
    frame = int(0.02 * sample_rate)
    search = int(settings.search_seconds * sample_rate)
    overlap = int(settings.overlap_seconds * sample_rate)
    level = _speech_level(audio, frame) if audio is not None else 0.0
    bounds, start, overlapped = [], 0, False
    while n_samples - start > limit:
        end = start + limit
        cut = None
        if audio is not None and search >= frame:
            region = audio[end - search:end]
            energy = _frame_rms(region, frame)
            quietest = int(np.argmin(energy))
            if energy[quietest] <= settings.silence_ratio * level:
                cut = end - search + quietest * frame + frame // 2
        if cut is not None:
            bounds.append((start, cut, overlapped))
            start, overlapped = cut, False
        else:
            bounds.append((start, end, overlapped))
            start, overlapped = end - overlap, overlap > 0
    bounds.append((start, n_samples, overlapped))
    return bounds


def _frame_rms(audio: np.ndarray, frame: int) -> np.ndarray:
    n = len(audio) // frame
    frames = audio[:n * frame].reshape(n, frame).astype(np.float64)
    return np.sqrt((frames ** 2).mean(axis=1))


def _speech_level(audio: np.ndarray, frame: int) -> float:
    energy = _frame_rms(audio, frame)
    loud = energy[energy > 0.05 * energy.max()] if energy.size and energy.max() > 0 else energy
    return float(np.median(loud)) if loud.size else 0.0


def join_texts(previous: str, following: str, overlapped: bool, max_words: int = 15, min_run: int = 2) -> str:
    """Join the transcripts of two consecutive chunks.

    Overlapping chunks repeat a few words: the longest run of identical (normalised) words between
    the end of `previous` and the start of `following` is kept once. Edge words cut in half by the
    boundary differ between the two and fall outside the run, so they are dropped with it. Without
    a shared run of `min_run` words the texts are simply joined.
    """
    if not previous:
        return following
    if not following:
        return previous
    if not overlapped:
        return f"{previous} {following}"
    a, b = previous.split(), following.split()
    tail, head = [word_key(w) for w in a[-max_words:]], [word_key(w) for w in b[:max_words]]
    best = (0, 0, 0)  # run length, index in tail, index in head
    for i in range(len(tail)):
        for j in range(len(head)):
            k = 0
            while i + k < len(tail) and j + k < len(head) and tail[i + k] and tail[i + k] == head[j + k]:
                k += 1
            if k > best[0]:
                best = (k, i, j)
    run, i, j = best
    if run < min_run:
        return f"{previous} {following}"
    # First half of the shared run from `previous`, the rest from `following`: each side's words are
    # most reliable away from its own chunk edge (an edge adds spurious full stops and capitals).
    half = (run + 1) // 2
    return " ".join(a[:len(a) - len(tail) + i + half] + b[j + half:])


# --- model -------------------------------------------------------------------------------------

@dataclass
class Transcriber:
    """A loaded (merged) model with what the results need to say about it."""
    model: object
    processor: object
    device: object
    settings: BatchSettings
    base_model: str
    adapter_path: str | None
    adapter_version: str | None
    device_name: str
    language: str = "en"
    served: FasterWhisperModel | None = None  # the CTranslate2 backend; None: transformers

    @property
    def backend(self) -> str:
        return "ctranslate2" if self.served else "transformers"

    def transcribe_audio(self, audios: list[np.ndarray]) -> list[dict]:
        """{"text", "chunks", "segments"} per recording. transformers: long recordings cut into chunks
        and joined, no segments; CTranslate2: faster-whisper's VAD segments with their times."""
        if self.served:
            results = []
            for audio in audios:
                out = self.served.transcribe(audio)
                results.append({"text": out["text"], "chunks": len(out["segments"]), "segments": out["segments"],
                                "detected_language": out["language"]})
            return results
        return [{"text": text, "chunks": chunks, "segments": None}
                for text, chunks in self._transformers(audios)]

    def _transformers(self, audios: list[np.ndarray]) -> list[tuple[str, int]]:
        decoding = dataclasses.replace(self.settings.decoding, batch_size=self.settings.batch_size)
        pieces, owners = [], []
        for index, audio in enumerate(audios):
            for start, end, overlapped in chunk_bounds(len(audio), self.settings, audio=audio):
                pieces.append(audio[start:end])
                owners.append((index, overlapped))
        texts = transcribe(self.model, self.processor, pieces, decoding, self.device, progress=self.settings.progress)
        joined, counts = [""] * len(audios), [0] * len(audios)
        for (index, overlapped), text in zip(owners, texts):
            joined[index] = join_texts(joined[index], text, overlapped)
            counts[index] += 1
        return list(zip(joined, counts))


def resolve_backend(base_model: dict, settings: BatchSettings) -> str:
    """ctranslate2 or transformers for this base model (`auto`: CTranslate2 for Whisper)."""
    whisper = family_for(base_model) is WHISPER
    if settings.backend == "ctranslate2" and not whisper:
        raise ValueError(f"transcription.backend: ctranslate2 serves Whisper-family models only; "
                         f"{base_model['name_or_path']} is {family_for(base_model).name}: use transformers or auto")
    return "ctranslate2" if settings.backend == "ctranslate2" or (settings.backend == "auto" and whisper) \
        else "transformers"


def load_transcriber(base_model: dict, adapter_dir: str | None, settings: BatchSettings,
                     ct2_cache_dir: str | os.PathLike | None = None) -> Transcriber:
    """Base model with the adapter merged into its weights (no LoRA overhead at inference): on the
    CTranslate2 backend, exported once into `ct2_cache_dir` (keyed by the adapter's weights) and
    served by faster-whisper; on transformers, loaded and merged in memory."""
    device = pick_device(settings.device)
    trained_for = adapter_speech_task(adapter_dir) if adapter_dir else {}
    base_model = with_speech_task(base_model, settings.language or trained_for.get("language"), trained_for.get("task"))
    if resolve_backend(base_model, settings) == "ctranslate2":
        if ct2_cache_dir is None:
            raise ValueError("the CTranslate2 backend needs a folder for its exports (ct2_cache_dir), or set "
                             "transcription.backend: transformers")
        # a model that cannot take the language stops here, before any export
        family_for(base_model).set_speech_task(load_processor(base_model), None, *speech_task(base_model))
        recorded = read_precision_choice(adapter_dir) if settings.ct2.quantization == "auto" else None
        compute_type = settings.ct2.compute_type(device.type, recorded)
        if settings.ct2.quantization == "auto":
            log.info("serving %s: %s", compute_type, precision_reason(recorded, device.type, compute_type))
        ct2 = dataclasses.replace(settings.ct2, quantization=compute_type)
        if settings.subtitles and ct2.window_seconds:  # subtitles need the times of each stretch of speech
            ct2 = dataclasses.replace(ct2, window_seconds=0.0)
        model_dir = ct2_model_dir(base_model, adapter_dir, ct2_cache_dir, export_quantization(compute_type))
        language, task = speech_task(base_model)
        served = FasterWhisperModel(model_dir, device.type, ct2, None if language == "auto" else language,
                                    task)
        return Transcriber(None, None, device, settings, base_model["name_or_path"],
                           str(adapter_dir) if adapter_dir else None, version_of(adapter_dir),
                           f"{device_name(device)}, CTranslate2 {compute_type}", language, served)
    if adapter_dir:
        model, processor = load_adapter(base_model, adapter_dir, device, merge=settings.merge)
    else:
        model, processor, _ = load_model(base_model, device=device)
    return Transcriber(model, processor, device, settings, base_model["name_or_path"],
                       str(adapter_dir) if adapter_dir else None, version_of(adapter_dir), device_name(device),
                       speech_task(base_model)[0])


# --- results ledger ----------------------------------------------------------------------------

def new_run_id() -> str:
    """A UTC timestamp in Kedro's version format, so run folders sort like dataset versions."""
    now = dt.datetime.now(tz=dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H.%M.%S.") + f"{now.microsecond // 1000:03d}Z"


def read_results(results_dir: str | os.PathLike) -> list[dict]:
    """Every result line of every run, oldest run first; a torn last line (killed mid-write) is skipped."""
    records = []
    for path in sorted(Path(results_dir).glob(f"*/{RESULTS_FILE}")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: skipping an incomplete line (a run killed while writing)", path)
    return records


def done_keys(results_dir: str | os.PathLike) -> set[tuple[str, int, int]]:
    return {(r["file"], r["size_bytes"], r["mtime_ns"]) for r in read_results(results_dir)}


def pending_files(files: dict[str, str], results_dir: str | os.PathLike) -> dict[str, str]:
    """Files (id -> path) not transcribed yet; hidden files (being copied in) are left for later."""
    done = done_keys(results_dir)
    pending = {}
    for file_id, path in sorted(files.items()):
        if any(part.startswith(".") for part in Path(file_id).parts):
            continue
        if (file_id, *_ledger_key(path)) not in done:
            pending[file_id] = path
    return pending


def _ledger_key(path: str) -> tuple[int, int]:
    """The file key the ledger records; (-1, -1) for a path that cannot be read (missing, a dangling
    link): its error is recorded once, and the file is taken again when it appears."""
    try:
        return file_key(path)
    except OSError:
        return -1, -1


def _append_lines(path: Path, records: list[dict]) -> None:
    # One write per batch, then fsync: the checkpoint (these lines) is durable before the next batch.
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


# --- transcription of files --------------------------------------------------------------------

def _planned_seconds(path: str) -> float:
    try:
        return float(sf.info(path).duration)
    except Exception:  # undecodable: reported when it is read
        return 0.0


def plan_batches(files: dict[str, str], settings: BatchSettings) -> list[list[tuple[str, str]]]:
    """Group files so that each batch holds about `batch_size` chunks (a long file is a batch of its own)."""
    batches, current, chunks = [], [], 0
    for file_id, path in files.items():
        n = max(1, int(np.ceil(_planned_seconds(path) / settings.chunk_seconds)))
        if current and chunks + n > settings.batch_size:
            batches.append(current)
            current, chunks = [], 0
        current.append((file_id, path))
        chunks += n
    if current:
        batches.append(current)
    return batches


def transcribe_batch(transcriber: Transcriber, items: list[tuple[str, str]], run_id: str | None = None) -> list[dict]:
    """One result record per (id, path); a file that cannot be decoded gets status "error" and a reason."""
    records, audios, readable = [], [], []
    for file_id, path in items:
        size, mtime_ns = _ledger_key(path)
        record = {"file": file_id, "path": str(Path(path).resolve()), "size_bytes": size, "mtime_ns": mtime_ns,
                  "text": None, "duration_s": None, "chunks": 0, "segments": None, "backend": transcriber.backend,
                  "base_model": transcriber.base_model,
                  "language": transcriber.language, "adapter_version": transcriber.adapter_version, "adapter_path": transcriber.adapter_path,
                  "device": transcriber.device_name, "seconds": None, "real_time_factor": None,
                  "status": "ok", "error": None, "run_id": run_id}
        try:
            audio = read_audio(path)
        except AudioError as exc:
            record.update(status="error", error=str(exc))
        else:
            record["duration_s"] = len(audio) / TARGET_SAMPLE_RATE
            audios.append(audio)
            readable.append(record)
        records.append(record)
    if audios:
        started = time.perf_counter()
        outputs = transcriber.transcribe_audio(audios)
        elapsed = time.perf_counter() - started
        total = sum(r["duration_s"] for r in readable)
        for record, output in zip(readable, outputs):
            # The batch is timed as a whole; each file gets its share by audio length.
            seconds = elapsed * record["duration_s"] / total
            record.update(output, seconds=seconds, real_time_factor=seconds / record["duration_s"])
    stamp = dt.datetime.now(tz=dt.timezone.utc).isoformat(timespec="seconds")
    for record in records:
        record["transcribed_at"] = stamp
    return records


def expand_inputs(paths: Iterable[str]) -> list[str]:
    """Files to transcribe: each path as given, a folder replaced by the audio files under it
    (recursively, sorted, hidden ones skipped). A folder without audio stays, and becomes an error record."""
    files = []
    for path in map(str, paths):
        folder = Path(path)
        if folder.is_dir():
            found = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS
                           and not any(part.startswith(".") for part in p.relative_to(folder).parts))
            files += found or [path]
        else:
            files.append(path)
    return files


def transcribe_files(paths: Iterable[str], transcriber: Transcriber, progress: bool = False) -> Iterable[dict]:
    """Transcribe files given by path (no ledger); yields one record per file, batch by batch, with a
    progress bar over the files on stderr when `progress`."""
    files = {str(p): str(p) for p in paths}
    with tqdm(total=len(files), desc="files", unit="file", disable=not progress) as bar:
        for batch in plan_batches(files, transcriber.settings):
            records = transcribe_batch(transcriber, batch)
            bar.update(len(records))
            yield from records


def subtitle_name(file_id: str) -> str:
    """A flat, safe file stem for a file id (`monday/call 1.wav` -> `monday__call 1`)."""
    return str(Path(file_id).with_suffix("")).replace(os.sep, "__").replace("/", "__")


def write_subtitle_files(records: list[dict], folder: Path, formats: Iterable[str],
                         name: Callable[[dict], str] = lambda record: subtitle_name(record["file"])) -> list[Path]:
    """One subtitle file per format for each record that has segments, named `name(record).<format>`
    (a `-2`, `-3`, ... suffix where that name is taken: nothing is overwritten); written atomically."""
    written = []
    formats = list(formats)
    for record in records:
        if record.get("status") != "ok" or record.get("segments") is None or not formats:
            continue
        stem, n = name(record), 1
        while any((folder / f"{stem}.{fmt}").exists() for fmt in formats):
            n += 1
            stem = f"{name(record)}-{n}"
        for fmt in formats:
            written.append(write_text_atomically(folder / f"{stem}.{fmt}", subtitles(record["segments"], fmt)))
    return written


def run_inbox(files: dict[str, str], results_dir: str | os.PathLike, load: Callable[[], Transcriber],
              settings: BatchSettings, vertical: str = "", interrupt_after_batches: int | None = None) -> dict:
    """Transcribe the files (id -> path) not done yet and append their results under `results_dir`.

    `load` is called only when there is something new. Returns the run summary; a run with
    nothing new writes nothing and returns {"new_files": 0, ...}. `interrupt_after_batches=N`
    transcribes batch N+1 and raises RunInterrupted before writing it (a kill mid-batch), for tests.
    """
    results_dir = Path(results_dir)
    with exclusive_lock(Path(results_dir) / LOCK_FILE, "transcription run"):
        pending = pending_files(files, results_dir)
        hidden = sum(any(part.startswith(".") for part in Path(f).parts) for f in files)
        skipped = len(files) - len(pending) - hidden
        if not pending:
            log.info("%s: nothing new in the inbox (%d file(s) already transcribed)", vertical or "inbox", skipped)
            return {"vertical": vertical, "new_files": 0, "already_done": skipped, "run_id": None}
        run_id = new_run_id()
        run_dir = results_dir / run_id
        run_dir.mkdir(parents=True)
        started_at = dt.datetime.now(tz=dt.timezone.utc).isoformat(timespec="seconds")
        started = time.perf_counter()
        batches = plan_batches(pending, settings)
        if settings.engine == "ray":
            model, finished = ray_batches(batches, load, run_id, settings.ray, run=transcribe_batch,
                                          describe=describe_transcriber)
        else:
            transcriber = load()
            model = describe_transcriber(transcriber)
            finished = (transcribe_batch(transcriber, batch, run_id) for batch in batches)
        load_seconds = time.perf_counter() - started
        log.info("%s: %d new file(s) in %d batch(es), run %s, %s engine", vertical or "inbox", len(pending),
                 len(batches), run_id, settings.engine)
        records = []
        try:
            for number, batch_records in enumerate(finished):
                if interrupt_after_batches is not None and number >= interrupt_after_batches:
                    raise RunInterrupted(f"interrupted in batch {number + 1} of {len(batches)} before writing it")
                _append_lines(run_dir / RESULTS_FILE, batch_records)
                write_subtitle_files(batch_records, run_dir / SUBTITLES_DIR, settings.subtitles)
                records.extend(batch_records)
        finally:
            finished.close()  # the Ray engine stops its actors
        summary = summarise(records, run_id=run_id, vertical=vertical, model=model,
                            already_done=skipped, started_at=started_at, load_seconds=load_seconds,
                            wall_seconds=time.perf_counter() - started, results_file=str(run_dir / RESULTS_FILE),
                            engine=settings.engine)
        write_text_atomically(run_dir / SUMMARY_JSON, json.dumps(summary, indent=2) + "\n")
        write_text_atomically(run_dir / SUMMARY_MD, render_summary(summary))
        return summary


def describe_transcriber(transcriber: Transcriber) -> dict:
    """What a run's summary says about the model that served it."""
    return {"base_model": transcriber.base_model, "language": transcriber.language,
            "adapter_path": transcriber.adapter_path, "adapter_version": transcriber.adapter_version,
            "merged": transcriber.settings.merge, "device_name": transcriber.device_name,
            "backend": transcriber.backend, "batch_size": transcriber.settings.batch_size}


def summarise(records: list[dict], *, run_id: str, vertical: str, model: dict, already_done: int,
              started_at: str, load_seconds: float, wall_seconds: float, results_file: str, engine: str = "local") -> dict:
    ok = [r for r in records if r["status"] == "ok"]
    audio = sum(r["duration_s"] for r in ok)
    decode = sum(r["seconds"] for r in ok)
    return {"vertical": vertical, "run_id": run_id, "started_at": started_at, "new_files": len(records),
            "already_done": already_done, "transcribed": len(ok), "failed": len(records) - len(ok),
            "errors": [{"file": r["file"], "error": r["error"]} for r in records if r["status"] != "ok"],
            "audio_seconds": audio, "transcribe_seconds": decode, "model_load_seconds": load_seconds,
            "wall_seconds": wall_seconds, "real_time_factor": decode / audio if audio else None,
            "longest_file_s": max((r["duration_s"] for r in ok), default=0.0),
            "chunks": sum(r["chunks"] for r in ok), "base_model": model["base_model"],
            "language": model["language"], "adapter_path": model["adapter_path"],
            "adapter_version": model["adapter_version"], "merged": model["merged"], "device": model["device_name"],
            "backend": model["backend"], "batch_size": model["batch_size"], "engine": engine,
            "results_file": results_file}


def render_summary(summary: dict) -> str:
    rtf = summary["real_time_factor"]
    lines = [f"# Transcription run {summary['run_id']} ({summary['vertical'] or 'inbox'})", "",
             f"- files: {summary['new_files']} new ({summary['transcribed']} transcribed, {summary['failed']} failed), "
             f"{summary['already_done']} already done in earlier runs",
             f"- audio: {summary['audio_seconds'] / 60:.1f} min in {summary['chunks']} chunk(s); longest file "
             f"{summary['longest_file_s']:.0f} s",
             f"- time: {summary['transcribe_seconds']:.1f} s transcribing (real-time factor "
             f"{'n/a' if rtf is None else f'{rtf:.3f}'}), {summary['model_load_seconds']:.1f} s loading, "
             f"{summary['wall_seconds']:.1f} s in all, on {summary['device']}",
             f"- model: {summary['base_model']} + adapter {summary['adapter_version'] or summary['adapter_path'] or 'none'}"
             f" ({'merged' if summary['merged'] else 'unmerged'}), {summary.get('backend', 'transformers')} backend",
             f"- results: `{summary['results_file']}`"]
    if summary["errors"]:
        lines += ["", "## Files that could not be transcribed", "", "| file | reason |", "|---|---|"]
        lines += [f"| {e['file']} | {e['error'].replace('|', '/')} |" for e in summary["errors"]]
    return "\n".join(lines) + "\n"
