"""Base model vs adapter on the test split: WER/CER, per-speaker breakdown, latency."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import pandas as pd
import torch

from vernacular.audio import read_audio
from vernacular.metrics import evaluate
from vernacular.models import device_name, load_whisper, pick_device
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

    @classmethod
    def from_dict(cls, values: dict) -> "EvaluationSettings":
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown evaluation setting(s) {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)


def load_adapter_model(base_model: dict, adapter_dir: str, device, merge: bool):
    """Base model with the adapter attached (PeftModel) or merged into its weights."""
    from peft import PeftModel

    model, processor = load_whisper(base_model, device="cpu")
    model = PeftModel.from_pretrained(model, adapter_dir)
    if merge:
        model = model.merge_and_unload()
    model.to(device)
    model.eval()
    return model, processor


def evaluate_adapter(test: pd.DataFrame, base_model: dict, adapter_dir: str,
                     settings: EvaluationSettings) -> tuple[dict, pd.DataFrame]:
    """Transcribe `test` with the base model and with the merged adapter; return (metrics, transcripts)."""
    if test.empty:
        raise ValueError("the test split is empty: nothing to evaluate (check split fractions and quarantine)")
    device = pick_device(settings.device)
    decoding = DecodeSettings.from_dict(settings.decoding)
    rows = test.sort_values("utterance_id").reset_index(drop=True)
    if settings.max_utterances:
        rows = rows.head(settings.max_utterances)
    audios = [read_audio(p) for p in rows["audio_path"]]
    audio_seconds = sum(len(a) for a in audios) / 16000

    base, processor = load_whisper(base_model, device=device)
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

    missing = [c for c in settings.group_columns if c not in rows]
    if missing:
        raise ValueError(f"evaluation.group_columns {missing} are not manifest columns; available: {list(rows.columns)}")
    extra = [c for c in settings.group_columns if c != "speaker"]
    transcripts = rows[["utterance_id", "speaker", *extra, "audio_path", "duration"]].copy()
    transcripts["reference"] = rows["text"]
    transcripts["base"] = results["base"]
    transcripts["adapter"] = results["adapter"]

    metrics = {"normaliser": settings.normaliser, "n_utterances": len(rows), "audio_seconds": audio_seconds,
               "device": device.type, "device_name": device_name(device)}
    for name in ("base", "adapter"):
        frame = transcripts.rename(columns={name: "hypothesis"})
        metrics[name] = evaluate(frame, group_cols=tuple(settings.group_columns), normaliser=settings.normaliser)
        metrics[name]["batch_seconds"] = results[name + "_seconds"]
        metrics[name]["batch_real_time_factor"] = results[name + "_seconds"] / audio_seconds
    base_wer = metrics["base"]["normalised"]["wer"]
    adapter_wer = metrics["adapter"]["normalised"]["wer"]
    metrics["wer_relative_reduction"] = (base_wer - adapter_wer) / base_wer if base_wer else None
    metrics["latency"] = latency
    metrics["latency"]["merged_equals_unmerged"] = merged_texts == unmerged_texts
    metrics["examples"] = _examples(transcripts, settings.substitution_examples)
    return metrics, transcripts


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


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def render_summary(metrics: dict, training: dict, vertical: str) -> str:
    """Markdown summary of an evaluation run."""
    base, adapter = metrics["base"], metrics["adapter"]
    lines = [f"# {vertical}: base model vs adapter", "",
             f"Test split: {metrics['n_utterances']} utterances, {metrics['audio_seconds'] / 60:.1f} min of audio. "
             f"Device: {metrics['device_name']}.", "",
             f"Normaliser: `{metrics['normaliser']}` (transformers' Whisper normaliser, applied to references and "
             "hypotheses alike); raw = text as written, case and punctuation included.", "",
             "| metric | base | adapter |", "|---|---|---|"]
    for kind in ("normalised", "raw"):
        for rate in ("wer", "cer"):
            lines.append(f"| {rate.upper()} ({kind}) | {_pct(base[kind][rate])} | {_pct(adapter[kind][rate])} |")
    lines += ["", f"Relative WER reduction (normalised): {_pct(metrics['wer_relative_reduction'])}.", "",
              "## Per speaker / voice (normalised WER)", "", "| speaker | utterances | base | adapter |",
              "|---|---|---|---|"]
    for speaker, values in base["by_speaker"].items():
        other = adapter["by_speaker"][speaker]
        lines.append(f"| {speaker} | {values['normalised']['n_utterances']} | {_pct(values['normalised']['wer'])} | "
                     f"{_pct(other['normalised']['wer'])} |")
    for column in [c for c in metrics["base"] if c.startswith("by_") and c != "by_speaker"]:
        lines += ["", f"## By {column[3:]} (normalised WER)", "", f"| {column[3:]} | utterances | base | adapter |",
                  "|---|---|---|---|"]
        for value, values in base[column].items():
            other = adapter[column][value]
            lines.append(f"| {value} | {values['normalised']['n_utterances']} | {_pct(values['normalised']['wer'])} | "
                         f"{_pct(other['normalised']['wer'])} |")
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
              f"{training['train_seconds'] / 60:.1f} min on {training['device_name']}",
              "", "## Top substitutions (adapter, normalised)", ""]
    for item in adapter["alignment"]["substitutions"][:10]:
        lines.append(f"- {item['reference']} -> {item['hypothesis']} ({item['count']}x)")
    lines += ["", "## Examples (most improved first)", ""]
    for ex in metrics["examples"][:8]:
        lines += [f"- **{ex['speaker']}** ref: {ex['reference']}", f"  - base: {ex['base']}",
                  f"  - adapter: {ex['adapter']}"]
    return "\n".join(lines) + "\n"
