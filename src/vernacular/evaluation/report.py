"""The evaluation summary (Markdown), its HTML page and the headlines, from the metrics of a run."""

from __future__ import annotations

from vernacular.common.htmlpage import markdown_html, page_head, png_img, text_html

SMALL_SAMPLE = 20  # below this many test utterances the summary warns that bootstrap figures are optimistic
ABSENT_TERMS_LISTED = 20  # key terms missing from the test split named in the summary; the rest counted


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def format_interval(entry: dict) -> str:
    """'80.0% [76.1, 83.9]' from a bootstrap_rate result (the estimate alone without an interval)."""
    if entry.get("estimate") is None:
        return "n/a"
    if entry.get("low") is None:
        return _pct(entry["estimate"])
    return f"{_pct(entry['estimate'])} [{100 * entry['low']:.1f}, {100 * entry['high']:.1f}]"


def format_p(p: float | None) -> str:
    if p is None:
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _diff(entry: dict) -> str:
    """'-52.7 pts [-56.0, -49.1], p < 0.001' from a paired_bootstrap result."""
    if entry.get("difference") is None:
        return "n/a"
    text = f"{100 * entry['difference']:+.1f} pts"
    if entry.get("low") is not None:
        text += f" [{100 * entry['low']:+.1f}, {100 * entry['high']:+.1f}]"
    return f"{text}, {format_p(entry.get('p_value'))}"


def headline(metrics: dict, rate: str = "wer") -> str:
    """'WER 80.0% [76.1, 83.9] -> 27.3% [24.0, 30.8], difference -52.7 pts [..], p < 0.001'."""
    overall = metrics["statistics"]["overall"][rate]
    return (f"{rate.upper()} {format_interval(overall['base'])} -> {format_interval(overall['adapter'])}, difference "
            f"{_diff(overall['difference'])}")


def _group_table(metrics: dict, column: str) -> list[str]:
    base, adapter = metrics["base"][f"by_{column}"], metrics["adapter"][f"by_{column}"]
    stats = metrics.get("statistics", {}).get(f"by_{column}", {})
    lines = [f"| {column} | utterances | base WER | adapter WER | difference |", "|---|---|---|---|---|"]
    for value, values in base.items():
        n = values["normalised"]["n_utterances"]
        if value in stats:
            wer = stats[value]["wer"]
            lines.append(f"| {value} | {n} | {format_interval(wer['base'])} | {format_interval(wer['adapter'])} | {_diff(wer['difference'])} |")
        else:
            lines.append(f"| {value} | {n} | {_pct(values['normalised']['wer'])} | "
                         f"{_pct(adapter[value]['normalised']['wer'])} | |")
    return lines


