"""Synthetic corpus plan and rendering: disjoint splits, held-out voices, determinism, cache."""

from __future__ import annotations

import pandas as pd
import pytest

from vernacular.data.corpus import SyntheticCorpusSettings, build_synthetic_corpus, load_sentences, plan_corpus
from vernacular.common.text import sentence_key
from vernacular.data.manifest import assign_split


def test_plan_is_deterministic_and_keeps_test_sentences_and_held_out_voices_out_of_training():
    settings = SyntheticCorpusSettings(readings_per_sentence=2)
    sentences = load_sentences("radiology")
    plan = plan_corpus(sentences, settings)
    assert plan.equals(plan_corpus(sentences, settings))
    assert plan.groupby("text")["planned_split"].nunique().max() == 1
    held = plan[plan["speaker"].isin(settings.heldout_voices)]
    assert len(held) > 10 and set(held["planned_split"]) == {"test"}
    train = plan[plan["planned_split"] == "train"]
    assert train.groupby("text").size().max() == 2  # two training voices per training sentence
    assert set(train["speaker"]) == set(settings.train_voices)
    for row in plan.sample(50, random_state=0).to_dict("records"):
        assert row["planned_split"] == assign_split(sentence_key(row["text"]), 0.1, 0.2, "vernacular")
    assert plan["rate"].between(*settings.rate_range).all() and plan["pitch"].between(*settings.pitch_range).all()
    assert plan["utterance_id"].is_unique


def test_max_sentences_takes_a_stable_subset():
    sentences = load_sentences("radiology")
    small = plan_corpus(sentences, SyntheticCorpusSettings(max_sentences=20))
    assert small["text"].nunique() == 20
    assert set(small["text"]) <= set(plan_corpus(sentences, SyntheticCorpusSettings())["text"])


def test_bad_settings_and_unknown_corpus_are_rejected():
    with pytest.raises(ValueError, match="both a training voice and a held-out voice"):
        SyntheticCorpusSettings.from_dict({"train_voices": ["en-us"], "heldout_voices": ["en-us"]})
    with pytest.raises(ValueError, match=r"unknown setting.*synthetic source\.voices"):
        SyntheticCorpusSettings.from_dict({"voices": ["en-us"]})
    with pytest.raises(ValueError, match="no sentence corpus"):
        load_sentences("cardiology")


def test_rendering_is_cached(tmp_path):
    settings = SyntheticCorpusSettings(max_sentences=4)
    manifest_path = build_synthetic_corpus(settings, tmp_path, progress=False)
    manifest = pd.read_csv(manifest_path)
    assert len(manifest) == 4 and (manifest["synth_duration"] > 0.5).all()
    wavs = sorted((tmp_path / "audio").glob("*.wav"))
    stamps = [w.stat().st_mtime_ns for w in wavs]
    build_synthetic_corpus(settings, tmp_path, progress=False)
    assert [w.stat().st_mtime_ns for w in wavs] == stamps
