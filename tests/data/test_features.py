"""Feature extraction: exact rebuild of Whisper's padded input, label ids, content-addressed cache."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from transformers import WhisperProcessor

from vernacular.data.audio import write_wav
from vernacular.data.features import extract_features, load_split
from vernacular.models.families.whisper import compute_log_mel, label_ids, pad_features


@pytest.fixture(scope="module")
def processor(embedded_base):
    return WhisperProcessor.from_pretrained(embedded_base["local_dir"])


@pytest.fixture
def manifest(tmp_path, speech_clips):
    rows = []
    for i, (text, audio) in enumerate(speech_clips):
        path = write_wav(tmp_path / f"clip{i}.wav", audio)
        rows.append({"utterance_id": f"u{i}", "audio_path": str(path), "text": text, "speaker": "v",
                     "split": "train" if i < 3 else "validation"})
    return pd.DataFrame(rows)


def test_trimmed_features_rebuild_the_padded_input(processor, speech_clips):
    audios = [audio for _, audio in speech_clips]
    full = processor.feature_extractor(audios, sampling_rate=16000, return_tensors="pt").input_features
    trimmed = compute_log_mel(processor.feature_extractor, audios)
    assert all(f.shape[1] < 3000 for f, _ in trimmed)  # short clips are stored trimmed
    rebuilt = pad_features([f for f, _ in trimmed], [p for _, p in trimmed])
    assert rebuilt.shape == full.shape
    # float16 storage: values in about [-1.5, 2] keep ~3 significant digits
    assert torch.allclose(rebuilt, full, atol=2e-3)


def test_label_ids_carry_the_transcription_prompt(processor):
    ids = label_ids(processor.tokenizer, "There is no pneumothorax.")
    assert ids[:2] == [50257, 50362] and ids[-1] == processor.tokenizer.eos_token_id
    assert processor.tokenizer.decode(ids, skip_special_tokens=True) == " There is no pneumothorax."


def test_cache_is_reused_and_invalidated_by_content(processor, manifest, tmp_path):
    first = extract_features(manifest, processor, tmp_path / "cache", progress=False)
    assert first["reused"] is False and first["counts"] == {"train": 3, "validation": 1}
    stored = tmp_path / "cache" / first["fingerprint"] / first["shards"]["train"][0]
    mtime = stored.stat().st_mtime_ns
    second = extract_features(manifest, processor, tmp_path / "cache", progress=False)
    assert second["reused"] is True and second["fingerprint"] == first["fingerprint"]
    assert stored.stat().st_mtime_ns == mtime
    changed = manifest.copy()
    changed.loc[0, "text"] = "A different transcript."
    third = extract_features(changed, processor, tmp_path / "cache", progress=False)
    assert third["fingerprint"] != first["fingerprint"] and third["reused"] is False
    train = load_split(third, "train")
    assert len(train["features"]) == 3 and len(train["labels"]) == 3
    assert processor.tokenizer.decode(train["labels"][train["utterance_ids"].index("u0")],
                                      skip_special_tokens=True) == " A different transcript."


def test_overlong_transcripts_are_reported_not_dropped_silently(processor, manifest, tmp_path):
    index = extract_features(manifest, processor, tmp_path / "cache", max_label_tokens=8, progress=False)
    assert index["skipped"] and all("tokens >" in s["reason"] for s in index["skipped"])
    assert sum(index["counts"].values()) + len(index["skipped"]) == len(manifest)


def test_splits_are_written_in_shards_and_read_back_whole(processor, manifest, tmp_path, monkeypatch):
    import vernacular.data.features as features

    whole = extract_features(manifest, processor, tmp_path / "one", progress=False)
    monkeypatch.setattr(features, "SHARD_UTTERANCES", 2)  # 3 train utterances -> shards of 2 + 1
    sharded = extract_features(manifest, processor, tmp_path / "two", progress=False)
    assert sharded["shards"]["train"] == ["train-00000.pt", "train-00001.pt"]
    assert sharded["shards"]["validation"] == ["validation-00000.pt"]
    a, b = load_split(whole, "train"), load_split(sharded, "train")
    assert a["utterance_ids"] == b["utterance_ids"] and a["labels"] == b["labels"]
    assert all(torch.equal(x, y) for x, y in zip(a["features"], b["features"]))
    (tmp_path / "two" / sharded["fingerprint"] / "train-00001.pt").unlink()
    with pytest.raises(FileNotFoundError, match="rerun the features stage"):
        load_split(sharded, "train")


def test_manifest_and_feature_index_paths_survive_moving_the_project(processor, speech_clips, tmp_path, monkeypatch):
    """Paths under the project folder are written relative to it: the folder can move with data/."""
    import shutil

    from vernacular.data.audio import read_audio
    from vernacular.data.manifest import AudioLimits, validate_and_normalise

    project = tmp_path / "project"
    (project / "incoming").mkdir(parents=True)
    rows = []
    for i, (text, audio) in enumerate(speech_clips[:3]):
        write_wav(project / "incoming" / f"c{i}.wav", audio)
        rows.append({"utterance_id": f"u{i}", "audio_path": str(project / "incoming" / f"c{i}.wav"), "text": text,
                     "speaker": "v", "offset": 0.0, "duration": None})
    monkeypatch.chdir(project)
    clean, quarantine = validate_and_normalise(pd.DataFrame(rows), project, "data/02_intermediate/v/audio",
                                               AudioLimits())
    assert len(clean) == 3 and len(quarantine) == 0
    assert all(not p.startswith("/") for p in clean["audio_path"]), list(clean["audio_path"])
    assert set(clean["source_audio_path"]) == {f"incoming/c{i}.wav" for i in range(3)}
    clean["split"] = "train"
    index = extract_features(clean, processor, "data/04_feature/v/cache", splits=("train",), progress=False)
    assert not index["path"].startswith("/")

    moved = tmp_path / "elsewhere" / "project"
    shutil.move(str(project), str(moved))
    monkeypatch.chdir(moved)
    assert len(read_audio(clean["audio_path"].iat[0])) > 0
    assert load_split(index, "train")["utterance_ids"] == ["u0", "u1", "u2"]
    outside = tmp_path / "outside.wav"
    write_wav(outside, speech_clips[0][1])
    from vernacular.common.storage import portable_path
    assert portable_path(outside) == str(outside.resolve())  # a corpus kept elsewhere stays absolute


def test_a_grown_corpus_computes_only_its_new_utterances_in_parallel_workers(processor, manifest, tmp_path,
                                                                             speech_clips):
    first = extract_features(manifest.iloc[:3], processor, tmp_path / "cache", splits=("train",), progress=False)
    assert (first["utterances_computed"], first["utterances_from_store"]) == (3, 0)
    grown = manifest.copy()
    grown["split"] = "train"
    extra = write_wav(tmp_path / "extra.wav", speech_clips[0][1][: 16000])
    grown = pd.concat([grown, pd.DataFrame([{"utterance_id": "u9", "audio_path": str(extra), "text": "new clip",
                                             "speaker": "w", "split": "train"}])], ignore_index=True)
    second = extract_features(grown, processor, tmp_path / "cache", splits=("train",), progress=False, workers=2)
    assert second["fingerprint"] != first["fingerprint"]
    assert (second["utterances_computed"], second["utterances_from_store"]) == (len(grown) - 3, 3)
    fresh = extract_features(grown, processor, tmp_path / "fresh", splits=("train",), progress=False)
    assert fresh["utterances_computed"] == len(grown)  # computed in-process from scratch
    a, b = load_split(second, "train"), load_split(fresh, "train")
    assert a["utterance_ids"] == b["utterance_ids"] and a["labels"] == b["labels"]
    assert a["durations"] == b["durations"] and a["pad_values"] == b["pad_values"]
    assert all(torch.equal(x, y) for x, y in zip(a["features"], b["features"]))