def render_summary(metrics: dict, training: dict, vertical: str) -> str:
    """Markdown summary of an evaluation run."""
    base, adapter = metrics["base"], metrics["adapter"]
    stats = metrics["statistics"]
    boot = stats["bootstrap"]
    overall = stats["overall"]
    level = round(100 * boot["confidence"])
    lines = [f"# {vertical}: base model vs adapter", "",
             f"Test split: {metrics['n_utterances']} utterances, {metrics['audio_seconds'] / 60:.1f} min of audio. "
             f"Device: {metrics['device_name']}.", "",
             f"**{headline(metrics)}** (normalised text; {level}% intervals).", "",
             *([f"**Control:** {control_sentence(metrics.get('forgetting'))}", ""]
               if control_sentence(metrics.get("forgetting")) else []),
             *([f"**Unseen synthesiser:** {unseen_voice_sentence(metrics.get('unseen_voices'))}", ""]
               if unseen_voice_sentence(metrics.get("unseen_voices")) else []),
             f"Normaliser: `{metrics['normaliser']}` (transformers' Whisper normaliser, applied to references and "
             "hypotheses alike); raw = text as written, case and punctuation included.", "",
             f"Intervals: {level}% percentile bootstrap over utterances ({boot['n_resamples']} resamples, seed "
             f"{boot['seed']}; each resample pools the word counts). Difference = adapter - base in percentage "
             "points, paired bootstrap on the same resamples (two-sided p; its floor is "
             f"{2 / (boot['n_resamples'] + 1):.4f}). See docs/evaluation.md.", "",
             *([f"**Caution:** only {metrics['n_utterances']} test utterances; with fewer than {SMALL_SAMPLE} the "
                "bootstrap understates the uncertainty (its p-value can sit at its floor when every utterance "
                "moves the same way): read the sign test, and evaluate on more utterances.", ""]
               if metrics["n_utterances"] < SMALL_SAMPLE else []),
             "| metric | base | adapter | difference (adapter - base) |", "|---|---|---|---|"]
    for rate in ("wer", "cer"):
        entry = overall[rate]
        lines.append(f"| {rate.upper()} (normalised) | {format_interval(entry['base'])} | {format_interval(entry['adapter'])} | "
                     f"{_diff(entry['difference'])} |")
    for rate in ("wer", "cer"):
        lines.append(f"| {rate.upper()} (raw) | {_pct(base['raw'][rate])} | {_pct(adapter['raw'][rate])} | |")
    sign = overall["sign_test"]
    lines += ["", f"Relative WER reduction (normalised): {_pct(metrics['wer_relative_reduction'])}.",
              f"Sign test on per-utterance word errors: {sign['improved']} utterances improved, {sign['worsened']} "
              f"worsened, {sign['ties']} unchanged ({format_p(sign['p_value'])}).",
              *_loop_lines(metrics.get("loops")), "",
              "## Per speaker / voice (normalised WER)", "", *_group_table(metrics, "speaker")]
    for column in [c for c in metrics["base"] if c.startswith("by_") and c != "by_speaker"]:
        lines += ["", f"## By {column[3:]} (normalised WER)", "", *_group_table(metrics, column[3:])]
    worst = metrics.get("worst_speakers") or []
    if worst:
        lines += ["", f"## Worst speakers (top {len(worst)} by adapter WER)", ""]
        lines += [f"{i}. {w['group']}: {_pct(w['adapter_wer'])} (base {_pct(w['base_wer'])}, "
                  f"{w['n_utterances']} utterances)" for i, w in enumerate(worst, 1)]
    lines += ["", *_speakers_worse_lines(metrics)]
    lines += ["", *_terms_section(metrics.get("key_terms"))]
    lines += ["", *_forgetting_section(metrics.get("forgetting"))]
    lines += ["", *_unseen_voice_section(metrics.get("unseen_voices"))]
    lat = metrics["latency"]
    lines += ["", f"## Latency per ~{lat['base']['mean_segment_seconds']:.0f}-s segment (batch 1, "
              f"{lat['base']['segments']} segments)", "", "| model | s/segment | real-time factor |", "|---|---|---|"]
    for name in ("base", "adapter_unmerged", "adapter"):
        label = {"adapter": "adapter merged"}.get(name, name.replace("_", " "))
        lines.append(f"| {label} | {lat[name]['seconds_per_segment']:.2f} | {lat[name]['real_time_factor']:.3f} |")
    lines += ["", f"Merged and unmerged adapter transcripts identical on these segments: "
              f"{lat['merged_equals_unmerged']}."]
    served = metrics.get("served")
    if served:
        change = served["wer_change_pts"]
        lines += ["", f"## Served model ({served['backend']} {served['compute_type']}, as batch transcription runs it)",
                  "", f"WER (normalised) {_pct(served['wer'])} against {_pct(served['wer_fp32'])} for the merged fp32 "
                  f"adapter above ({'n/a' if change is None else f'{change:+.1f}'} pts; "
                  + ("within" if served["within_half_point"] else "**more than**") + " the 0.5-point allowance). "
                  f"Latency {served['latency']['seconds_per_segment']:.2f} s per ~"
                  f"{served['latency']['mean_segment_seconds']:.0f}-s segment (real-time factor "
                  f"{served['latency']['real_time_factor']:.3f}, batch 1) on {served['device']}; the cost page uses it."]
        if served.get("precision"):
            lines += ["", f"Served as {served['compute_type']}: {served['precision']['reason']}."]
        on_control = (metrics.get("forgetting") or {}).get("served")
        if on_control:
            change = on_control["wer_change_pts"]
            kind = "real-speech" if metrics["forgetting"].get("kind") == "real" else "synthetic"
            lines += ["", f"On the {kind} control ({metrics['forgetting']['n_utterances']} recordings): "
                      f"{_pct(on_control['wer'])} against {_pct(on_control['wer_fp32'])} for the merged fp32 adapter "
                      f"({'n/a' if change is None else f'{change:+.1f}'} pts; "
                      + ("within" if on_control["within_half_point"] else "**more than**")
                      + " the 0.5-point allowance)."]
        over = not served["within_half_point"] or not (on_control or {}).get("within_half_point", True)
        if over and served["compute_type"] != "float32":
            lines += ["", f"To serve without {served['compute_type']}'s loss, set `transcription.ct2.quantization: "
                      "float32` (slower; docs/results.md, \"The served model\", has the measured trade-off)."]
    lines += ["", "## Adapter training", "",
              f"- trainable parameters: {training['trainable_params']:,} of {training['total_params']:,} "
              f"({100 * training['trainable_fraction']:.2f}%)",
              f"- {training['steps']} steps, {training['train_examples']} training utterances, "
              f"{training['train_seconds'] / 60:.1f} min on {training['device_name']}", ""]
    lines += _alignment_section(metrics)
    lines += ["", "## Examples (most improved first)", ""]
    for ex in metrics["examples"][:8]:
        lines += [f"- **{ex['speaker']}** ref: {ex['reference']}", f"  - base: {ex['base']}",
                  f"  - adapter: {ex['adapter']}"]
    return "\n".join(lines) + "\n"


