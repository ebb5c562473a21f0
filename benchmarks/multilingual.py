"""Multilingual check: WER per language of a Whisper base model on real read speech, with the
language forced (`model.language`) and detected per clip (`auto`).

Reads a sidecar corpus (audio files with .txt transcripts; default: fleurs-mini beside the
checkout, files `fleurs-<lang>-<nnn>.ogg`), decodes each language's clips through the project's
own loading and decoding path (`vernacular.models.loading`, the Whisper family's `transcribe`),
and prints one table row per language and mode. For `auto` it also counts the clips whose
detected language is the right one.

    python -m benchmarks.multilingual --base-model embedded:whisper-base
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from vernacular.data.audio import read_audio
from vernacular.evaluation.metrics import error_rates, normalise
from vernacular.models.loading import load_model, resolve_base_model, with_speech_task

REPO = Path(__file__).resolve().parents[1]
FLEURS = REPO.parent / "shared" / "data" / "fleurs-mini"


def load_clips(folder: Path) -> dict[str, list[tuple[str, object, str]]]:
    """{language: [(name, audio, reference)]} from files named <corpus>-<lang>-<n>.<ext> with .txt beside."""
    clips: dict[str, list] = {}
    for audio_path in sorted(folder.glob("*-*-*.*")):
        transcript = audio_path.with_suffix(".txt")
        if audio_path.suffix == ".txt" or not transcript.is_file():
            continue
        language = audio_path.stem.split("-")[-2]
        clips.setdefault(language, []).append((audio_path.name, read_audio(audio_path), transcript.read_text().strip()))
    if not clips:
        raise FileNotFoundError(f"{folder}: no <corpus>-<lang>-<n> audio files with .txt transcripts")
    return clips


@torch.no_grad()
def detected_languages(model, processor, audios) -> list[str]:
    features = processor.feature_extractor(audios, sampling_rate=16000, return_tensors="pt").input_features
    ids = model.detect_language(features.to(model.device, model.dtype))
    return [processor.tokenizer.convert_ids_to_tokens(int(i)).strip("<|>") for i in ids.view(-1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default="embedded:whisper-base")
    parser.add_argument("--data", type=Path, default=FLEURS, help="sidecar corpus folder (default: %(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where embedded models are converted")
    parser.add_argument("--normaliser", default="basic")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    clips = load_clips(args.data)
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="vernacular-multilingual-"))
    record = resolve_base_model(args.base_model, cache)
    rows = []
    print(f"{args.base_model} on {args.data} ({sum(len(v) for v in clips.values())} clips), "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, greedy, "
          f"normaliser {args.normaliser}")
    print("| language | clips | ref words | WER forced | WER auto | detected right (auto) | s/clip forced |")
    print("|---|---|---|---|---|---|---|")
    for language, items in clips.items():
        audios, refs = [a for _, a, _ in items], [r for _, _, r in items]
        row = {"language": language, "clips": len(items)}
        for mode in ("forced", "auto"):
            model, processor, family = load_model(with_speech_task(record, language if mode == "forced" else "auto"))
            started = time.perf_counter()
            texts = family.transcribe(model, processor, audios)
            seconds = time.perf_counter() - started
            scores = error_rates([normalise(r, args.normaliser) for r in refs],
                                 [normalise(t, args.normaliser) for t in texts])
            row[f"wer_{mode}"], row["ref_words"] = scores["wer"], scores["n_ref_words"]
            row[f"seconds_per_clip_{mode}"] = seconds / len(items)
            row[f"hypotheses_{mode}"] = texts
            if mode == "auto":
                row["detected"] = detected_languages(model, processor, audios)
        right = sum(d == language for d in row["detected"])
        rows.append(row)
        print(f"| {language} | {row['clips']} | {row['ref_words']} | {100 * row['wer_forced']:.1f}% | "
              f"{100 * row['wer_auto']:.1f}% | {right}/{row['clips']} | {row['seconds_per_clip_forced']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
