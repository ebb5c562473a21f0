"""Bootstrap intervals, paired tests, term recall and the forgetting flag on hand-checkable inputs."""

from __future__ import annotations

import numpy as np
import pytest

from vernacular.evaluation.metrics import (bootstrap_rate, compare_systems, forgetting_check, paired_bootstrap,
                                per_utterance_char_errors, sign_test, term_recall, compare_term_recall,
                                worst_groups)


def test_bootstrap_interval_contains_the_pooled_estimate_and_is_deterministic():
    errors = [0, 1, 2, 0, 3, 1, 0, 0, 2, 1]
    totals = [4, 5, 6, 4, 7, 5, 3, 4, 6, 5]
    ci = bootstrap_rate(errors, totals, n_resamples=500, seed=3)
    assert ci["estimate"] == pytest.approx(10 / 49)  # pooled, not a mean of per-utterance rates
    assert ci["low"] <= ci["estimate"] <= ci["high"]
    assert ci["low"] < ci["high"]
    assert bootstrap_rate(errors, totals, n_resamples=500, seed=3) == ci
    assert bootstrap_rate(errors, totals, n_resamples=500, seed=4) != ci


def test_bootstrap_interval_narrows_with_more_data():
    rng = np.random.default_rng(0)
    totals = rng.integers(5, 15, size=400)
    errors = rng.binomial(totals, 0.3)
    small = bootstrap_rate(errors[:25], totals[:25], n_resamples=1000, seed=0)
    large = bootstrap_rate(errors, totals, n_resamples=1000, seed=0)
    assert (large["high"] - large["low"]) < 0.6 * (small["high"] - small["low"])
    assert large["low"] < 0.3 < large["high"]


def test_bootstrap_with_nothing_to_divide_by_gives_none():
    ci = bootstrap_rate([1, 2], [0, 0], n_resamples=10)
    assert ci["estimate"] is None and ci["low"] is None and ci["high"] is None
    with pytest.raises(ValueError):
        bootstrap_rate([1, 2], [3], n_resamples=10)


def test_identical_systems_have_zero_difference_and_p_one():
    errors = [0, 1, 2, 0, 3, 1, 0, 0, 2, 1]
    totals = [4, 5, 6, 4, 7, 5, 3, 4, 6, 5]
    result = paired_bootstrap(errors, errors, totals, n_resamples=300, seed=1)
    assert result["difference"] == 0
    assert result["low"] <= 0 <= result["high"]
    assert result["p_value"] == 1.0
    assert sign_test(errors, errors) == {"improved": 0, "worsened": 0, "ties": 10, "p_value": None}


def test_clearly_better_system_has_a_negative_interval_and_a_small_p():
    rng = np.random.default_rng(1)
    totals = rng.integers(5, 12, size=60)
    base = rng.binomial(totals, 0.6)
    adapter = rng.binomial(totals, 0.15)
    result = paired_bootstrap(base, adapter, totals, n_resamples=2000, seed=0)
    assert result["difference"] == pytest.approx((adapter.sum() - base.sum()) / totals.sum())
    assert result["high"] < 0
    assert result["p_value"] == pytest.approx(2 / 2001)  # no resample crosses 0: the floor
    assert result["p_value"] < 0.001
    assert paired_bootstrap(base, adapter, totals, n_resamples=2000, seed=0) == result
    # the other way round: same p, mirrored difference
    reverse = paired_bootstrap(adapter, base, totals, n_resamples=2000, seed=0)
    assert reverse["difference"] == pytest.approx(-result["difference"]) and reverse["low"] > 0


def test_noisy_small_difference_is_not_significant():
    # adapter better on 3 utterances, worse on 3, same totals: no evidence either way
    base = [2, 0, 2, 0, 2, 0, 1, 1]
    adapter = [0, 2, 0, 2, 0, 2, 1, 1]
    totals = [5] * 8
    result = paired_bootstrap(base, adapter, totals, n_resamples=1000, seed=0)
    assert result["difference"] == 0 and result["low"] < 0 < result["high"]
    assert result["p_value"] > 0.5
    assert sign_test(base, adapter)["p_value"] == 1.0


def test_sign_test_exact_values():
    # 6 improved, 0 worsened: two-sided p = 2 / 2**6
    assert sign_test([1] * 6 + [0], [0] * 6 + [0]) == {"improved": 6, "worsened": 0, "ties": 1,
                                                        "p_value": pytest.approx(2 / 64)}
    # 4 improved, 1 worsened: 2 * (1 + 5) / 32
    assert sign_test([1, 1, 1, 1, 0], [0, 0, 0, 0, 1])["p_value"] == pytest.approx(12 / 32)


def test_per_utterance_char_errors_sum_to_corpus_cer():
    rows = per_utterance_char_errors(["ab c", "xyz"], ["ab", "xyz"])
    assert rows == [{"errors": 2, "n_ref_chars": 4}, {"errors": 0, "n_ref_chars": 3}]


def test_compare_systems_reports_wer_and_cer_with_intervals():
    refs = ["the lungs are clear", "no pneumothorax", "mild cardiomegaly is present", "small effusion"]
    base = ["the lungs are clear", "no new motor ax", "mild cardio megaly is present", "small fusion"]
    adapter = refs
    result = compare_systems(refs, base, adapter, n_resamples=200, seed=0)
    wer = result["wer"]
    assert wer["base"]["estimate"] == pytest.approx(6 / 12)  # 1S+2I, 1S+1I, 1S over 12 words
    assert wer["adapter"]["estimate"] == 0 and wer["adapter"]["low"] == wer["adapter"]["high"] == 0
    assert wer["difference"]["difference"] == pytest.approx(-6 / 12)
    assert result["cer"]["base"]["estimate"] > 0 and result["cer"]["adapter"]["estimate"] == 0
    assert result["sign_test"] == {"improved": 3, "worsened": 0, "ties": 1, "p_value": pytest.approx(0.25)}


def test_term_recall_single_and_multi_word_terms():
    refs = ["No pneumothorax. Small pleural effusion.",
            "Pneumothorax on the left; free cash flow is up.",
            "Free cash flow was flat."]
    hyps = ["no new mothorax small pleural effusion",
            "pneumothorax on the left free cash big flow is up",
            "free cash flow was flat"]
    result = term_recall(refs, hyps, ["pneumothorax", "pleural effusion", "free cash flow", "EBITDA"], "basic")
    terms = result["terms"]
    assert terms["pneumothorax"] == {"occurrences": 2, "hits": 1, "recall": 0.5}
    assert terms["pleural effusion"] == {"occurrences": 1, "hits": 1, "recall": 1.0}
    # an insertion inside a multi-word term breaks it even though each word is matched
    assert terms["free cash flow"] == {"occurrences": 2, "hits": 1, "recall": 0.5}
    assert terms["EBITDA"] == {"occurrences": 0, "hits": 0, "recall": None}
    assert (result["occurrences"], result["hits"]) == (5, 3)
    assert result["recall"] == pytest.approx(0.6)


def test_term_recall_partial_multi_word_match_is_a_miss_and_case_is_normalised():
    refs = ["Basis points matter.", "fifty basis points"]
    hyps = ["basis pints matter", "fifty BASIS POINTS"]
    result = term_recall(refs, hyps, ["basis points", "  "], "basic")
    assert result["terms"]["basis points"] == {"occurrences": 2, "hits": 1, "recall": 0.5}
    assert result["ignored_terms"] == ["  "]
    assert term_recall([], [], ["x"], "basic")["recall"] is None


def test_term_recall_interval_resamples_utterances_with_terms_and_pairs_the_systems():
    # 12 utterances with terms (one has two occurrences), 3 without; base misses 6, adapter misses 2
    refs = ["a pneumothorax here"] * 6 + ["the pleural effusion"] * 5 + ["pneumothorax and pneumothorax"] + ["fine"] * 3
    base = ["a new mothorax here"] * 6 + ["the pleural effusion"] * 5 + ["pneumothorax and pneumothorax"] + ["fine"] * 3
    adapter = (["a pneumothorax here"] * 4 + ["a new mothorax here"] * 2 + ["the pleural effusion"] * 5
               + ["pneumothorax and pneumothorax"] + ["fine"] * 3)
    terms = ["pneumothorax", "pleural effusion"]
    compared = compare_term_recall(refs, base, adapter, terms, "basic", n_resamples=500, seed=1)
    assert compared["base"] == term_recall(refs, base, terms, "basic")
    assert compared["adapter"] == term_recall(refs, adapter, terms, "basic")
    stats = compared["statistics"]
    assert stats["n_utterances_with_terms"] == 12
    # pooled recall equals term_recall's
    assert stats["base"]["estimate"] == pytest.approx(term_recall(refs, base, terms, "basic")["recall"]) \
        == pytest.approx(7 / 13)
    assert stats["adapter"]["estimate"] == pytest.approx(11 / 13)
    assert stats["base"]["low"] < 7 / 13 < stats["base"]["high"]
    diff = stats["difference"]
    assert diff["difference"] == pytest.approx(4 / 13)  # adapter - base, positive = more terms right
    assert 0 < diff["low"] <= diff["high"] and diff["p_value"] < 0.05
    same = compare_term_recall(refs, base, base, terms, "basic", n_resamples=500, seed=1)["statistics"]
    assert same["difference"]["difference"] == 0 and same["difference"]["p_value"] == 1


def test_forgetting_flag_uses_the_margin_in_points():
    refs = ["one two three four five six seven eight nine ten"] * 2
    base = ["one two three four five six seven eight nine ten", "one two three four five six seven eight nine zen"]
    worse = ["one two three four five six seven eight nine pen", "one two three four five six seven eight mine zen"]
    # base 1/20 = 5%, adapter 3/20 = 15%: +10 pts
    flagged = forgetting_check(refs, base, worse, margin_pts=5.0, normaliser="basic", n_resamples=100)
    assert flagged["wer_change_pts"] == pytest.approx(10.0) and flagged["flagged"] is True
    assert flagged["base"]["wer"] == pytest.approx(0.05) and flagged["adapter"]["wer"] == pytest.approx(0.15)
    assert forgetting_check(refs, base, worse, margin_pts=10.0, normaliser="basic", n_resamples=100)["flagged"] is False
    better = forgetting_check(refs, worse, base, margin_pts=0.0, normaliser="basic", n_resamples=100)
    assert better["wer_change_pts"] == pytest.approx(-10.0) and better["flagged"] is False


def test_worst_groups_orders_by_adapter_wer():
    def group(wer, n=3):
        return {"normalised": {"wer": wer, "n_utterances": n}}

    base = {"a": group(0.5), "b": group(0.4), "c": group(0.9)}
    adapter = {"a": group(0.1), "b": group(0.3), "c": group(0.2)}
    assert [w["group"] for w in worst_groups(base, adapter, 2)] == ["b", "c"]
    assert worst_groups(base, adapter, 5)[0] == {"group": "b", "n_utterances": 3, "base_wer": 0.4, "adapter_wer": 0.3}


def test_a_single_utterance_gets_no_interval_and_no_p():
    ci = bootstrap_rate([3], [10], n_resamples=50)
    assert ci["estimate"] == pytest.approx(0.3) and ci["low"] is None and ci["high"] is None
    result = paired_bootstrap([3], [1], [10], n_resamples=50)
    assert result["difference"] == pytest.approx(-0.2) and result["p_value"] is None and result["low"] is None


def test_loops_count_hypotheses_over_twice_their_reference():
    from vernacular.evaluation.metrics import count_loops

    refs = ["the lungs are clear", "no", "small effusion", ""]
    hyps = ["the lungs are clear", "no no no", "small small small small small", "thank you for watching"]
    assert count_loops(refs, hyps, "basic") == {"count": 3, "n_utterances": 4, "ratio": 2.0}
    assert count_loops(refs[:1], ["the lungs are clear and the heart is fine ok"], "basic")["count"] == 1
    assert count_loops(refs[:1], ["the lungs are clear and the heart"], "basic")["count"] == 0


def test_bands_label_numbers_by_their_highest_lower_bound():
    from vernacular.evaluation.metrics import band_labels

    bands = {"adults": 16, "children": 0}
    assert band_labels([6, 15.9, 16, 43, "21", None, "n/a", -1], bands, "age") == [
        "children", "children", "adults", "adults", "adults", "unknown", "unknown", "below 0"]
    with pytest.raises(ValueError, match="group_bands.age: each band needs a numeric lower bound"):
        band_labels([1], {"children": "young"}, "age")
    with pytest.raises(ValueError, match="group_bands.age: give at least one band"):
        band_labels([1], {}, "age")


def test_only_speakers_whose_whole_interval_is_worse_are_listed():
    from vernacular.evaluation.metrics import groups_worse_beyond_interval

    refs = ["the lungs are clear today"] * 12
    good, bad = ["the lungs are clear today"] * 12, ["the lungs were clean today"] * 12
    noisy = ["the lungs are clear today"] * 11 + ["the lungs were clean today"]
    by_speaker = {"worse": compare_systems(refs, good, bad, n_resamples=300, seed=1),
                  "better": compare_systems(refs, bad, good, n_resamples=300, seed=1),
                  "one_slip": compare_systems(refs, good, noisy, n_resamples=300, seed=1)}
    worse = groups_worse_beyond_interval(by_speaker)
    assert [w["group"] for w in worse] == ["worse"]
    assert worse[0]["difference"] == pytest.approx(0.4) and worse[0]["low"] > 0
    assert worse[0]["base_wer"] == 0 and worse[0]["adapter_wer"] == pytest.approx(0.4)
