"""Hand-computed checks of vernacular.evaluation.metrics."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest

from vernacular.evaluation.metrics import (
    NORMALISERS,
    alignment_examples,
    error_rates,
    evaluate,
    normalise,
    per_utterance_errors,
)


def test_one_substitution_one_deletion_over_four_words():
    r = error_rates(["the cat sat down"], ["the bat sat"])
    assert (r["hits"], r["substitutions"], r["deletions"], r["insertions"]) == (2, 1, 1, 0)
    assert r["n_ref_words"] == 4
    assert r["wer"] == pytest.approx(2 / 4)
    # characters: "the cat sat down" (16) vs "the bat sat": c->b, then " down" deleted (5)
    assert r["n_ref_chars"] == 16
    assert r["cer"] == pytest.approx(6 / 16)


def test_cer_single_substitution_and_deletion():
    assert error_rates(["abcd"], ["abxd"])["cer"] == pytest.approx(1 / 4)
    assert error_rates(["ab cd"], ["ab d"])["cer"] == pytest.approx(1 / 5)


def test_corpus_wer_pools_counts_instead_of_averaging():
    # per-utterance WERs are 1.0 and 0.0 (mean 0.5); pooled it is 1 error over 5 words
    r = error_rates(["a", "a b c d"], ["b", "a b c d"])
    assert r["wer"] == pytest.approx(1 / 5)
    assert r["n_utterances"] == 2


def test_whitespace_is_collapsed_before_counting():
    r = error_rates(["a\tb \n c"], ["  a b c "])
    assert r["wer"] == 0
    assert r["n_ref_words"] == 3
    assert r["cer"] == 0


def test_empty_reference_insertions_are_errors():
    r = error_rates(["", "a b"], ["x y", "a b"])
    assert r["n_ref_words"] == 2
    assert r["insertions"] == 2
    assert r["wer"] == pytest.approx(2 / 2)
    assert r["n_empty_references"] == 1
    assert r["empty_reference_insertions"] == 2


def test_all_references_empty_gives_none_rates():
    r = error_rates(["", "  "], ["hello", ""])
    assert r["wer"] is None and r["cer"] is None
    assert r["insertions"] == 1
    assert r["n_empty_references"] == 2


def test_empty_hypothesis_is_all_deletions():
    r = error_rates(["a b"], [""])
    assert r["deletions"] == 2 and r["wer"] == 1.0
    assert r["cer"] == 1.0


def test_no_utterances_and_length_mismatch():
    r = error_rates([], [])
    assert r["n_utterances"] == 0 and r["wer"] is None
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        error_rates(["a", "b"], ["a"])


def test_per_utterance_errors_match_corpus_totals():
    refs = ["the cat sat down", "", "a b"]
    hyps = ["the bat sat", "uh oh", "a b c"]
    rows = per_utterance_errors(refs, hyps)
    assert [(u["errors"], u["n_ref_words"]) for u in rows] == [(2, 4), (2, 0), (1, 2)]
    assert rows[0]["wer"] == pytest.approx(0.5)
    assert rows[1]["wer"] is None
    assert rows[2]["wer"] == pytest.approx(0.5)
    total = error_rates(refs, hyps)
    assert sum(u["errors"] for u in rows) == total["word_errors"] == 5
    assert total["wer"] == pytest.approx(5 / 6)


def test_normalisers():
    assert set(NORMALISERS) == {"none", "basic", "whisper_english"}
    assert normalise("  Hello,\n  World! ", "none") == "Hello, World!"
    assert normalise("Hello,  World!", "basic") == "hello world"
    # what transformers' EnglishTextNormalizer actually does
    assert normalise("Twelve percent", "whisper_english") == "12%"
    assert normalise("Mr. Smith's scan", "whisper_english") == "mister smith is scan"
    assert normalise("two thousand and twenty-four", "whisper_english") == "2024"
    assert normalise("uh hmm", "whisper_english") == ""
    # empty spelling mapping: British and American spellings stay different
    assert normalise("colour color", "whisper_english") == "colour color"
    with pytest.raises(ValueError, match="unknown normaliser"):
        normalise("x", "fancy")


def test_alignment_examples_counts_pairs():
    # each pair has a single minimal alignment, so the counts are not tie-broken by jiwer
    refs = ["the scan shows a nodule", "a nodule here", "the scan", "no change", "ok"]
    hyps = ["the can shows a module", "a module here", "the can", "change", "ok extra"]
    a = alignment_examples(refs, hyps)
    assert a["substitutions"] == [
        {"reference": "nodule", "hypothesis": "module", "count": 2},
        {"reference": "scan", "hypothesis": "can", "count": 2},
    ]
    assert a["insertions"] == [{"word": "extra", "count": 1}]
    assert a["deletions"] == [{"word": "no", "count": 1}]
    assert len(alignment_examples(refs, hyps, top_k=1)["substitutions"]) == 1


def test_evaluate_raw_normalised_and_groups():
    frame = pd.DataFrame(
        {
            "reference": ["Twelve percent.", "The cat sat down", "", "Hello world"],
            "hypothesis": ["12%", "the bat sat", "thank you", None],
            "speaker": np.array([7, 8, 8, 7]),
        }
    )
    out = evaluate(frame)
    json.dumps(out)  # plain Python types only
    assert out["normaliser"] == "whisper_english"
    # raw: "Twelve percent." vs "12%" = 1 sub + 1 del; cat: "The"->"the" sub, cat->bat sub,
    # down deleted; empty ref: 2 insertions; hello world vs nothing: 2 deletions
    assert out["raw"]["n_ref_words"] == 8
    assert out["raw"]["word_errors"] == 2 + 3 + 2 + 2
    # normalised: 12% matches; 1 sub + 1 del; 2 ins; 2 del
    assert out["normalised"]["n_ref_words"] == 1 + 4 + 2
    assert out["normalised"]["word_errors"] == 0 + 2 + 2 + 2
    assert out["normalised"]["wer"] == pytest.approx(6 / 7)
    assert out["normalised"]["n_empty_references"] == 1

    by = out["by_speaker"]
    assert set(by) == {"7", "8"}
    assert by["7"]["normalised"]["n_utterances"] == 2
    assert by["7"]["normalised"]["wer"] == pytest.approx(2 / 3)
    assert by["8"]["normalised"]["wer"] == pytest.approx(4 / 4)
    assert by["8"]["raw"]["n_empty_references"] == 1
    assert {"reference": "cat", "hypothesis": "bat", "count": 1} in out["alignment"]["substitutions"]
    assert {"word": "thank", "count": 1} in out["alignment"]["insertions"]


def test_evaluate_options_and_errors():
    frame = pd.DataFrame({"ref": ["A b"], "hyp": ["a b"], "site": ["x"]})
    out = evaluate(frame, reference_col="ref", hypothesis_col="hyp", group_cols=["site"], normaliser="none")
    assert out["raw"]["wer"] == pytest.approx(0.5)
    assert out["normalised"]["wer"] == pytest.approx(0.5)
    assert list(out["by_site"]) == ["x"]
    with pytest.raises(ValueError, match="speaker"):
        evaluate(frame, reference_col="ref", hypothesis_col="hyp")
    with pytest.raises(ValueError, match="unknown normaliser"):
        evaluate(frame, reference_col="ref", hypothesis_col="hyp", group_cols=(), normaliser="nope")