def _speakers_worse_lines(metrics: dict) -> list[str]:
    """How many test speakers the adapter made worse beyond their interval (nothing before this was measured)."""
    worse = metrics.get("speakers_worse")
    if worse is None:
        return []
    stats = metrics.get("statistics", {})
    n_speakers = len(stats.get("by_speaker", {}))
    confidence = stats.get("bootstrap", {}).get("confidence", 0.95)
    if worse:
        listed = "; ".join(f"{w['group']} {_pct(w['base_wer'])} -> {_pct(w['adapter_wer'])} ({_diff(w)})" for w in worse)
        sentence = (f"**{len(worse)} of {n_speakers} speakers worse beyond the {confidence:.0%} interval of their "
                    f"difference**: {listed}.")
    else:
        sentence = f"No speaker is worse beyond the {confidence:.0%} interval of its difference (of {n_speakers} speakers)."
    return ["## Speakers made worse", "", sentence]


def _terms_section(block: dict | None) -> list[str]:
    lines = ["## Domain-term recall (normalised)", ""]
    if not block or not block.get("terms"):
        return lines + ["No key terms configured for this vertical (`evaluation.key_terms`)."]
    b, a = block["base"], block["adapter"]
    lines += [f"Share of reference occurrences of {len(block['terms'])} key terms that the transcript gets right "
              f"(word-aligned with jiwer): {_recall_change(block)} ({b['occurrences']} occurrences"
              f"{_term_utterances(block)}).", "", "| term | occurrences | base | adapter |", "|---|---|---|---|"]
    rows = sorted(a["terms"].items(), key=lambda kv: (-kv[1]["occurrences"], kv[0]))
    for term, values in rows:
        if values["occurrences"]:
            lines.append(f"| {term} | {values['occurrences']} | {_pct(b['terms'][term]['recall'])} | "
                         f"{_pct(values['recall'])} |")
    absent = [t for t, v in rows if not v["occurrences"]]
    if absent:
        shown = ", ".join(absent[:ABSENT_TERMS_LISTED]) + (f" and {len(absent) - ABSENT_TERMS_LISTED} more"
                                                             if len(absent) > ABSENT_TERMS_LISTED else "")
        lines += ["", f"Not in this test split ({len(absent)} of {len(rows)} terms): {shown}."]
    return lines


def _recall_change(block: dict) -> str:
    """'base 19.4% [..] -> adapter 47.6% [..], difference +28.2 pts [..], p ..' (intervals when computed)."""
    stats = block.get("statistics")
    if not stats:
        return f"base {_pct(block['base']['recall'])} -> adapter {_pct(block['adapter']['recall'])}"
    return (f"base {format_interval(stats['base'])} -> adapter {format_interval(stats['adapter'])}, difference "
            f"{_diff(stats['difference'])}")


def _term_utterances(block: dict) -> str:
    stats = block.get("statistics")
    if not stats:
        return ""
    return (f" in {stats['n_utterances_with_terms']} utterances; {round(100 * stats['base']['confidence'])}% "
            "intervals over utterances")


def _loop_lines(loops: dict | None) -> list[str]:
    if not loops:
        return []
    return [f"Looping outputs (hypothesis over {loops['base']['ratio']:g}x its reference's words): base "
            f"{loops['base']['count']}, adapter {loops['adapter']['count']} of {loops['base']['n_utterances']}."]


def control_figures(block: dict) -> str:
    """Each control corpus's WER, base -> adapter, in one line (the forgetting block of the metrics)."""
    by_set = block.get("by_set") or {}
    return "; ".join(f"{name} ({part['n_utterances']} utts) {_pct(part['base']['wer'])} -> "
                     f"{_pct(part['adapter']['wer'])} ({part['wer_change_pts']:+.1f} pts)"
                     for name, part in by_set.items() if part.get("wer_change_pts") is not None)


