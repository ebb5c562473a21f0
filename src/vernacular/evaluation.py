"""Base model vs adapter on the test split: WER/CER with bootstrap intervals and a paired test,
per-group breakdowns, domain-term recall, a forgetting check on general speech, latency."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from vernacular.config import build_settings
from vernacular.audio import read_audio
from vernacular.metrics import (PAIRED_TEST, compare_systems, evaluate, forgetting_check, normalise,
                                per_utterance_errors, term_recall, worst_groups)
from vernacular.fileio import write_directory_atomically
from vernacular.models import device_name, load_model, pick_device
from vernacular.transcribe import DecodeSettings, build_segments, measure_latency, transcribe

log = logging.getLogger(__name__)


@dataclass
class EvaluationSettings:
    normaliser: str = "whisper_english"
    device: str = "auto"
    decoding: dict = field(default_factory=dict)
    latency_segments: int = 3
    latency_segment_seconds: float = 28.0
    latency_repeats: int = 2
    max_utterances: int | None = None
    substitution_examples: int = 15
    group_columns: list[str] = field(default_factory=lambda: ["speaker"])
    progress: bool = True
    bootstrap: dict = field(default_factory=dict)  # BootstrapSettings
    worst_speakers: int = 5
    key_terms: list[str] = field(default_factory=list)
    forgetting: dict = field(default_factory=dict)  # ForgettingSettings
    forgetting_margin: float = 2.0  # percentage points of WER the adapter may lose on general speech
    reuse_cached: bool = True  # a rerun with the same model, adapter weights, test rows and settings reuses the result

    @classmethod
    def from_dict(cls, values: dict) -> "EvaluationSettings":
        settings = build_settings(cls, values, "evaluation")
        settings.key_terms = [str(t) for t in (settings.key_terms or [])]
        BootstrapSettings.from_dict(settings.bootstrap)
        ForgettingSettings.from_dict(settings.forgetting)
        return settings


@dataclass
class BootstrapSettings:
    n_resamples: int = 2000
    seed: int = 0
    confidence: float = 0.95

    @classmethod
    def from_dict(cls, values: dict | None) -> "BootstrapSettings":
        settings = build_settings(cls, values, "evaluation.bootstrap")
        if settings.n_resamples < 1 or not 0 < settings.confidence < 1:
            raise ValueError("evaluation.bootstrap: n_resamples must be >= 1 and 0 < confidence < 1")
        return settings


@dataclass
class ForgettingSettings:
    """The general-speech control set: packaged sentences read by one voice, or a manifest."""

    enabled: bool = True
    corpus: str = "general"  # packaged corpus name or a .txt path (ignored when `manifest` is set)
    sentences: int = 40  # how many (a deterministic, hash-ordered subset); also caps a manifest
    voice: str = "en-us"
    rate: int = 175
    pitch: int = 50
    manifest: str | None = None  # any manifest the ingestion reads (csv/tsv/jsonl/nemo/kaldi/audiofolder)
    manifest_format: str = "auto"
    cache_dir: str | None = None  # default: <storage.synthetic_dir>/../control

    @classmethod
    def from_dict(cls, values: dict | None) -> "ForgettingSettings":
        return build_settings(cls, values, "evaluation.forgetting")


def load_adapter_model(base_model: dict, adapter_dir: str, device, merge: bool):
    """Base model (any family) with the adapter attached (PeftModel) or merged into its weights."""
    from peft import PeftModel

    model, processor, _ = load_model(base_model, device="cpu")
    model = PeftModel.from_pretrained(model, adapter_dir)
    if merge:
        model = model.merge_and_unload()
    model.to(device)
    model.eval()
    return model, processor


def _key(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def control_set(settings: ForgettingSettings, cache_dir: str | Path, exclude_texts=(), limit: int | None = None
                ) -> pd.DataFrame:
    """The forgetting-check utterances: utterance_id, text, speaker, audio_path, offset, duration.

    Synthetic by default: `settings.sentences` sentences of `settings.corpus` (hash-ordered, so the
    subset does not depend on file order; sentences in `exclude_texts`, e.g. the vertical's training
    text, are skipped) read by `settings.voice`, cached as WAVs in `cache_dir`. With
    `settings.manifest`, its first rows instead. `limit` caps the count further.
    """
    count = settings.sentences if not limit else min(settings.sentences, limit)
    if settings.manifest:
        from vernacular.manifest import default_root, read_manifest, resolve_rows

        rows, _ = read_manifest(settings.manifest, settings.manifest_format)
        rows = resolve_rows(rows, default_root(settings.manifest))
        rows = rows[rows["text"].str.len() > 0].head(count)
        return rows[["utterance_id", "text", "speaker", "audio_path", "offset", "duration"]].reset_index(drop=True)
    from vernacular.corpus import load_sentences
    from vernacular.synth import render

    excluded = {_key(t) for t in exclude_texts}
    ordered = sorted(load_sentences(settings.corpus),
                     key=lambda s: hashlib.sha256(f"control|{_key(s)}".encode()).hexdigest())
    chosen = [s for s in ordered if _key(s) not in excluded][:count]
    cache = Path(cache_dir)
    voice_slug = re.sub(r"[^a-zA-Z0-9]+", "_", settings.voice).strip("_")
    rows = []
    for sentence in chosen:
        uid = f"{hashlib.sha1(_key(sentence).encode()).hexdigest()[:10]}-{voice_slug}-r{settings.rate}-p{settings.pitch}"
        info = render(sentence, settings.voice, settings.rate, settings.pitch, cache / f"{uid}.wav")
        rows.append({"utterance_id": uid, "text": sentence, "speaker": settings.voice, "audio_path": info["path"],
                     "offset": 0.0, "duration": info["duration"]})
    return pd.DataFrame(rows, columns=["utterance_id", "text", "speaker", "audio_path", "offset", "duration"])


def _read_rows(rows: pd.DataFrame) -> list:
    audios = []
    for row in rows.to_dict("records"):
        offset = row.get("offset")
        duration = row.get("duration")
        offset = 0.0 if offset is None or pd.isna(offset) else float(offset)
        duration = None if duration is None or pd.isna(duration) else float(duration)
        audios.append(read_audio(row["audio_path"], offset=offset, duration=duration))
    return audios


def evaluate_adapter(test: pd.DataFrame, base_model: dict, adapter_dir: str,
                     settings: EvaluationSettings, control_cache_dir: str | Path | None = None,
                     exclude_texts=()) -> tuple[dict, pd.DataFrame]:
    """Transcribe `test` with the base model and with the merged adapter; return (metrics, transcripts).

    With `settings.forgetting.enabled`, also a general-speech control set (see `control_set`;
    cached under `control_cache_dir` unless `forgetting.cache_dir` is set).
    """
    if test.empty:
        raise ValueError("the test split is empty: nothing to evaluate (check split fractions and quarantine)")
    device = pick_device(settings.device)
    decoding = DecodeSettings.from_dict(settings.decoding)
    rows = test.sort_values("utterance_id").reset_index(drop=True)
    if settings.max_utterances:
        rows = rows.head(settings.max_utterances)
    missing = [c for c in settings.group_columns if c not in rows]
    if missing:
        raise ValueError(f"evaluation.group_columns {missing} are not manifest columns; available: {list(rows.columns)}")
    audios = [read_audio(p) for p in rows["audio_path"]]
    audio_seconds = sum(len(a) for a in audios) / 16000

    base, processor, _ = load_model(base_model, device=device)
    unmerged, _ = load_adapter_model(base_model, adapter_dir, device, merge=False)
    merged, _ = load_adapter_model(base_model, adapter_dir, device, merge=True)
    results = {}
    for name, model in (("base", base), ("adapter", merged)):
        started = time.perf_counter()
        results[name] = transcribe(model, processor, audios, decoding, device, progress=settings.progress)
        results[name + "_seconds"] = time.perf_counter() - started
    segments = build_segments(audios, settings.latency_segment_seconds, max_segments=settings.latency_segments)
    latency = measure_latency({"base": base, "adapter_unmerged": unmerged, "adapter": merged}, processor, segments,
                              decoding, repeats=settings.latency_repeats)
    unmerged_texts = latency["adapter_unmerged"].pop("texts")
    merged_texts = latency["adapter"].pop("texts")
    latency["base"].pop("texts")

    extra = [c for c in settings.group_columns if c != "speaker"]
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

    forgetting = ForgettingSettings.from_dict(settings.forgetting)
    metrics["forgetting"] = {"enabled": forgetting.enabled}
    if forgetting.enabled:
        cache = forgetting.cache_dir or control_cache_dir
        if cache is None and not forgetting.manifest:
            raise ValueError("evaluation.forgetting needs a cache folder for its synthetic audio (forgetting.cache_dir)")
        control = control_set(forgetting, cache, exclude_texts, limit=settings.max_utterances)
        if control.empty:
            raise ValueError("evaluation.forgetting: the control set is empty (all sentences excluded or no rows)")
        started = time.perf_counter()
        control_audio = _read_rows(control)
        hyps = {name: transcribe(model, processor, control_audio, decoding, device, progress=settings.progress)
                for name, model in (("base", base), ("adapter", merged))}
        boot = BootstrapSettings.from_dict(settings.bootstrap)
        metrics["forgetting"].update(forgetting_check(
            control["text"].tolist(), hyps["base"], hyps["adapter"], margin_pts=settings.forgetting_margin,
            normaliser=settings.normaliser, n_resamples=boot.n_resamples, seed=boot.seed, confidence=boot.confidence))
        metrics["forgetting"]["source"] = (f"manifest {forgetting.manifest}" if forgetting.manifest else
                                           f"synthetic: corpus `{forgetting.corpus}` read by {forgetting.voice} "
                                           f"(rate {forgetting.rate}, pitch {forgetting.pitch}), training sentences "
                                           "excluded")
        metrics["forgetting"]["seconds"] = time.perf_counter() - started
        metrics["forgetting"]["examples"] = [
            {"reference": r, "base": b, "adapter": a}
            for r, b, a in zip(control["text"], hyps["base"], hyps["adapter"]) if b != a][:5]
    return metrics, transcripts


def _hash_files(digest, folder: Path, patterns: tuple[str, ...]) -> None:
    for pattern in patterns:
        for path in sorted(folder.glob(pattern)):
            digest.update(path.name.encode())
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)


def evaluation_fingerprint(test: pd.DataFrame, base_model: dict, adapter_dir: str, settings: EvaluationSettings,
                           device: str, exclude_texts=()) -> str:
    """Hash of everything an evaluation result depends on: base weights, adapter weights, test rows
    (with their audio files' size and time), settings, device type and the excluded sentences."""
    from dataclasses import asdict

    digest = hashlib.sha256(f"eval-v1|{base_model['name_or_path']}|{base_model.get('family')}|{device}".encode())
    if base_model.get("local_dir"):
        _hash_files(digest, Path(base_model["local_dir"]), ("config.json", "*.safetensors", "*.bin"))
    _hash_files(digest, Path(adapter_dir), ("adapter_config.json", "adapter_model.*"))
    digest.update(json.dumps({k: v for k, v in asdict(settings).items() if k not in ("progress", "reuse_cached")},
                             sort_keys=True, default=str).encode())
    for row in test.sort_values("utterance_id").to_dict("records"):
        stat = os.stat(row["audio_path"])
        digest.update(f"{row['utterance_id']}|{row['text']}|{row['audio_path']}|{stat.st_size}|{stat.st_mtime_ns}\n"
                      .encode())
    digest.update(json.dumps(sorted(_key(t) for t in exclude_texts)).encode())
    return digest.hexdigest()[:20]


def evaluate_adapter_cached(test: pd.DataFrame, base_model: dict, adapter_dir: str, settings: EvaluationSettings,
                            cache_dir: str | Path | None, control_cache_dir: str | Path | None = None,
                            exclude_texts=()) -> tuple[dict, pd.DataFrame]:
    """`evaluate_adapter`, reusing the stored result of an identical earlier evaluation.

    The result is stored under `cache_dir/<fingerprint>/` (see `evaluation_fingerprint`). A reused
    result says so in `metrics["reused_from"]`; its latency figures are those measured then.
    """
    if cache_dir is None or not settings.reuse_cached:
        return evaluate_adapter(test, base_model, adapter_dir, settings, control_cache_dir, exclude_texts)
    device = pick_device(settings.device).type
    key = evaluation_fingerprint(test, base_model, adapter_dir, settings, device, exclude_texts)
    entry = Path(cache_dir) / key
    if (entry / "metrics.json").is_file() and (entry / "transcripts.pkl").is_file():
        metrics = json.loads((entry / "metrics.json").read_text())
        metrics["reused_from"] = str(entry)
        log.info("evaluation unchanged (same base, adapter weights, test rows and settings): reusing %s", entry)
        return metrics, pd.read_pickle(entry / "transcripts.pkl")
    metrics, transcripts = evaluate_adapter(test, base_model, adapter_dir, settings, control_cache_dir, exclude_texts)
    def write(tmp: Path) -> None:
        (tmp / "metrics.json").write_text(json.dumps(metrics, default=str))
        transcripts.to_pickle(tmp / "transcripts.pkl")

    write_directory_atomically(entry, write)
    metrics["reused_from"] = None
    return metrics, transcripts


def score_transcripts(transcripts: pd.DataFrame, settings: EvaluationSettings) -> dict:
    """Every accuracy figure from a transcripts frame (utterance_id, speaker, group columns, reference,
    base, adapter): rates per system and group, intervals and paired tests, worst speakers, term
    recall, alignment examples. No model needed.
    """
    metrics: dict = {}
    for name in ("base", "adapter"):
        frame = transcripts.rename(columns={name: "hypothesis"})
        metrics[name] = evaluate(frame, group_cols=tuple(settings.group_columns), normaliser=settings.normaliser)
    base_wer = metrics["base"]["normalised"]["wer"]
    adapter_wer = metrics["adapter"]["normalised"]["wer"]
    metrics["wer_relative_reduction"] = (base_wer - adapter_wer) / base_wer if base_wer else None
    metrics["examples"] = _examples(transcripts, settings.substitution_examples)
    metrics.update(statistics_block(transcripts, settings))
    overall = metrics["statistics"]["overall"]
    for name in ("base", "adapter"):
        for rate in ("wer", "cer"):
            metrics[name]["normalised"][f"{rate}_ci"] = [overall[rate][name]["low"], overall[rate][name]["high"]]
    metrics["wer_difference"] = overall["wer"]["difference"]
    metrics["worst_speakers"] = worst_groups(metrics["base"]["by_speaker"], metrics["adapter"]["by_speaker"],
                                             settings.worst_speakers)
    metrics["key_terms"] = {
        "terms": settings.key_terms,
        **{name: term_recall(transcripts["reference"].tolist(), transcripts[name].tolist(), settings.key_terms,
                             settings.normaliser) for name in ("base", "adapter")}}
    return metrics


def statistics_block(transcripts: pd.DataFrame, settings: EvaluationSettings) -> dict:
    """Bootstrap intervals and paired tests on normalised text, overall and per group column.

    Returns {"statistics": {"test", "bootstrap", "normaliser", "overall", "by_<col>": {value:
    `metrics.compare_systems`}}, "per_utterance": {"utterance_id", "speaker", "base_wer", "adapter_wer"}}.
    """
    boot = BootstrapSettings.from_dict(settings.bootstrap)
    options = {"n_resamples": boot.n_resamples, "seed": boot.seed, "confidence": boot.confidence}
    refs = [normalise(t, settings.normaliser) for t in transcripts["reference"]]
    hyps = {name: [normalise(t, settings.normaliser) for t in transcripts[name]] for name in ("base", "adapter")}
    stats: dict = {"test": PAIRED_TEST, "bootstrap": {**boot.__dict__, "unit": "utterance"},
                   "normaliser": settings.normaliser,
                   "overall": compare_systems(refs, hyps["base"], hyps["adapter"], **options)}
    for column in settings.group_columns:
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
    from vernacular.metrics import per_utterance_errors

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


SMALL_SAMPLE = 20  # below this many test utterances the summary warns that bootstrap figures are optimistic


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _ci(entry: dict) -> str:
    """'80.0% [76.1, 83.9]' from a bootstrap_rate result."""
    if entry.get("estimate") is None:
        return "n/a"
    if entry.get("low") is None:
        return _pct(entry["estimate"])
    return f"{_pct(entry['estimate'])} [{100 * entry['low']:.1f}, {100 * entry['high']:.1f}]"


def format_p(p: float | None) -> str:
    if p is None:
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _diff(entry: dict) -> str:
    """'-52.7 pts [-56.0, -49.1], p < 0.001' from a paired_bootstrap result."""
    if entry.get("difference") is None:
        return "n/a"
    text = f"{100 * entry['difference']:+.1f} pts"
    if entry.get("low") is not None:
        text += f" [{100 * entry['low']:+.1f}, {100 * entry['high']:+.1f}]"
    return f"{text}, {format_p(entry.get('p_value'))}"


def headline(metrics: dict, rate: str = "wer") -> str:
    """'WER 80.0% [76.1, 83.9] -> 27.3% [24.0, 30.8], difference -52.7 pts [..], p < 0.001'."""
    overall = metrics["statistics"]["overall"][rate]
    return (f"{rate.upper()} {_ci(overall['base'])} -> {_ci(overall['adapter'])}, difference "
            f"{_diff(overall['difference'])}")


def _group_table(metrics: dict, column: str) -> list[str]:
    base, adapter = metrics["base"][f"by_{column}"], metrics["adapter"][f"by_{column}"]
    stats = metrics.get("statistics", {}).get(f"by_{column}", {})
    lines = [f"| {column} | utterances | base WER | adapter WER | difference |", "|---|---|---|---|---|"]
    for value, values in base.items():
        n = values["normalised"]["n_utterances"]
        if value in stats:
            wer = stats[value]["wer"]
            lines.append(f"| {value} | {n} | {_ci(wer['base'])} | {_ci(wer['adapter'])} | {_diff(wer['difference'])} |")
        else:
            lines.append(f"| {value} | {n} | {_pct(values['normalised']['wer'])} | "
                         f"{_pct(adapter[value]['normalised']['wer'])} | |")
    return lines


def render_summary(metrics: dict, training: dict, vertical: str) -> str:
    """Markdown summary of an evaluation run."""
    base, adapter = metrics["base"], metrics["adapter"]
    stats = metrics["statistics"]
    boot = stats["bootstrap"]
    overall = stats["overall"]
    level = round(100 * boot["confidence"])
    lines = [f"# {vertical}: base model vs adapter", "",
             f"Test split: {metrics['n_utterances']} utterances, {metrics['audio_seconds'] / 60:.1f} min of audio. "
             f"Device: {metrics['device_name']}.", "",
             f"**{headline(metrics)}** (normalised text; {level}% intervals).", "",
             f"Normaliser: `{metrics['normaliser']}` (transformers' Whisper normaliser, applied to references and "
             "hypotheses alike); raw = text as written, case and punctuation included.", "",
             f"Intervals: {level}% percentile bootstrap over utterances ({boot['n_resamples']} resamples, seed "
             f"{boot['seed']}; each resample pools the word counts). Difference = adapter - base in percentage "
             "points, paired bootstrap on the same resamples (two-sided p; its floor is "
             f"{2 / (boot['n_resamples'] + 1):.4f}). See docs/evaluation.md.", "",
             *([f"**Caution:** only {metrics['n_utterances']} test utterances; with fewer than {SMALL_SAMPLE} the "
                "bootstrap understates the uncertainty (its p-value can sit at its floor when every utterance "
                "moves the same way): read the sign test, and evaluate on more utterances.", ""]
               if metrics["n_utterances"] < SMALL_SAMPLE else []),
             "| metric | base | adapter | difference (adapter - base) |", "|---|---|---|---|"]
    for rate in ("wer", "cer"):
        entry = overall[rate]
        lines.append(f"| {rate.upper()} (normalised) | {_ci(entry['base'])} | {_ci(entry['adapter'])} | "
                     f"{_diff(entry['difference'])} |")
    for rate in ("wer", "cer"):
        lines.append(f"| {rate.upper()} (raw) | {_pct(base['raw'][rate])} | {_pct(adapter['raw'][rate])} | |")
    sign = overall["sign_test"]
    lines += ["", f"Relative WER reduction (normalised): {_pct(metrics['wer_relative_reduction'])}.",
              f"Sign test on per-utterance word errors: {sign['improved']} utterances improved, {sign['worsened']} "
              f"worsened, {sign['ties']} unchanged ({format_p(sign['p_value'])}).", "",
              "## Per speaker / voice (normalised WER)", "", *_group_table(metrics, "speaker")]
    for column in [c for c in metrics["base"] if c.startswith("by_") and c != "by_speaker"]:
        lines += ["", f"## By {column[3:]} (normalised WER)", "", *_group_table(metrics, column[3:])]
    worst = metrics.get("worst_speakers") or []
    if worst:
        lines += ["", f"## Worst speakers (top {len(worst)} by adapter WER)", ""]
        lines += [f"{i}. {w['group']}: {_pct(w['adapter_wer'])} (base {_pct(w['base_wer'])}, "
                  f"{w['n_utterances']} utterances)" for i, w in enumerate(worst, 1)]
    lines += ["", *_terms_section(metrics.get("key_terms"))]
    lines += ["", *_forgetting_section(metrics.get("forgetting"))]
    lat = metrics["latency"]
    lines += ["", f"## Latency per ~{lat['base']['mean_segment_seconds']:.0f}-s segment (batch 1, "
              f"{lat['base']['segments']} segments)", "", "| model | s/segment | real-time factor |", "|---|---|---|"]
    for name in ("base", "adapter_unmerged", "adapter"):
        label = {"adapter": "adapter merged"}.get(name, name.replace("_", " "))
        lines.append(f"| {label} | {lat[name]['seconds_per_segment']:.2f} | {lat[name]['real_time_factor']:.3f} |")
    lines += ["", f"Merged and unmerged adapter transcripts identical on these segments: "
              f"{lat['merged_equals_unmerged']}.", "", "## Adapter training", "",
              f"- trainable parameters: {training['trainable_params']:,} of {training['total_params']:,} "
              f"({100 * training['trainable_fraction']:.2f}%)",
              f"- {training['steps']} steps, {training['train_examples']} training utterances, "
              f"{training['train_seconds'] / 60:.1f} min on {training['device_name']}", ""]
    lines += _alignment_section(metrics)
    lines += ["", "## Examples (most improved first)", ""]
    for ex in metrics["examples"][:8]:
        lines += [f"- **{ex['speaker']}** ref: {ex['reference']}", f"  - base: {ex['base']}",
                  f"  - adapter: {ex['adapter']}"]
    return "\n".join(lines) + "\n"


def _terms_section(block: dict | None) -> list[str]:
    lines = ["## Domain-term recall (normalised)", ""]
    if not block or not block.get("terms"):
        return lines + ["No key terms configured for this vertical (`evaluation.key_terms`)."]
    b, a = block["base"], block["adapter"]
    lines += [f"Share of reference occurrences of {len(block['terms'])} key terms that the transcript gets right "
              f"(word-aligned with jiwer): base {_pct(b['recall'])} -> adapter {_pct(a['recall'])} "
              f"({b['occurrences']} occurrences).", "", "| term | occurrences | base | adapter |", "|---|---|---|---|"]
    rows = sorted(a["terms"].items(), key=lambda kv: (-kv[1]["occurrences"], kv[0]))
    for term, values in rows:
        if values["occurrences"]:
            lines.append(f"| {term} | {values['occurrences']} | {_pct(b['terms'][term]['recall'])} | "
                         f"{_pct(values['recall'])} |")
    absent = [t for t, v in rows if not v["occurrences"]]
    if absent:
        lines += ["", f"Not in this test split: {', '.join(absent)}."]
    return lines


def _forgetting_section(block: dict | None) -> list[str]:
    lines = ["## Forgetting check (general speech)", ""]
    if not block or not block.get("enabled"):
        return lines + ["Disabled (`evaluation.forgetting.enabled: false`)."]
    change = block["wer_change_pts"]
    verdict = ("**FLAGGED**: the adapter is worse on general speech by more than" if block["flagged"]
               else "Within the margin of")
    lines += [f"{block['n_utterances']} utterances ({block['source']}). WER {_pct(block['base']['wer'])} (base) -> "
              f"{_pct(block['adapter']['wer'])} (adapter), change "
              f"{'n/a' if change is None else f'{change:+.1f}'} pts, paired difference "
              f"{_diff(block['difference'])}.",
              f"{verdict} {block['margin_pts']:g} pts (`evaluation.forgetting_margin`)."]
    return lines


def _alignment_section(metrics: dict) -> list[str]:
    lines = []
    for name in ("base", "adapter"):
        align = metrics[name]["alignment"]
        lines += [f"## Top errors ({name}, normalised)", "", "| substitutions | insertions | deletions |",
                  "|---|---|---|"]
        subs = [f"{s['reference']} -> {s['hypothesis']} ({s['count']}x)" for s in align["substitutions"][:10]]
        ins = [f"{s['word']} ({s['count']}x)" for s in align["insertions"][:10]]
        dels = [f"{s['word']} ({s['count']}x)" for s in align["deletions"][:10]]
        for i in range(max(len(subs), len(ins), len(dels), 1)):
            cells = [(col[i] if i < len(col) else "") for col in (subs, ins, dels)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines
