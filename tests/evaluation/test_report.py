"""Scoring a transcripts frame, the Markdown summary, the plots and the forgetting control set."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from vernacular.evaluation.report import render_summary
from vernacular.evaluation.run import (EvaluationSettings, ForgettingSettings, control_set,
                                   score_transcripts)
from vernacular.evaluation.metrics import forgetting_check
from vernacular.evaluation.plots import plot_group_wer, plot_utterance_scatter

REFS = ["There is no pneumothorax.", "Mild cardiomegaly is present.", "The lungs are clear.",
        "Small left pleural effusion.", "No focal consolidation.", "Stable pleural effusion on the right."]
BASE = ["There is no new motor ax.", "Mild cardio megaly is present.", "The lungs are clear.",
        "Small left pleural fusion.", "No vocal consolidation.", "Stable pleural effusion on the right."]
ADAPTER = ["There is no pneumothorax.", "Mild cardiomegaly is present.", "The lungs are clear.",
           "Small left pleural effusion.", "No focal consolidation.", "Stable pleural infusion on the right."]

TRAINING = {"trainable_params": 1000, "total_params": 100000, "trainable_fraction": 0.01, "steps": 2,
            "train_examples": 8, "train_seconds": 60.0, "device_name": "cpu"}


@pytest.fixture(scope="module")
def transcripts() -> pd.DataFrame:
    return pd.DataFrame({
        "utterance_id": [f"u{i}" for i in range(6)],
        "speaker": ["en-us+m3", "en-us+m3", "en-029+m1", "en-029+m1", "en-gb-x-rp+f2", "en-gb-x-rp+f2"],
        "accent": ["us", "us", "caribbean", "caribbean", "gb", "gb"],
        "reference": REFS, "base": BASE, "adapter": ADAPTER,
    })


@pytest.fixture(scope="module")
def settings() -> EvaluationSettings:
    return EvaluationSettings.from_dict({
        "normaliser": "basic", "group_columns": ["speaker", "accent"], "worst_speakers": 2,
        "key_terms": ["pneumothorax", "pleural effusion", "consolidation", "atelectasis"],
        "bootstrap": {"n_resamples": 300, "seed": 7},
    })


@pytest.fixture(scope="module")
def metrics(transcripts, settings) -> dict:
    scored = score_transcripts(transcripts, settings)
    refs = ["the weather is fine today", "we will meet at noon"]
    scored["forgetting"] = {"enabled": True, "source": "synthetic: test", **forgetting_check(
        refs, refs, ["the weather is fine to day", "we will meet at noon"], margin_pts=2.0, normaliser="basic",
        n_resamples=100)}
    scored.update({"normaliser": "basic", "n_utterances": 6, "audio_seconds": 12.0, "device": "cpu",
                   "device_name": "cpu", "vertical": "radiology"})
    segment = {"seconds_per_segment": 1.0, "real_time_factor": 0.05, "segments": 1, "mean_segment_seconds": 20.0}
    scored["latency"] = {"base": dict(segment), "adapter_unmerged": dict(segment), "adapter": dict(segment),
                         "merged_equals_unmerged": True}
    return scored


def test_score_keeps_existing_keys_and_adds_statistics(metrics):
    json.dumps(metrics)  # plain JSON types only
    for name in ("base", "adapter"):
        normalised = metrics[name]["normalised"]
        assert {"wer", "cer", "wer_ci", "cer_ci"} <= set(normalised)
        low, high = normalised["wer_ci"]
        assert low <= normalised["wer"] <= high
        assert set(metrics[name]["by_speaker"]) == {"en-us+m3", "en-029+m1", "en-gb-x-rp+f2"}
        assert set(metrics[name]["by_accent"]) == {"us", "caribbean", "gb"}
    overall = metrics["statistics"]["overall"]["wer"]
    assert overall["base"]["estimate"] == pytest.approx(metrics["base"]["normalised"]["wer"])
    assert metrics["wer_difference"]["difference"] == pytest.approx(
        metrics["adapter"]["normalised"]["wer"] - metrics["base"]["normalised"]["wer"])
    assert set(metrics["statistics"]["by_accent"]) == {"us", "caribbean", "gb"}
    assert len(metrics["per_utterance"]["base_wer"]) == 6
    # the adapter got every word of utterances 0-4 right and one wrong in utterance 5 (6 words)
    assert metrics["per_utterance"]["adapter_wer"] == [0, 0, 0, 0, 0, pytest.approx(1 / 6)]


def test_worst_speakers_and_term_recall(metrics):
    worst = metrics["worst_speakers"]
    assert [w["group"] for w in worst][0] == "en-gb-x-rp+f2" and len(worst) == 2
    terms = metrics["key_terms"]
    assert terms["base"]["terms"]["pneumothorax"]["recall"] == 0.0
    assert terms["adapter"]["terms"]["pneumothorax"]["recall"] == 1.0
    assert terms["base"]["terms"]["pleural effusion"] == {"occurrences": 2, "hits": 1, "recall": 0.5}
    assert terms["adapter"]["terms"]["pleural effusion"] == {"occurrences": 2, "hits": 1, "recall": 0.5}
    assert terms["adapter"]["terms"]["atelectasis"]["occurrences"] == 0
    # 4 occurrences: pneumothorax 1, pleural effusion 2, consolidation 1
    assert terms["base"]["recall"] == pytest.approx(2 / 4) and terms["adapter"]["recall"] == pytest.approx(3 / 4)
    stats = terms["statistics"]
    assert stats["base"]["estimate"] == pytest.approx(2 / 4) and stats["adapter"]["estimate"] == pytest.approx(3 / 4)
    assert stats["difference"]["difference"] == pytest.approx(1 / 4) and stats["n_utterances_with_terms"] == 4


def test_summary_shows_intervals_tests_terms_forgetting_and_all_error_kinds(metrics):
    training = dict(TRAINING)
    text = render_summary(metrics, training, "radiology")
    assert "WER (normalised)" in text and "basic" in text
    overall = metrics["statistics"]["overall"]["wer"]
    b = overall["base"]
    assert f"WER {100 * b['estimate']:.1f}% [{100 * b['low']:.1f}, {100 * b['high']:.1f}] ->" in text
    assert f"{100 * overall['difference']['difference']:+.1f} pts" in text
    assert "Sign test" in text and "paired bootstrap" in text
    assert "## Worst speakers (top 2" in text
    assert "| pneumothorax | 1 | 0.0% | 100.0% |" in text and "Not in this test split (1 of 4 terms): atelectasis." in text
    term_stats = metrics["key_terms"]["statistics"]
    assert (f"base 50.0% [{100 * term_stats['base']['low']:.1f}, {100 * term_stats['base']['high']:.1f}] -> "
            f"adapter 75.0%") in text and "95% intervals over utterances" in text
    assert "## Forgetting check" in text and "FLAGGED" in text  # +20 pts on the control set
    assert "## By accent" in text and "**Caution:** only 6 test utterances" in text
    assert "| substitutions | insertions | deletions |" in text
    assert "motor" in text  # an insertion of the base model ("new motor ax")


def test_group_plot_has_two_bars_per_group_with_error_bars(metrics, settings):
    fig = plot_group_wer(metrics["statistics"], settings.group_columns, title="t")
    speaker_ax, accent_ax = fig.axes[:2]
    assert len(speaker_ax.patches) == 2 * (1 + 3) and len(accent_ax.patches) == 2 * (1 + 3)
    heights = sorted(round(p.get_height(), 6) for p in speaker_ax.patches[:4])
    assert heights[-1] == pytest.approx(100 * max(
        [metrics["statistics"]["overall"]["wer"]["base"]["estimate"]]
        + [g["wer"]["base"]["estimate"] for g in metrics["statistics"]["by_speaker"].values()]))
    assert [t.get_text() for t in speaker_ax.get_xticklabels()][0] == "all"
    from matplotlib.container import BarContainer

    bars = [c for c in speaker_ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 2 and all(b.errorbar is not None for b in bars)
    # the "all" base bar's error bar spans the bootstrap interval
    segment = bars[0].errorbar.lines[2][0].get_segments()[0]
    ci = metrics["statistics"]["overall"]["wer"]["base"]
    assert [y for _, y in segment] == pytest.approx([100 * ci["low"], 100 * ci["high"]])
    fig.savefig(__import__("io").BytesIO(), format="png")


def test_scatter_has_one_point_per_scored_utterance(metrics):
    per_utt = metrics["per_utterance"]
    fig = plot_utterance_scatter(per_utt["base_wer"], per_utt["adapter_wer"], labels=per_utt["speaker"])
    ax = fig.axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 6
    assert len(ax.collections) == 3  # one colour per speaker
    fig = plot_utterance_scatter([0.5, None, 2.0], [0.1, 0.0, 0.3])  # no WER for an empty reference
    points = fig.axes[0].collections[0].get_offsets()
    assert len(points) == 2 and points[1][0] == pytest.approx(150)  # capped


def test_control_set_is_cached_and_skips_training_sentences(tmp_path):
    settings = ForgettingSettings(sentences=3, voice="en-us")
    first, origin = control_set(settings, tmp_path)
    assert origin["kind"] == "synthetic" and set(first["control_set"]) == {"synthetic-en-us"}
    assert len(first) == 3 and all(p.endswith(".wav") for p in first["audio_path"])
    stamps = {p: __import__("os").stat(p).st_mtime_ns for p in first["audio_path"]}
    again, _ = control_set(settings, tmp_path)
    assert again.equals(first) and all(__import__("os").stat(p).st_mtime_ns == t for p, t in stamps.items())
    skipped, _ = control_set(settings, tmp_path, exclude_texts=[first["text"][0].upper()], limit=2)
    assert len(skipped) == 2 and first["text"][0] not in set(skipped["text"])
    assert skipped["text"][0] == first["text"][1]


def test_control_set_from_a_manifest(tmp_path):
    from vernacular.data.synth import synthesize, write_wav

    write_wav(tmp_path / "a.wav", synthesize("Good morning everyone.", "en-us"))
    (tmp_path / "manifest.csv").write_text("audio_path,text\na.wav,Good morning everyone.\na.wav,\n")
    rows, origin = control_set(ForgettingSettings(manifest=str(tmp_path / "manifest.csv")), tmp_path / "unused")
    assert origin["kind"] == "real" and origin["sets"] == ["manifest.csv"]
    assert rows["text"].tolist() == ["Good morning everyone."]
    assert rows["audio_path"][0] == str((tmp_path / "a.wav").resolve())


def test_control_set_from_real_fleurs_english_clips_and_a_clip_without_transcript(tmp_path, caplog):
    from tests.paths import SHARED_DATA

    fleurs = SHARED_DATA / "fleurs-mini"
    if not fleurs.is_dir():
        pytest.skip(f"{fleurs} not found (shared data sits beside the repository)")
    rows, _ = control_set(ForgettingSettings(manifest=str(fleurs / "fleurs-en-*.ogg"), manifest_format="sidecar"),
                          tmp_path / "unused")
    assert len(rows) == 10 and all(name.startswith("fleurs-en-") for name in rows["utterance_id"])
    assert all(Path(p).read_bytes()[:4] == b"OggS" for p in rows["audio_path"])
    assert rows["text"].tolist() == [(fleurs / f"{u}.txt").read_text().strip() for u in rows["utterance_id"]]

    import shutil
    for source in sorted(fleurs.glob("fleurs-en-00[01].*")):
        shutil.copy(source, tmp_path / source.name)
    (tmp_path / "fleurs-en-000.txt").unlink()
    with caplog.at_level("WARNING"):
        rows, _ = control_set(ForgettingSettings(manifest=str(tmp_path), manifest_format="sidecar"),
                              tmp_path / "unused")
    assert rows["utterance_id"].tolist() == ["fleurs-en-001"]
    assert "1 entries left out" in caplog.text and "fleurs-en-000" in caplog.text


def _sidecar_corpus(folder: Path, sentences: list[str]) -> Path:
    from vernacular.data.synth import synthesize, write_wav

    folder.mkdir(parents=True)
    for i, text in enumerate(sentences):
        write_wav(folder / f"clip-{i}.wav", synthesize(text, "en-gb-x-rp"))
        (folder / f"clip-{i}.txt").write_text(text)
    return folder


def test_control_sets_use_those_present_skip_training_text_and_name_each(tmp_path):
    a = _sidecar_corpus(tmp_path / "a", ["The train was late.", "We walked home.", "It rained all day."])
    b = _sidecar_corpus(tmp_path / "b", ["Close the door."])
    settings = ForgettingSettings.from_dict({
        "sets": [{"path": str(a), "format": "sidecar"}, {"path": str(b / "*.wav"), "format": "sidecar", "name": "bee"},
                 {"path": str(tmp_path / "absent"), "format": "kaldi"}], "sentences": 2})
    rows, origin = control_set(settings, None, exclude_texts=["we walked home"])
    assert rows["text"].tolist() == ["The train was late.", "It rained all day.", "Close the door."]
    assert rows["control_set"].tolist() == ["a", "a", "bee"]
    assert origin["kind"] == "real" and origin["sets"] == ["a", "bee"]
    assert origin["missing"] == [str(tmp_path / "absent")]


def test_control_sets_all_missing_fall_back_to_marked_synthetic_speech_or_raise(tmp_path, caplog):
    spec = {"sets": [{"path": str(tmp_path / "absent")}], "sentences": 2}
    with caplog.at_level("WARNING"):
        rows, origin = control_set(ForgettingSettings.from_dict(spec), tmp_path / "cache")
    assert origin["kind"] == "synthetic" and len(rows) == 2 and "absent" in origin["description"]
    assert "synthetic espeak-ng speech instead" in caplog.text
    with pytest.raises(FileNotFoundError, match="none of .*absent.* exists"):
        control_set(ForgettingSettings.from_dict({**spec, "when_missing": "error"}), tmp_path / "cache")
    with pytest.raises(ValueError, match="when_missing"):
        ForgettingSettings.from_dict({"when_missing": "ignore"})


def test_settings_reject_unknown_keys():
    with pytest.raises(ValueError, match="forgetting"):
        EvaluationSettings.from_dict({"forgetting": {"voices": "en-us"}})
    with pytest.raises(ValueError, match="bootstrap"):
        EvaluationSettings.from_dict({"bootstrap": {"n_resamples": 0}})


def test_evaluation_html_page_leads_with_the_change_in_words_then_figures_then_statistics(metrics, settings):
    from html.parser import HTMLParser

    from vernacular.common.htmlpage import figure_png
    from vernacular.evaluation.report import plain_headline, render_evaluation_html

    training = dict(TRAINING)
    per_utt = metrics["per_utterance"]
    figures = [(figure_png(plot_group_wer(metrics["statistics"], settings.group_columns)), "per group"),
               (figure_png(plot_utterance_scatter(per_utt["base_wer"], per_utt["adapter_wer"])), "per recording")]
    page = render_evaluation_html(metrics, training, "radiology", figures)

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.order, self.images, self.stack, self.paragraphs = [], [], [], []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag not in ("meta", "img", "br"):
                self.stack.append(tag)
            if tag == "img":
                self.images.append(attrs["src"])
                self.order.append("img")
            if tag in ("h2", "table"):
                self.order.append(tag)

        def handle_endtag(self, tag):
            assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"

        def handle_data(self, data):
            if self.stack and self.stack[-1] == "p" and data.strip():
                self.paragraphs.append(data.strip())

    parsed = Page()
    parsed.feed(page)
    assert not parsed.stack
    overall = metrics["statistics"]["overall"]["wer"]
    first = parsed.paragraphs[0]
    assert first == plain_headline(metrics, "radiology")[0]
    assert first.startswith("With the adapter, the word error rate on the radiology test set (6 recordings") and \
        f"{100 * overall['base']['estimate']:.1f}%" in first
    assert "flagged" in parsed.paragraphs[1] and "synthetic speech" in parsed.paragraphs[1]  # worse beyond the margin
    assert len(parsed.images) == 2 and all(src.startswith("data:image/png;base64,") for src in parsed.images)
    assert parsed.order.index("img") < parsed.order.index("table")  # figures before the statistics
    assert "<th>metric</th>" in page and "Sign test" in page
    assert "<script" not in page and 'src="http' not in page  # self-contained


def test_plain_headline_says_better_worse_or_no_reliable_change():
    from vernacular.evaluation.report import plain_headline

    def metrics(low, high, diff):
        return {"n_utterances": 50, "audio_seconds": 600.0, "wer_relative_reduction": 0.4,
                "statistics": {"bootstrap": {"confidence": 0.95}, "overall": {"wer": {
                    "base": {"estimate": 0.30}, "adapter": {"estimate": 0.30 + diff},
                    "difference": {"difference": diff, "low": low, "high": high}}}}}

    (better,) = plain_headline(metrics(-0.16, -0.08, -0.12), "accent")
    assert "fell from 30.0% to 18.0%: 12.0 points lower (95% interval: 8.0 to 16.0 points)" in better
    assert "about 40% of the base model's word errors are gone" in better
    (worse,) = plain_headline(metrics(0.01, 0.05, 0.03), "accent")
    assert "rose from 30.0% to 33.0%" in worse and "worse" in worse
    (unclear,) = plain_headline(metrics(-0.04, 0.02, -0.01), "accent")
    assert "interval includes no change" in unclear and "-4.0 to +2.0" in unclear
    (tiny,) = plain_headline(metrics(None, None, -0.01), "accent")
    assert "too few recordings for an interval" in tiny

    def control(change, flagged):
        return {**metrics(-0.16, -0.08, -0.12), "forgetting": {
            "enabled": True, "n_utterances": 10, "wer_change_pts": change, "flagged": flagged, "margin_pts": 2.0,
            "base": {"wer": 0.10}, "adapter": {"wer": 0.10 + change / 100}, "source": "manifest fleurs-en-*.ogg"}}

    assert "fell from 10.0% to 5.0%: nothing lost" in plain_headline(control(-5.0, False), "accent")[1]
    assert "within the 2-point margin" in plain_headline(control(1.0, False), "accent")[1]
    assert "rose from 10.0% to 15.0%: worse by more than" in plain_headline(control(5.0, True), "accent")[1]
    assert "synthetic" not in plain_headline(control(1.0, False), "accent")[1]


def test_evaluation_page_as_headless_chromium_draws_it(metrics, settings, tmp_path):
    from tools.chromium import find_chromium
    from tools.page_screenshot import capture_page

    from vernacular.common.htmlpage import figure_png
    from vernacular.evaluation.report import plain_headline, render_evaluation_html

    if find_chromium() is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    training = dict(TRAINING)
    per_utt = metrics["per_utterance"]
    figures = [(figure_png(plot_group_wer(metrics["statistics"], settings.group_columns)), "per group"),
               (figure_png(plot_utterance_scatter(per_utt["base_wer"], per_utt["adapter_wer"])), "per recording")]
    page = tmp_path / "evaluation.html"
    page.write_text(render_evaluation_html(metrics, training, "radiology", figures), encoding="utf-8")
    # a phone-width window too: the figures scale down instead of making the page scroll sideways
    for window in ((1200, 1600), (420, 900)):
        drawn = capture_page(page, tmp_path / f"shot-{window[0]}.png", window=window,
                             expect="radiology: base model vs adapter")
        assert [i["alt"] for i in drawn["images"]] == ["per group", "per recording"]
        assert all(i["width"] > 300 and i["shown"] <= window[0] for i in drawn["images"])
        assert plain_headline(metrics, "radiology")[0] in drawn["text"]
        assert drawn["tables"] >= 1
        png = (tmp_path / f"shot-{window[0]}.png").read_bytes()
        assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == window


def test_terms_missing_from_the_test_split_are_counted_and_the_list_capped():
    from vernacular.evaluation.report import ABSENT_TERMS_LISTED, _terms_section
    from vernacular.evaluation.metrics import term_recall

    terms = ["nodule"] + [f"term{i:02d}" for i in range(ABSENT_TERMS_LISTED + 5)]
    refs, hyps = ["a nodule here", "no findings"], ["a nodule here", "no findings"]
    block = {"terms": terms, "base": term_recall(refs, hyps, terms, "basic"),
             "adapter": term_recall(refs, hyps, terms, "basic")}
    text = "\n".join(_terms_section(block))
    assert "| nodule | 1 | 100.0% | 100.0% |" in text
    assert f"Not in this test split ({ABSENT_TERMS_LISTED + 5} of {len(terms)} terms): term00, term01" in text
    assert f"term{ABSENT_TERMS_LISTED - 1:02d} and 5 more." in text and f"term{ABSENT_TERMS_LISTED:02d}" not in text


def test_age_bands_are_reported_with_intervals_and_worse_speakers_named(transcripts):
    from vernacular.evaluation.run import add_group_bands

    settings = EvaluationSettings.from_dict({"normaliser": "basic", "group_columns": ["speaker"],
                                             "group_bands": {"age": {"children": 0, "adults": 16}},
                                             "bootstrap": {"n_resamples": 200, "seed": 3}})
    assert settings.groups == ["speaker", "age_band"]
    aged = transcripts.assign(age=[8, 8, 30, 30, 12, 12])
    with pytest.raises(ValueError, match=r"group_bands \['age'\] are not manifest columns"):
        add_group_bands(transcripts, settings)
    banded = add_group_bands(aged, settings)
    assert "age_band" not in aged and banded["age_band"].tolist() == ["children"] * 2 + ["adults"] * 2 + ["children"] * 2
    scored = score_transcripts(banded, settings)
    by_band = scored["statistics"]["by_age_band"]
    assert set(by_band) == {"children", "adults"} and by_band["children"]["n_utterances"] == 4
    assert by_band["children"]["wer"]["base"]["low"] is not None  # an interval, not a bare rate
    # the fixture's adapter is better or equal for every speaker: nobody is worse beyond the interval
    assert scored["speakers_worse"] == []
    scored.update({"normaliser": "basic", "n_utterances": 6, "audio_seconds": 12.0, "device": "cpu",
                   "device_name": "cpu"})
    segment = {"seconds_per_segment": 1.0, "real_time_factor": 0.05, "segments": 1, "mean_segment_seconds": 20.0}
    scored["latency"] = {"base": dict(segment), "adapter_unmerged": dict(segment), "adapter": dict(segment),
                         "merged_equals_unmerged": True}
    text = render_summary(scored, TRAINING, "accent")
    assert "## By age_band" in text and "| children | 4 |" in text
    assert "No speaker is worse beyond the 95% interval of its difference (of 3 speakers)." in text
    swapped = banded.rename(columns={"base": "adapter", "adapter": "base"})
    worse = score_transcripts(swapped, settings)["speakers_worse"]
    assert worse and all(w["low"] > 0 for w in worse)
    assert "speakers worse beyond the 95% interval" in render_summary(
        {**scored, **score_transcripts(swapped, settings)}, TRAINING, "accent")
