"""Corpus formats: CSV, NeMo, Kaldi, audiofolder; each with broken rows and every quarantine reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from vernacular.data.manifest import (AudioLimits, ManifestError, default_root, detect_format, read_manifest,
                                 resolve_rows, split_manifest, validate_and_normalise)
from vernacular.pipelines.ingestion.nodes import load_source, split_corpus, validate_corpus
from tests.paths import SHARED

SPEECHOCEAN = SHARED / "data" / "speechocean762-mini"
MP3 = "MP3" in sf.available_formats()


def tone(seconds: float, rate: int = 16000, channels: int = 1, hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def write(path: Path, audio: np.ndarray, rate: int, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, rate, **kwargs)


def lines(path: Path, *content: str) -> None:
    path.write_text("".join(f"{line}\n" for line in content))


def ingest(path: Path, fmt: str = "auto", root: Path | None = None, out: Path | None = None):
    """read -> resolve -> validate, as the pipeline does; returns (rows, unreadable, clean, quarantine)."""
    rows, unreadable = read_manifest(path, fmt)
    root = root or default_root(path)
    resolved = resolve_rows(rows, root)
    clean, quarantine = validate_and_normalise(resolved, root, out or path.parent / "clean", AudioLimits())
    assert len(rows) == len(clean) + len(quarantine)  # no row lost in validation
    return rows, unreadable, clean, quarantine


def reasons(quarantine: pd.DataFrame) -> dict[str, str]:
    return dict(zip(quarantine["utterance_id"], quarantine["reason"]))


# --- Kaldi ------------------------------------------------------------------------------------------


@pytest.fixture
def kaldi_dir(tmp_path) -> Path:
    data = tmp_path / "data" / "test"
    write(data / "audio/a.wav", tone(1.0), 16000)
    write(data / "audio/b.flac", tone(1.0, 44100, channels=2), 44100, format="FLAC")
    write(data / "audio/c.ogg", tone(1.0, 22050), 22050, format="OGG")
    write(data / "audio/d.wav", tone(1.0), 16000)
    lines(data / "wav.scp",
          "a audio/a.wav", "b audio/b.flac", "c audio/c.ogg",
          "d audio/d.wav",                         # no transcript line
          "e ../../etc/passwd",                    # outside the corpus root
          "f audio/missing.wav",                   # file not found
          "p sox audio/a.wav -t wav - |",          # command pipe
          "q raw_mfcc.ark:1234",                   # archive offset (extended filename)
          "r")                                     # one field only
    lines(data / "text",
          "a HELLO THERE", "b NO PNEUMOTHORAX", "c HEART SIZE IS NORMAL", "e ROOT PASSWORD",
          "f MISSING FILE", "p PIPED AUDIO", "z NOBODY SAID THIS")
    lines(data / "utt2spk", "a s1", "b s2", "c s1", "d s2", "e s1", "f s1", "p s1")
    lines(data / "spk2gender", "s1 f", "s2 m", "s3 m extra")
    lines(data / "spk2age", "s1 30", "s2 41")
    return data


def test_kaldi_directory_rows_and_every_reason(kaldi_dir):
    rows, unreadable, clean, quarantine = ingest(kaldi_dir)
    assert sorted(rows["utterance_id"]) == ["a", "b", "c", "d", "e", "f"]
    assert len(rows) + len(unreadable) == 11  # 9 wav.scp lines + unknown transcript + bad spk2gender line
    assert sorted(clean["utterance_id"]) == ["a", "b", "c"]
    by_id = clean.set_index("utterance_id")
    assert by_id.loc["a", "text"] == "HELLO THERE"
    assert (by_id.loc["a", "speaker"], by_id.loc["a", "gender"], by_id.loc["a", "age"]) == ("s1", "f", "30")
    assert (by_id.loc["b", "gender"], by_id.loc["b", "age"]) == ("m", "41")
    for path in clean["audio_path"]:
        info = sf.info(path)
        assert (info.samplerate, info.channels) == (16000, 1)
    assert by_id["duration"].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=0.01)
    why = reasons(quarantine)
    assert why["d"].startswith("missing transcript")
    assert "outside the corpus root" in why["e"]
    assert why["f"].startswith("audio file not found")
    assert list(quarantine.columns[:7]) == ["utterance_id", "audio_path", "text", "speaker", "offset",
                                            "duration", "source_row"]
    assert {"gender", "age"} <= set(quarantine.columns)
    bad = list(unreadable["reason"])
    assert any(r.startswith("wav.scp entry is a command pipe; convert to files first: wav.scp:7") for r in bad)
    assert any(r.startswith("wav.scp entry is an extended filename") and "wav.scp:8" in r for r in bad)
    assert any(r.startswith("malformed wav.scp line: wav.scp:9") for r in bad)
    assert any(r.startswith("transcript for unknown utterance: text:7") and "'z'" in r for r in bad)
    assert any(r.startswith("malformed spk2gender line: spk2gender:3") for r in bad)
    assert not any("'p'" in r and r.startswith("transcript for unknown") for r in bad)  # reported once


def test_kaldi_segments_split_a_long_recording_and_unsegmented_is_too_long(tmp_path):
    seg = tmp_path / "segmented"
    write(seg / "long.wav", tone(40.0, 8000), 8000)
    lines(seg / "wav.scp", "rec1 long.wav", "piped sox long.wav -t wav - |")
    lines(seg / "segments",
          "u1 rec1 0 12.5", "u2 rec1 12.5 27", "u3 rec1 27 40",
          "u4 rec1 5 3",          # end <= start
          "u5 rec1 abc 3",        # not a number
          "u6 nosuch 0 1",        # unknown recording
          "u7 rec1 0",            # wrong field count
          "u8 rec1 35 50",        # runs 10 s past the end
          "u9 piped 0 2")         # recording is a command pipe
    lines(seg / "text", "u1 FIRST PART", "u2 SECOND PART", "u3 THIRD PART", "u4 BACKWARDS", "u8 TOO FAR")
    lines(seg / "utt2spk", "u1 s1", "u2 s1", "u3 s1", "u8 s1")
    rows, unreadable, clean, quarantine = ingest(seg)
    assert sorted(rows["utterance_id"]) == ["u1", "u2", "u3", "u8"]
    assert len(rows) + len(unreadable) == 9 + 1  # segments lines + the piped wav.scp line
    durations = dict(zip(clean["utterance_id"], clean["duration"]))
    assert durations == pytest.approx({"u1": 12.5, "u2": 14.5, "u3": 13.0}, abs=0.01)
    assert all(d < 30 for d in durations.values())
    assert set(clean["recording_id"]) == {"rec1"}
    assert dict(zip(clean["utterance_id"], clean["offset"]))["u2"] == 12.5
    assert reasons(quarantine)["u8"].startswith("segment runs past the end of the recording")
    bad = list(unreadable["reason"])
    assert any(r.startswith("malformed segments line: segments:4") for r in bad)
    assert any(r.startswith("malformed segments line: segments:5") and "not numbers" in r for r in bad)
    assert any(r.startswith("segment for unknown recording: segments:6") for r in bad)
    assert any(r.startswith("malformed segments line: segments:7") and "expected" in r for r in bad)
    assert any(r.startswith("segment of an unreadable recording: segments:9") for r in bad)
    assert not any(r.startswith("transcript for unknown") for r in bad)  # u4's text is not reported twice

    flat = tmp_path / "flat"
    write(flat / "long.wav", tone(40.0, 8000), 8000)
    lines(flat / "wav.scp", "rec1 long.wav")
    lines(flat / "text", "rec1 THE WHOLE THING")
    _, _, clean, quarantine = ingest(flat)
    assert clean.empty
    assert reasons(quarantine)["rec1"].startswith("too long: 40.0 s > 30.0 s")


def test_kaldi_without_text_file_is_a_manifest_error(tmp_path):
    lines(tmp_path / "wav.scp", "a a.wav")
    with pytest.raises(ManifestError, match="without a `text` file"):
        read_manifest(tmp_path)


def test_pipeline_nodes_count_unreadable_rows_and_carry_metadata(kaldi_dir, tmp_path):
    storage = {"root": str(tmp_path / "data"), "suffix": ""}
    raw = load_source({"kind": "manifest", "path": str(kaldi_dir)}, {}, storage, "v")
    assert len(raw) == 11
    assert raw["corpus_root"].iloc[0] == str(kaldi_dir.resolve())  # default root: the data directory
    clean, quarantine = validate_corpus(raw, {"min_seconds": 0.3, "max_seconds": 30.0, "min_peak": 1e-4}, storage, "v")
    split = {"by": "speaker", "validation_fraction": 0.1, "test_fraction": 0.2, "salt": "t",
             "test_only_speakers": []}
    manifest, report, summary = split_corpus(clean, quarantine, raw, split)
    assert (summary["rows_in"], summary["clean"], summary["quarantined"]) == (11, 3, 8)
    assert {"gender", "age", "split"} <= set(manifest.columns)
    assert summary["quarantine_reasons"]["wav.scp entry is a command pipe; convert to files first"] == 1


# --- NeMo -------------------------------------------------------------------------------------------


@pytest.fixture
def nemo_manifest(tmp_path) -> Path:
    root = tmp_path / "nemo"
    write(root / "audio/a.wav", tone(1.0, 24000), 24000)
    # Silent except for 10-15 s: the right segment is a tone, the wrong one would be silent.
    long = np.zeros(12 * 8000 + 8000 * 3, dtype=np.float32)
    long[10 * 8000:15 * 8000] = tone(5.0, 8000)
    write(root / "audio/long.wav", np.stack([long, long], axis=1), 8000)
    entries = [
        {"audio_filepath": "audio/a.wav", "duration": 1.0, "text": "plain clip", "lang": "en"},
        {"audio_filepath": "audio/long.wav", "offset": 10.0, "duration": 5.0, "text": "the tone part"},
        {"audio_filepath": "audio/long.wav", "offset": 0.0, "duration": 5.0, "text": "only silence"},
        {"audio_filepath": "audio/long.wav", "offset": 8.0, "duration": 12.0, "text": "past the end"},
        {"audio_filepath": "audio/long.wav", "offset": 20.0, "duration": 1.0, "text": "starts after"},
        {"audio_filepath": "audio/a.wav", "duration": 1.0, "text": ""},
        {"audio_filepath": "../../etc/passwd", "duration": 1.0, "text": "outside"},
        {"audio_filepath": "audio/a.wav", "duration": "abc", "text": "bad duration"},
    ]
    path = root / "train_manifest.json"
    lines(path, *[json.dumps(e) for e in entries], "{not json")
    if MP3:
        write(root / "audio/m.mp3", tone(1.5, 22050), 22050, format="MP3")
        with path.open("a") as handle:
            handle.write(json.dumps({"audio_filepath": "audio/m.mp3", "duration": 1.5, "text": "an mp3"}) + "\n")
    return path


def test_nemo_manifest_segments_and_reasons(nemo_manifest):
    assert detect_format(nemo_manifest) == "nemo"
    rows, unreadable, clean, quarantine = ingest(nemo_manifest)
    assert len(rows) + len(unreadable) == 9 + MP3
    assert sorted(unreadable["source_row"]) == [8, 9]
    assert any(r.startswith("malformed row") and "'abc' is not a number" in r for r in unreadable["reason"])
    assert any(r.startswith("malformed JSON line") for r in unreadable["reason"])
    by_text = clean.set_index("text")
    assert by_text.loc["the tone part", "duration"] == pytest.approx(5.0, abs=0.01)
    assert by_text.loc["plain clip", "lang"] == "en"
    why = dict(zip(quarantine["text"], quarantine["reason"]))
    assert why["only silence"].startswith("silent audio")  # offset is honoured: 0-5 s is silent
    assert why["past the end"].startswith("segment runs past the end")
    assert why["starts after"].startswith("segment starts after the end")
    assert why[""].startswith("missing transcript")
    assert "outside the corpus root" in why["outside"]
    if MP3:
        assert by_text.loc["an mp3", "duration"] == pytest.approx(1.5, abs=0.1)


def test_mp3_is_decoded_when_soundfile_can(tmp_path):
    if not MP3:
        pytest.skip("this libsndfile has no MP3 support")
    write(tmp_path / "x.mp3", tone(1.0, 44100, channels=2), 44100, format="MP3")
    lines(tmp_path / "m.csv", "audio_path,text", "x.mp3,hello")
    _, _, clean, _ = ingest(tmp_path / "m.csv")
    assert sf.info(clean["audio_path"].iloc[0]).samplerate == 16000


def test_jsonl_with_nemo_columns_asks_for_the_nemo_format(nemo_manifest):
    with pytest.raises(ManifestError, match="source.format: nemo"):
        read_manifest(nemo_manifest, "jsonl")


# --- Hugging Face audiofolder ----------------------------------------------------------------------


@pytest.fixture
def audiofolder(tmp_path) -> Path:
    root = tmp_path / "hf"
    write(root / "a.wav", tone(1.0, 48000, channels=2), 48000)
    write(root / "sub/b.flac", tone(1.0, 16000), 16000, format="FLAC")
    write(root / "c.ogg", tone(1.0, 32000), 32000, format="OGG")
    pd.DataFrame([
        ("a.wav", "first clip", "spk1", "scottish", "a clashing text column"),
        ("sub/b.flac", "second clip", "spk2", "irish", ""),
        ("c.ogg", "third clip", "spk1", "scottish", ""),
        ("gone.wav", "missing", "spk2", "irish", ""),
        ("a.wav", "", "spk2", "irish", ""),
        ("../../etc/passwd", "escape", "spk2", "irish", ""),
    ], columns=["file_name", "transcription", "speaker_id", "accent", "text"]).to_csv(root / "metadata.csv",
                                                                                     index=False)
    with (root / "metadata.csv").open("a") as handle:
        handle.write("a.wav,too,many,fields,here,really\n")
    return root


def test_audiofolder_rows_and_reasons(audiofolder):
    assert detect_format(audiofolder) == "audiofolder"
    rows, unreadable, clean, quarantine = ingest(audiofolder, out=audiofolder.parent / "clean")
    assert len(rows) + len(unreadable) == 7
    assert list(unreadable["source_row"]) == [8]  # the line in metadata.csv
    assert sorted(clean["text"]) == ["first clip", "second clip", "third clip"]
    by_text = clean.set_index("text")
    assert by_text.loc["second clip", "speaker"] == "spk2"
    assert by_text.loc["second clip", "accent"] == "irish"
    assert by_text.loc["first clip", "orig_text"] == "a clashing text column"
    assert Path(by_text.loc["second clip", "source_audio_path"]) == (audiofolder / "sub/b.flac").resolve()
    why = dict(zip(quarantine["text"], quarantine["reason"]))
    assert why["missing"].startswith("audio file not found")
    assert why[""].startswith("missing transcript")
    assert "outside the corpus root" in why["escape"]


@pytest.mark.parametrize("text_column, speaker_column", [("sentence", "client_id"), ("transcript", "speaker"),
                                                         ("text", None)])
def test_audiofolder_transcript_and_speaker_column_names(tmp_path, text_column, speaker_column):
    write(tmp_path / "a.wav", tone(1.0), 16000)
    record = {"file_name": "a.wav", text_column: "hello"}
    if speaker_column:
        record[speaker_column] = "v1"
    lines(tmp_path / "metadata.jsonl", json.dumps(record))
    rows, _ = read_manifest(tmp_path)
    assert rows["text"].tolist() == ["hello"]
    assert rows["speaker"].tolist() == ["v1" if speaker_column else "unknown"]


def test_audiofolder_without_transcript_column_is_a_manifest_error(tmp_path):
    lines(tmp_path / "metadata.csv", "file_name,label", "a.wav,3")
    with pytest.raises(ManifestError, match="transcription, text, sentence, transcript"):
        read_manifest(tmp_path)


# --- sidecar: audio files with a .txt transcript beside each ------------------------------------------


@pytest.fixture
def sidecar(tmp_path) -> Path:
    root = tmp_path / "side"
    write(root / "a.wav", tone(1.0, 48000), 48000)
    (root / "a.txt").write_text("first clip\n")
    write(root / "b.flac", tone(1.0), 16000, format="FLAC")
    (root / "b.txt").write_text("   \n")
    write(root / "c.ogg", tone(1.0, 32000), 32000, format="OGG")  # no transcript
    (root / "orphan.txt").write_text("no audio for me")
    (root / "README.md").write_text("not a transcript")
    return root


def test_sidecar_rows_and_reasons(sidecar):
    assert detect_format(sidecar) == "sidecar"
    rows, unreadable, clean, quarantine = ingest(sidecar, out=sidecar.parent / "clean")
    assert len(rows) + len(unreadable) == 4  # three audio files and one orphan transcript, none dropped
    assert rows["utterance_id"].tolist() == ["a", "b"] and rows["source_row"].tolist() == [1, 2]
    reasons = dict(zip(unreadable["source_row"], unreadable["reason"]))
    assert reasons == {3: "c.ogg: no transcript c.txt beside it",
                       4: "orphan.txt: transcript without an audio file of the same name"}
    assert clean["text"].tolist() == ["first clip"]
    assert quarantine["reason"].iloc[0].startswith("missing transcript")


def test_sidecar_glob_selects_files_and_a_bad_path_names_the_fix(sidecar, tmp_path):
    rows, unreadable = read_manifest(sidecar / "a.*")
    assert rows["utterance_id"].tolist() == ["a"] and unreadable.empty
    assert detect_format(sidecar / "*.wav") == "sidecar" and default_root(sidecar / "*.wav") == sidecar
    with pytest.raises(ManifestError, match="no audio files"):
        read_manifest(sidecar / "*.mp4")
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "nowhere" / "*.wav")


FLEURS = SHARED / "data" / "fleurs-mini"


@pytest.mark.skipif(not FLEURS.is_dir(), reason="shared fleurs-mini not found")
def test_real_fleurs_english_clips_as_a_sidecar_source(tmp_path):
    rows, unreadable, clean, quarantine = ingest(FLEURS / "fleurs-en-*.ogg", out=tmp_path / "clean")
    assert len(clean) == 10 and unreadable.empty and quarantine.empty
    assert clean["utterance_id"].str.startswith("fleurs-en-").all()
    assert (clean["duration"] > 3).all()


# --- CSV with metadata, detection, roots ------------------------------------------------------------


def test_csv_metadata_columns_survive_validation_and_split(tmp_path):
    write(tmp_path / "c/a.wav", tone(2.0), 16000)
    lines(tmp_path / "c/m.csv", "audio_path,text,speaker,gender,split,duration",
          "a.wav,one,s1,f,train,", "a.wav,two,s2,m,test,1.0", "a.wav,three,s2,m,,0",
          "a.wav,four,s1,f,,x", "../../etc/passwd,five,s1,f,,")
    rows, unreadable, clean, quarantine = ingest(tmp_path / "c/m.csv")
    assert list(unreadable["source_row"]) == [5]  # the line in m.csv
    assert "split" not in rows and rows["orig_split"].tolist()[:2] == ["train", "test"]
    assert clean["gender"].tolist() == ["f", "m"]
    why = dict(zip(quarantine["text"], quarantine["reason"]))
    assert why["three"].startswith("invalid segment")
    assert "outside the corpus root" in why["five"]
    manifest, _ = split_manifest(clean, "utterance", 0.1, 0.2)
    assert manifest["gender"].tolist() == ["f", "m"] and "split" in manifest


def test_detection_and_default_roots(tmp_path, kaldi_dir, audiofolder, nemo_manifest):
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio_path": "a.wav", "text": "x"}) + "\n")
    (tmp_path / "m.tsv").write_text("audio_path\ttext\n")
    assert detect_format(kaldi_dir) == "kaldi"
    assert detect_format(kaldi_dir / "wav.scp") == "kaldi"
    assert detect_format(audiofolder / "metadata.csv") == "audiofolder"
    assert detect_format(nemo_manifest) == "nemo"
    assert detect_format(tmp_path / "m.jsonl") == "jsonl"
    assert detect_format(tmp_path / "m.tsv") == "tsv"
    assert default_root(kaldi_dir) == kaldi_dir and default_root(nemo_manifest) == nemo_manifest.parent
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="source.format") as info:
        read_manifest(tmp_path / "empty")
    assert "empty" in str(info.value)
    with pytest.raises(ManifestError, match="unknown manifest format 'sphinx'"):
        read_manifest(tmp_path / "m.jsonl", "sphinx")


def test_source_root_overrides_the_default(kaldi_dir, tmp_path):
    # Paths relative to data/ instead of data/test/: wrong with the default root, right with source.root.
    lines(kaldi_dir / "wav.scp", "a test/audio/a.wav")
    lines(kaldi_dir / "text", "a HELLO")
    _, _, clean, quarantine = ingest(kaldi_dir, out=tmp_path / "c1")
    assert clean.empty and quarantine["reason"].iloc[0].startswith("audio file not found")
    _, _, clean, _ = ingest(kaldi_dir, root=kaldi_dir.parent, out=tmp_path / "c2")
    assert clean["utterance_id"].tolist() == ["a"]


# --- a real Kaldi corpus ------------------------------------------------------------------------------


def test_speechocean762_mini_reads_as_kaldi(tmp_path):
    folder = SPEECHOCEAN / "test"
    if not (folder / "wav.scp").is_file():
        pytest.skip(f"{folder} is not present")
    assert detect_format(folder) == "kaldi"
    rows, unreadable = read_manifest(folder)
    assert unreadable.empty
    assert len(rows) == 400 and rows["utterance_id"].is_unique
    resolved = resolve_rows(rows, default_root(folder))
    assert resolved["speaker"].nunique() == 20
    assert set(resolved["gender"]) <= {"m", "f"} and resolved["age"].notna().all()
    assert all(Path(p).is_file() for p in resolved["audio_path"])
    assert (resolved["text"].str.len() > 0).all()
    clean, quarantine = validate_and_normalise(resolved.head(3), folder, tmp_path / "clean")
    assert len(clean) == 3 and quarantine.empty