def control_sentence(block: dict | None) -> str | None:
    """The forgetting check in one sentence a manager reads; None when it did not run."""
    if not block or not block.get("enabled"):
        return None
    change = block.get("wer_change_pts") or 0.0
    before, after = _pct(block["base"]["wer"]), _pct(block["adapter"]["wer"])
    synthetic = block.get("kind") == "synthetic" or str(block.get("source", "")).startswith("synthetic")
    what = "synthetic general speech" if synthetic else "real general speech"
    where = f"On {what} it was not trained for ({block['n_utterances']} recordings of the control set)"
    if block["flagged"]:
        text = (f"{where} the word error rate rose from {before} to {after}: worse by more than the "
                f"{block['margin_pts']:g}-point margin, flagged.")
    elif change < 0:
        text = f"{where} the word error rate fell from {before} to {after}: nothing lost there."
    else:
        text = (f"{where} the word error rate went from {before} to {after}, within the "
                f"{block['margin_pts']:g}-point margin.")
    if len(block.get("by_set") or {}) > 1:
        text += f" Per corpus: {control_figures(block)}."
    if synthetic:
        text += " That control set is synthetic speech, so it says little about real voices"
        text += (f" (the real-speech sets {', '.join(block['missing_sets'])} were not found)."
                 if block.get("missing_sets") else ".")
    return text


def unseen_voice_sentence(block: dict | None) -> str | None:
    """The unseen-synthesiser check in one sentence; None when it did not run."""
    if not block or not block.get("enabled"):
        return None
    wer = block["wer"]
    cut = block.get("wer_relative_reduction")
    return (f"The same test sentences read by a synthesiser training never used (Kokoro, "
            f"{block['n_utterances']} recordings): word error rate {format_interval(wer['base'])} -> {format_interval(wer['adapter'])}"
            + (f", a {round(100 * cut)}% relative cut" if cut is not None and cut >= 0 else
               f", {round(-100 * cut)}% more errors" if cut is not None else "")
            + ". The gap between this cut and the headline's is what the adapter learned of the training voices.")


def _unseen_voice_section(block: dict | None) -> list[str]:
    lines = ["## Unseen synthesiser (the test sentences read by Kokoro)", ""]
    if not block or not block.get("enabled"):
        reason = (block or {}).get("missing") or "Disabled (`evaluation.unseen_voices.enabled: false`)."
        return lines + [reason]
    wer, terms = block["wer"], block["key_terms"]
    lines += [f"{block['n_utterances']} distinct test sentences, one Kokoro-82M voice each ({', '.join(block['voices'])}; "
              f"pronunciation from espeak-ng `{block['accent']}`). WER {format_interval(wer['base'])} (base) -> "
              f"{format_interval(wer['adapter'])} (adapter), paired difference {_diff(wer['difference'])}; relative cut "
              f"{_pct(block['wer_relative_reduction'])}. Looping outputs: base {block['loops']['base']}, adapter "
              f"{block['loops']['adapter']}."]
    if terms["base"]["occurrences"]:
        lines.append(f"Key-term recall: {_recall_change(terms)} ({terms['base']['occurrences']} occurrences"
                     f"{_term_utterances(terms)}).")
    lines += ["", "| voice | utterances | base WER | adapter WER |", "|---|---|---|---|"]
    lines += [f"| {voice} | {part['n_utterances']} | {_pct(part['base'])} | {_pct(part['adapter'])} |"
              for voice, part in block["by_voice"].items()]
    return lines


def _forgetting_section(block: dict | None) -> list[str]:
    lines = ["## Forgetting check (general speech)", ""]
    if not block or not block.get("enabled"):
        return lines + ["Disabled (`evaluation.forgetting.enabled: false`)."]
    change = block["wer_change_pts"]
    verdict = ("**FLAGGED**: the adapter is worse on general speech by more than" if block["flagged"]
               else "Within the margin of")
    lines += [f"{block['n_utterances']} utterances ({block['source']}). WER {_pct(block['base']['wer'])} (base) -> "
              f"{_pct(block['adapter']['wer'])} (adapter), change "
              f"{'n/a' if change is None else f'{change:+.1f}'} pts, paired difference "
              f"{_diff(block['difference'])}.",
              f"{verdict} {block['margin_pts']:g} pts (`evaluation.forgetting_margin`)."]
    if block.get("loops"):
        lines.append(f"Looping outputs on the control set: base {block['loops']['base']}, adapter "
                     f"{block['loops']['adapter']}.")
    by_set = block.get("by_set") or {}
    if by_set:
        lines += ["", "| control corpus | utterances | base WER | adapter WER | change (pts) | paired difference |",
                  "|---|---|---|---|---|---|"]
        for name, part in by_set.items():
            change = part["wer_change_pts"]
            lines.append(f"| {name} | {part['n_utterances']} | {_pct(part['base']['wer'])} | "
                         f"{_pct(part['adapter']['wer'])} | {'n/a' if change is None else f'{change:+.1f}'} | "
                         f"{_diff(part['difference'])} |")
    return lines


