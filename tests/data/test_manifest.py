"""Ingestion: manifest parsing, every quarantine reason, resampling, deterministic and stable splits."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from vernacular.data.manifest import (AudioLimits, ManifestError, assign_split, read_manifest, resolve_rows,
                                 split_manifest, validate_and_normalise)


def tone(seconds: float, rate: int = 16000, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


@pytest.fixture
def corpus(tmp_path):
    """A corpus folder with one good file per case and one broken file per quarantine reason."""
    root = tmp_path / "corpus"
    (root / "wav").mkdir(parents=True)
    sf.write(root / "wav/good.wav", tone(1.0), 16000)
    sf.write(root / "wav/stereo44k.wav", tone(1.0, 44100, channels=2), 44100)
    sf.write(root / "wav/good.flac", tone(0.8), 16000, format="FLAC")
    sf.write(root / "wav/short.wav", tone(0.1), 16000)
    sf.write(root / "wav/long.wav", tone(31.0), 16000)
    sf.write(root / "wav/silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    (root / "wav/corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEgarbage")
    sf.write(root / "wav/empty.wav", np.zeros(0, dtype=np.float32), 16000)
    (tmp_path / "outside.wav").write_bytes((root / "wav/good.wav").read_bytes())
    rows = [
        ("wav/good.wav", "The lungs are clear.", "s1", "good"),
        ("wav/stereo44k.wav", "No pneumothorax.", "s2", "stereo"),
        ("wav/good.flac", "Heart size is normal.", "s1", "flac"),
        ("wav/short.wav", "Too short.", "s1", "short"),
        ("wav/long.wav", "Too long.", "s2", "long"),
        ("wav/silent.wav", "Nothing here.", "s2", "silent"),
        ("wav/corrupt.wav", "Corrupt file.", "s3", "corrupt"),
        ("wav/empty.wav", "Empty file.", "s3", "empty"),
        ("wav/missing.wav", "Missing file.", "s3", "missing"),
        ("wav/good.wav", "", "s1", "no_text"),
        ("../outside.wav", "Outside the root.", "s1", "outside"),
        ("wav/good.wav", "Duplicate id.", "s1", "good"),
    ]
    frame = pd.DataFrame(rows, columns=["audio_path", "text", "speaker", "utterance_id"])
    frame.to_csv(root / "manifest.csv", index=False)
    return root


def run_validation(root, tmp_path):
    rows, unreadable = read_manifest(root / "manifest.csv")
    assert unreadable.empty
    resolved = resolve_rows(rows, root)
    return validate_and_normalise(resolved, root, tmp_path / "clean", AudioLimits())


def test_every_row_is_clean_or_quarantined_with_its_reason(corpus, tmp_path):
    clean, quarantine = run_validation(corpus, tmp_path)
    assert len(clean) + len(quarantine) == 12
    assert sorted(clean["utterance_id"]) == ["flac", "good", "stereo"]
    reasons = dict(zip(quarantine["utterance_id"], quarantine["reason"]))
    assert reasons["short"].startswith("too short")
    assert reasons["long"].startswith("too long") and "segments" in reasons["long"]
    assert reasons["silent"].startswith("silent audio")
    assert "cannot decode" in reasons["corrupt"] and "corrupt.wav" in reasons["corrupt"]
    assert "empty.wav" in reasons["empty"]
    assert reasons["missing"].startswith("audio file not found")
    assert reasons["no_text"].startswith("missing transcript")
    assert "outside the corpus root" in reasons["outside"]
    assert [r for r in quarantine["reason"] if r.startswith("duplicate utterance_id")]


def test_clean_audio_is_16k_mono_and_cached(corpus, tmp_path):
    clean, _ = run_validation(corpus, tmp_path)
    stereo = clean.set_index("utterance_id").loc["stereo"]
    info = sf.info(stereo["audio_path"])
    assert (info.samplerate, info.channels) == (16000, 1)
    assert stereo["duration"] == pytest.approx(1.0, abs=0.01)
    before = {p: (tmp_path / "clean" / p).stat().st_mtime_ns for p in [c.split("/")[-1] for c in clean["audio_path"]]}
    again, _ = run_validation(corpus, tmp_path)
    after = {p: (tmp_path / "clean" / p).stat().st_mtime_ns for p in before}
    assert before == after  # a rerun does not rewrite normalised audio
    assert list(again["audio_path"]) == list(clean["audio_path"])


def test_jsonl_with_a_malformed_line(tmp_path):
    sf.write(tmp_path / "a.wav", tone(1.0), 16000)
    lines = [json.dumps({"audio_path": "a.wav", "text": "Fine.", "speaker": "x"}), "{not json", "[1, 2]"]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    rows, unreadable = read_manifest(tmp_path / "m.jsonl")
    assert len(rows) == 1
    assert list(unreadable["source_row"]) == [2, 3]
    assert all(r.startswith("malformed JSON line") for r in unreadable["reason"])


def test_csv_row_with_extra_fields_is_reported(tmp_path):
    (tmp_path / "m.csv").write_text("audio_path,text\na.wav,Fine.\nb.wav,Too,many,fields\n")
    rows, unreadable = read_manifest(tmp_path / "m.csv")
    assert len(rows) == 1 and list(unreadable["source_row"]) == [3]  # the line in the file (header is line 1)


@pytest.mark.parametrize("content, message", [
    ("path,transcript\na.wav,Hi.\n", "missing required column"),
    ("", "no rows"),
])
def test_unusable_manifest_raises_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ManifestError, match=message) as info:
        read_manifest(path)
    assert "bad.csv" in str(info.value)


def test_unknown_extension_and_missing_manifest(tmp_path):
    (tmp_path / "m.xml").write_text("<x/>")
    with pytest.raises(ManifestError, match="source.format"):
        read_manifest(tmp_path / "m.xml")
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.csv")


def make_clean(n: int, speakers: int = 5) -> pd.DataFrame:
    return pd.DataFrame({"utterance_id": [f"u{i}" for i in range(n)], "audio_path": [f"/x/{i}.wav" for i in range(n)],
                         "text": [f"Sentence number {i % (n // 2)}." for i in range(n)],
                         "speaker": [f"spk{i % speakers}" for i in range(n)], "offset": 0.0, "duration": 1.0,
                         "source_row": range(1, n + 1)})


def test_sentence_split_keeps_each_sentence_in_one_split():
    manifest, rejected = split_manifest(make_clean(400), "sentence", 0.1, 0.2)
    assert rejected.empty
    assert manifest.groupby("text")["split"].nunique().max() == 1
    shares = manifest["split"].value_counts(normalize=True)
    assert 0.1 < shares["test"] < 0.3 and shares["train"] > 0.55


def test_speaker_split_is_speaker_disjoint_and_holds_out_test_speakers():
    manifest, _ = split_manifest(make_clean(400, speakers=40), "speaker", 0.1, 0.2, test_only_speakers=["spk3"])
    assert manifest.groupby("speaker")["split"].nunique().max() == 1
    assert set(manifest.loc[manifest["speaker"] == "spk3", "split"]) == {"test"}


def test_held_out_speaker_on_training_sentence_is_rejected_with_reason():
    clean = make_clean(200)
    manifest, rejected = split_manifest(clean, "sentence", 0.1, 0.2, test_only_speakers=["spk0"])
    assert set(manifest.loc[manifest["speaker"] == "spk0", "split"]) <= {"test"}
    assert len(manifest) + len(rejected) == len(clean)
    assert (rejected["speaker"] == "spk0").all()
    assert (rejected["reason"] == "held-out test speaker on a non-test sentence").all()


def test_split_is_stable_when_rows_are_appended():
    small, _ = split_manifest(make_clean(100), "utterance", 0.1, 0.2)
    big, _ = split_manifest(make_clean(300), "utterance", 0.1, 0.2)
    merged = small.merge(big, on="utterance_id", suffixes=("_small", "_big"))
    assert len(merged) == 100
    assert (merged["split_small"] == merged["split_big"]).all()


def test_bad_split_configuration_is_rejected():
    with pytest.raises(ValueError, match="split fractions"):
        assign_split("x", 0.5, 0.6)
    with pytest.raises(ValueError, match="split.by"):
        split_manifest(make_clean(10), "random", 0.1, 0.2)


def test_csv_rows_are_numbered_by_their_line_in_the_file(tmp_path):
    (tmp_path / "m.csv").write_text('audio_path,text\na.wav,Fine.\n\nb.wav,"two\nlines"\nc.wav,x,y\n')
    rows, unreadable = read_manifest(tmp_path / "m.csv")
    assert list(rows["source_row"]) == [2]
    assert list(unreadable["source_row"]) == [4, 5, 6] and "m.csv:6: more fields" in unreadable["reason"].iloc[2]
