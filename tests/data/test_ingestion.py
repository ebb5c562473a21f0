"""Ingestion nodes: several source parts with given splits, sentence case, the real speechocean layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from vernacular.data.manifest import ManifestError
from vernacular.common.text import sentence_case
from vernacular.pipelines.ingestion.nodes import load_source, split_corpus, validate_corpus
from tests.paths import REPO, SHARED

SPLIT = {"by": "given", "validation_fraction": 0.5, "test_fraction": 0.0, "salt": "vernacular",
         "test_only_speakers": []}
LIMITS = {"min_seconds": 0.3, "max_seconds": 30.0, "min_peak": 0.0001}
SPEECHOCEAN = SHARED / "data" / "speechocean762-mini"


def kaldi_part(folder: Path, prefix: str, speakers: list[str]) -> Path:
    (folder / "audio").mkdir(parents=True)
    wav, text, utt2spk = [], [], []
    for i, speaker in enumerate(speakers):
        utt = f"{prefix}{i:04d}"
        t = np.arange(16000) / 16000
        sf.write(folder / "audio" / f"{utt}.flac", (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16000)
        wav.append(f"{utt} audio/{utt}.flac")
        text.append(f"{utt} THE LUNGS ARE CLEAR I THINK")
        utt2spk.append(f"{utt} {speaker}")
    for name, content in (("wav.scp", wav), ("text", text), ("utt2spk", utt2spk)):
        (folder / name).write_text("\n".join(content) + "\n")
    return folder


def test_parts_with_given_splits_keep_them_and_carve_validation_by_speaker(tmp_path):
    train = kaldi_part(tmp_path / "train", "1", [f"00{i % 6}" for i in range(12)])
    test = kaldi_part(tmp_path / "test", "2", ["0100", "0101", "0100"])
    source = {"kind": "manifest", "text_case": "sentence",
              "parts": [{"path": str(train), "format": "kaldi", "split": "train"},
                        {"path": str(test), "format": "kaldi", "split": "test"}]}
    storage = {"root": str(tmp_path / "data"), "suffix": ""}
    raw = load_source(source, SPLIT, storage, "v")
    assert len(raw) == 15 and set(raw["given_split"]) == {"train", "test"}
    assert set(raw["text"]) == {"The lungs are clear I think"}
    clean, quarantine = validate_corpus(raw, LIMITS, storage, "v")
    manifest, report, summary = split_corpus(clean, quarantine, raw, SPLIT)
    assert summary["rows_in"] == 15 == summary["clean"] and summary["quarantined"] == 0
    assert set(manifest.loc[manifest["given_split"] == "test", "split"]) == {"test"}
    assert {"train", "validation"} == set(manifest.loc[manifest["given_split"] == "train", "split"])
    assert manifest.groupby("speaker")["split"].nunique().max() == 1  # validation is speaker-disjoint
    assert len(summary["source_manifests"]) == 2


def test_given_split_without_split_per_part_is_an_error(tmp_path):
    part = kaldi_part(tmp_path / "train", "1", ["a", "b"])
    raw = load_source({"kind": "manifest", "parts": [{"path": str(part)}]}, SPLIT, {"root": str(tmp_path / "data")}, "v")
    clean, quarantine = validate_corpus(raw, LIMITS, {"root": str(tmp_path / "data")}, "v")
    with pytest.raises(ValueError, match="split.by=given"):
        split_corpus(clean, quarantine, raw, SPLIT)


def test_missing_source_path_and_bad_text_case_are_clear_errors(tmp_path):
    with pytest.raises(ManifestError, match="source.path"):
        load_source({"kind": "manifest"}, SPLIT, {"root": str(tmp_path / "data")}, "v")
    part = kaldi_part(tmp_path / "p", "1", ["a"])
    with pytest.raises(ValueError, match="text_case"):
        load_source({"kind": "manifest", "path": str(part), "text_case": "title"}, SPLIT, {"root": str(tmp_path / "data")}, "v")


def test_sentence_case():
    assert sentence_case("MARK IS GOING TO SEE ELEPHANT") == "Mark is going to see elephant"
    assert sentence_case("I'M SURE I CAN") == "I'm sure I can"


@pytest.mark.parametrize(("env", "rows", "speakers"), [("speechocean", 1400, 70), ("speechocean-full", 2900, 145)])
def test_speechocean_parts_as_configured_in_the_speechocean_envs(env, rows, speakers, tmp_path):
    if not SPEECHOCEAN.is_dir() or not (SHARED / "data" / "vctk-p239-mini").is_dir():
        pytest.skip(f"{SPEECHOCEAN} or vctk-p239-mini not found (shared data sits beside the repository)")
    import yaml

    config = yaml.safe_load((REPO / f"conf/{env}/parameters.yml").read_text())
    source = config["accent"]["source"]
    for part in source["parts"] + source["replay"]["sets"]:  # the env's paths are relative to the project root
        part["path"] = str(REPO / part["path"])
    raw = load_source(source, config["accent"]["split"], {"root": str(tmp_path / "data")}, "accent")
    replayed = raw[raw["replay_set"].notna()]
    # 150 sentences of one native speaker (VCTK p239) replayed into training: real general speech
    assert list(replayed["replay_set"].unique()) == ["vctk-p239"] and len(replayed) == 150
    corpus = raw[raw["replay_set"].isna()]
    assert len(corpus) == rows and corpus["speaker"].nunique() == speakers
    assert raw.groupby("speaker")["given_split"].nunique().max() == 1
    assert raw["text"].str.match(r"^[A-Z][^A-Z]*$").mean() > 0.9  # sentence case (5% hold the word "I")


def test_the_full_speechocean_env_is_the_mini_env_plus_train_rest():
    import yaml

    mini, full = (yaml.safe_load((REPO / f"conf/{env}/parameters.yml").read_text())
                  for env in ("speechocean", "speechocean-full"))
    extra = full["accent"]["source"].pop("parts")
    assert [p for p in extra if not p["path"].endswith("/train_rest")] == mini["accent"]["source"].pop("parts")
    assert full == mini  # one run environment at a time: the two files must not drift apart
    suffixes = {yaml.safe_load((REPO / f"conf/{env}/globals.yml").read_text())["storage_suffix"]
                for env in ("speechocean", "speechocean-full")}
    assert len(suffixes) == 2  # their runs never share a data folder


def test_replay_adds_the_last_rows_of_a_real_corpus_to_train_only(tmp_path):
    main = kaldi_part(tmp_path / "main", "1", [f"s{i % 4}" for i in range(8)])
    (main / "text").write_text("".join(f"1{i:04d} Main sentence number {i}.\n" for i in range(8)))
    general = kaldi_part(tmp_path / "general", "9", ["g"] * 6)
    lines = [f"9{i:04d} GENERAL SENTENCE {i}." for i in range(5)] + ["90005 Main sentence number 3."]
    (general / "text").write_text("\n".join(lines) + "\n")
    split = {"by": "sentence", "validation_fraction": 0.2, "test_fraction": 0.3, "salt": "vernacular"}
    source = {"kind": "manifest", "path": str(main), "format": "kaldi",
              "replay": {"sets": [{"path": str(general), "format": "kaldi", "name": "general", "text_case": "sentence"},
                                  {"path": str(tmp_path / "absent"), "format": "kaldi"}], "utterances": 3}}
    storage = {"root": str(tmp_path / "data"), "suffix": ""}
    raw = load_source(source, split, storage, "v")
    replay = raw[raw["replay_set"].notna()] if "replay_set" in raw else raw.iloc[0:0]
    # the last three rows: the control reads the corpus from its start
    assert list(replay["utterance_id"]) == ["90003", "90004", "90005"]
    assert list(replay["text"])[:2] == ["General sentence 3.", "General sentence 4."]  # text_case: sentence
    clean, quarantine = validate_corpus(raw, LIMITS, storage, "v")
    manifest, report, summary = split_corpus(clean, quarantine, raw, split)
    assert summary["rows_in"] == 11 == summary["clean"] + summary["quarantined"]
    kept = manifest[manifest["replay_set"].notna()]
    assert set(kept["split"]) == {"train"}
    # "number 3" is a validation sentence of the main corpus (hash split): its replayed reading is rejected
    assert dict(zip(manifest["text"], manifest["split"]))["Main sentence number 3."] == "validation"
    assert "90005" in set(report["utterance_id"]) and summary["replay_rows"] == {"general": 2}
    assert any("also in the validation split" in r for r in report["reason"])


def test_replay_missing_corpus_can_be_an_error(tmp_path):
    main = kaldi_part(tmp_path / "main", "1", ["a", "b"])
    source = {"kind": "manifest", "path": str(main), "replay": {"sets": [{"path": str(tmp_path / "nope")}],
                                                               "utterances": 5, "when_missing": "error"}}
    with pytest.raises(ManifestError, match="source.replay"):
        load_source(source, SPLIT, {"root": str(tmp_path / "data")}, "v")