def _alignment_section(metrics: dict) -> list[str]:
    lines = []
    for name in ("base", "adapter"):
        align = metrics[name]["alignment"]
        lines += [f"## Top errors ({name}, normalised)", "", "| substitutions | insertions | deletions |",
                  "|---|---|---|"]
        subs = [f"{s['reference']} -> {s['hypothesis']} ({s['count']}x)" for s in align["substitutions"][:10]]
        ins = [f"{s['word']} ({s['count']}x)" for s in align["insertions"][:10]]
        dels = [f"{s['word']} ({s['count']}x)" for s in align["deletions"][:10]]
        for i in range(max(len(subs), len(ins), len(dels), 1)):
            cells = [(col[i] if i < len(col) else "") for col in (subs, ins, dels)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def plain_headline(metrics: dict, vertical: str) -> list[str]:
    """One or two sentences a manager reads: the WER change with its interval, in words; and the
    forgetting check when it ran."""
    overall = metrics["statistics"]["overall"]["wer"]
    base, adapter, diff = overall["base"]["estimate"], overall["adapter"]["estimate"], overall["difference"]
    level = round(100 * metrics["statistics"]["bootstrap"]["confidence"])
    where = (f"the {vertical} test set ({metrics['n_utterances']} recordings, "
             f"{metrics['audio_seconds'] / 60:.1f} minutes of audio)")
    low, high = diff.get("low"), diff.get("high")
    points = abs(100 * diff["difference"])
    interval = ("" if low is None else
                f" ({level}% interval: {min(abs(100 * low), abs(100 * high)):.1f} to "
                f"{max(abs(100 * low), abs(100 * high)):.1f} points)")
    if low is not None and high < 0:
        share = metrics.get("wer_relative_reduction")
        text = (f"With the adapter, the word error rate on {where} fell from {_pct(base)} to {_pct(adapter)}: "
                f"{points:.1f} points lower{interval}"
                + (f", so about {round(100 * share)}% of the base model's word errors are gone." if share else "."))
    elif low is not None and low > 0:
        text = (f"With the adapter, the word error rate on {where} rose from {_pct(base)} to {_pct(adapter)}: "
                f"{points:.1f} points higher{interval}. The adapter makes these transcripts worse.")
    else:
        text = (f"With the adapter, the word error rate on {where} went from {_pct(base)} to {_pct(adapter)} "
                f"({100 * diff['difference']:+.1f} points"
                + (f"; {level}% interval {100 * low:+.1f} to {100 * high:+.1f}): the interval includes no change, so "
                   "this test set does not show a reliable difference." if low is not None else
                   "; too few recordings for an interval): read it as no evidence either way."))
    sentences = [text]
    control = control_sentence(metrics.get("forgetting"))
    if control:
        sentences.append(control)
    unseen = unseen_voice_sentence(metrics.get("unseen_voices"))
    if unseen:
        sentences.append(unseen)
    return sentences


def render_evaluation_html(metrics: dict, training: dict, vertical: str, figures: list[tuple[bytes, str]]) -> str:
    """The evaluation page: the headline in words first, then the figures (PNG bytes, caption),
    then every statistic of the Markdown summary. Self-contained."""
    title = f"{vertical}: base model vs adapter"
    cpu = str(metrics.get("device", "")).lower() == "cpu"
    out = [*page_head(title), f"<h1>{text_html(title)}</h1>"]
    out += [f'<p class="headline">{text_html(s)}</p>' for s in plain_headline(metrics, vertical)]
    out.append(f'<p class="label{" cpu" if cpu else ""}">Measured on {text_html(str(metrics.get("device_name")))}; '
               f"normaliser <code>{text_html(str(metrics['normaliser']))}</code>.</p>")
    out.append("<h2>By group and by recording</h2>")
    for png, caption in figures:
        out += ["<figure>", png_img(png, caption), f"<figcaption>{text_html(caption)}</figcaption>", "</figure>"]
    summary = render_summary(metrics, training, vertical).split("\n", 1)[1]  # its title is the page's
    out += ["<h2>Statistics</h2>", markdown_html(summary), "</body>", "</html>"]
    return "\n".join(out) + "\n"
