"""Corpus-level ASR error rates (WER, CER), per-utterance errors and alignment examples; bootstrap
intervals and paired tests, domain-term recall and the forgetting flag (docs/evaluation.md).

Counts come from jiwer 4 (`process_words` / `process_characters`) and are pooled over the
corpus: WER = (S + D + I) / reference words, never a mean of per-utterance WERs.

Text is whitespace-tokenised; every function collapses runs of whitespace first (tabs and
newlines included), so "raw" means "as given, apart from whitespace".

Normalisers (`NORMALISERS`):

| name | what it does |
|---|---|
| none | whitespace collapsed only |
| basic | transformers' Whisper `BasicTextNormalizer` (lower case, punctuation and bracketed text removed) |
| whisper_english | transformers' Whisper `EnglishTextNormalizer` (also numbers to digits, "percent" to "%", contractions expanded, fillers removed) |

`whisper_english` runs with an EMPTY British-to-American spelling mapping: the embedded model
ships no `normalizer.json` and no installed package has one, so "colour" and "color" stay
different words. Known quirks of transformers' `EnglishTextNormalizer` (5.24), seen here:
"mm" is dropped as a filler ("5 mm nodule" -> "5 nodule"), "Wait..." becomes "wait .", and
"$1.05" becomes "one.05". References and hypotheses go through the same normaliser, so these
quirks hide some differences rather than invent errors.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any

import jiwer
import numpy as np
import pandas as pd

NORMALISERS = ("none", "basic", "whisper_english")


def _collapse(text: str) -> str:
    return " ".join(text.split())


@lru_cache(maxsize=None)
def _normaliser(name: str) -> Callable[[str], str]:
    # Imported lazily: transformers is heavy and only two of the three normalisers need it.
    if name == "none":
        return lambda s: s
    if name == "basic":
        from transformers.models.whisper.english_normalizer import BasicTextNormalizer

        return BasicTextNormalizer()
    if name == "whisper_english":
        from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

        return EnglishTextNormalizer({})
    raise ValueError(f"unknown normaliser {name!r}; expected one of {NORMALISERS}")


def normalise(text: str, name: str) -> str:
    """Normalise `text` with the named normaliser, then collapse whitespace."""
    return _collapse(_normaliser(name)(_as_text(text)))


def _as_text(value: Any) -> str:
    # Missing transcripts (None / NaN from a failed decode or a blank cell) count as empty text.
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _prepare(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[list[str], list[str]]:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    return [_collapse(_as_text(r)) for r in references], [_collapse(_as_text(h)) for h in hypotheses]


def _chunk_type(chunk: Any) -> str:
    # jiwer names rapidfuzz's "replace" opcode "substitute"; accept both.
    return "substitute" if chunk.type == "replace" else chunk.type


def _rate(errors: int, total: int) -> float | None:
    return errors / total if total else None


def per_utterance_errors(references: Sequence[str], hypotheses: Sequence[str]) -> list[dict]:
    """Word errors per utterance, in input order.

    Each dict: index, n_ref_words, n_hyp_words, hits, substitutions, deletions, insertions,
    errors, wer (None when the reference has no words).
    """
    refs, hyps = _prepare(references, hypotheses)
    if not refs:
        return []
    out = jiwer.process_words(refs, hyps)
    rows = []
    for i, (ref_words, hyp_words, chunks) in enumerate(zip(out.references, out.hypotheses, out.alignments)):
        counts = {"equal": 0, "substitute": 0, "delete": 0, "insert": 0}
        for c in chunks:
            kind = _chunk_type(c)
            span = c.hyp_end_idx - c.hyp_start_idx if kind == "insert" else c.ref_end_idx - c.ref_start_idx
            counts[kind] += span
        errors = counts["substitute"] + counts["delete"] + counts["insert"]
        rows.append(
            {
                "index": i,
                "n_ref_words": len(ref_words),
                "n_hyp_words": len(hyp_words),
                "hits": counts["equal"],
                "substitutions": counts["substitute"],
                "deletions": counts["delete"],
                "insertions": counts["insert"],
                "errors": errors,
                "wer": _rate(errors, len(ref_words)),
            }
        )
    return rows


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict:
    """Pooled WER and CER over a corpus.

    wer = (S + D + I) / n_ref_words; cer = character edits / n_ref_chars (spaces between words
    count as characters). Either is None when its denominator is 0. Utterances whose reference
    is empty still contribute their insertions to the errors; they are also counted in
    n_empty_references / empty_reference_insertions so they can be seen separately.
    """
    refs, hyps = _prepare(references, hypotheses)
    utts = per_utterance_errors(refs, hyps)
    totals = {k: sum(u[k] for u in utts) for k in ("hits", "substitutions", "deletions", "insertions", "errors")}
    n_ref_words = sum(u["n_ref_words"] for u in utts)
    empty = [u for u in utts if u["n_ref_words"] == 0]

    if refs:
        chars = jiwer.process_characters(refs, hyps)
        n_ref_chars = sum(len(r) for r in chars.references)
        char_errors = chars.substitutions + chars.deletions + chars.insertions
    else:
        n_ref_chars = char_errors = 0

    return {
        "wer": _rate(totals["errors"], n_ref_words),
        "cer": _rate(char_errors, n_ref_chars),
        "n_utterances": len(utts),
        "n_ref_words": n_ref_words,
        "n_hyp_words": sum(u["n_hyp_words"] for u in utts),
        "n_ref_chars": n_ref_chars,
        "word_errors": totals["errors"],
        "char_errors": char_errors,
        "hits": totals["hits"],
        "substitutions": totals["substitutions"],
        "deletions": totals["deletions"],
        "insertions": totals["insertions"],
        "n_empty_references": len(empty),
        "empty_reference_insertions": sum(u["insertions"] for u in empty),
    }


def _top(counter: Counter, top_k: int, keys: Iterable[str]) -> list[dict]:
    # Sort by count, then by the words, so ties come out the same on every run.
    keys = tuple(keys)
    items = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
    return [{**dict(zip(keys, k if isinstance(k, tuple) else (k,))), "count": n} for k, n in items]


def alignment_examples(references: Sequence[str], hypotheses: Sequence[str], top_k: int = 20) -> dict:
    """Most frequent word substitutions (reference -> hypothesis), insertions and deletions.

    Returns {"substitutions": [{"reference", "hypothesis", "count"}], "insertions": [{"word",
    "count"}], "deletions": [{"word", "count"}]}, each at most `top_k` long, most frequent first.
    """
    refs, hyps = _prepare(references, hypotheses)
    subs: Counter = Counter()
    ins: Counter = Counter()
    dels: Counter = Counter()
    if refs:
        out = jiwer.process_words(refs, hyps)
        for ref_words, hyp_words, chunks in zip(out.references, out.hypotheses, out.alignments):
            for c in chunks:
                kind = _chunk_type(c)
                ref_span = ref_words[c.ref_start_idx : c.ref_end_idx]
                hyp_span = hyp_words[c.hyp_start_idx : c.hyp_end_idx]
                if kind == "substitute":
                    # Levenshtein substitutions are one-to-one, so the two spans have equal length.
                    subs.update(zip(ref_span, hyp_span))
                elif kind == "insert":
                    ins.update(hyp_span)
                elif kind == "delete":
                    dels.update(ref_span)
    return {
        "substitutions": _top(subs, top_k, ("reference", "hypothesis")),
        "insertions": _top(ins, top_k, ("word",)),
        "deletions": _top(dels, top_k, ("word",)),
    }


def evaluate(
    frame: pd.DataFrame,
    *,
    reference_col: str = "reference",
    hypothesis_col: str = "hypothesis",
    group_cols: Sequence[str] = ("speaker",),
    normaliser: str = "whisper_english",
) -> dict:
    """Error rates on raw and normalised text, overall and per group, plus alignment examples.

    Returns {"normaliser", "raw", "normalised", "by_<group>": {value: {"raw", "normalised"}},
    "alignment"} with plain Python types only (group values become strings). Missing
    (None/NaN) transcripts count as empty text.
    """
    if normaliser not in NORMALISERS:
        raise ValueError(f"unknown normaliser {normaliser!r}; expected one of {NORMALISERS}")
    group_cols = (group_cols,) if isinstance(group_cols, str) else tuple(group_cols)
    missing = [c for c in (reference_col, hypothesis_col, *group_cols) if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks column(s) {missing}; it has {list(frame.columns)}")

    raw_refs = [_as_text(v) for v in frame[reference_col].tolist()]
    raw_hyps = [_as_text(v) for v in frame[hypothesis_col].tolist()]
    norm_refs = [normalise(v, normaliser) for v in raw_refs]
    norm_hyps = [normalise(v, normaliser) for v in raw_hyps]

    result: dict[str, Any] = {
        "normaliser": normaliser,
        "raw": error_rates(raw_refs, raw_hyps),
        "normalised": error_rates(norm_refs, norm_hyps),
    }
    for col in group_cols:
        groups: dict[str, dict] = {}
        for value, positions in sorted(
            frame.groupby(col, dropna=False, sort=False).indices.items(), key=lambda kv: str(kv[0])
        ):
            pos = positions.tolist()
            groups[str(value)] = {
                "raw": error_rates([raw_refs[i] for i in pos], [raw_hyps[i] for i in pos]),
                "normalised": error_rates([norm_refs[i] for i in pos], [norm_hyps[i] for i in pos]),
            }
        result[f"by_{col}"] = groups
    result["alignment"] = alignment_examples(norm_refs, norm_hyps)
    return result


# --- Uncertainty: bootstrap intervals and paired tests -------------------------------------------
#
# Utterances are the resampling unit (their errors are not independent within an utterance), and
# every resample pools counts: WER* = sum(errors[idx]) / sum(ref_words[idx]). Base and adapter are
# scored on the SAME resampled indices (same seed), which is what makes the difference test paired.

PAIRED_TEST = ("paired bootstrap over utterances: difference = adapter - base pooled rate on the same "
               "resampled utterances; percentile interval; two-sided p = min(1, 2 * min(#(d*<=0)+1, "
               "#(d*>=0)+1) / (B+1))")


def per_utterance_char_errors(references: Sequence[str], hypotheses: Sequence[str]) -> list[dict]:
    """Character edits per utterance, in input order: {"errors", "n_ref_chars"} (spaces count)."""
    refs, hyps = _prepare(references, hypotheses)
    if not refs:
        return []
    out = jiwer.process_characters(refs, hyps)
    rows = []
    for ref_chars, chunks in zip(out.references, out.alignments):
        errors = 0
        for c in chunks:
            kind = _chunk_type(c)
            if kind == "insert":
                errors += c.hyp_end_idx - c.hyp_start_idx
            elif kind != "equal":
                errors += c.ref_end_idx - c.ref_start_idx
        rows.append({"errors": errors, "n_ref_chars": len(ref_chars)})
    return rows


def bootstrap_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n) utterance indices drawn with replacement; the same for a given seed."""
    if n_resamples < 1:
        raise ValueError("n_resamples must be at least 1")
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_resamples, n)) if n else np.zeros((n_resamples, 0), dtype=int)


def _resampled_rates(errors: np.ndarray, totals: np.ndarray, idx: np.ndarray) -> np.ndarray:
    num = errors[idx].sum(axis=1).astype(float)
    den = totals[idx].sum(axis=1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _interval(samples: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    finite = samples[np.isfinite(samples)]
    if not finite.size:
        return None, None
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_rate(errors: Sequence[float], totals: Sequence[float], *, n_resamples: int = 2000, seed: int = 0,
                   confidence: float = 0.95) -> dict:
    """Pooled error rate sum(errors) / sum(totals) with a percentile bootstrap interval over utterances.

    Returns {"estimate", "low", "high", "confidence", "n_resamples", "seed", "n_utterances"}; the
    rates are None when there is nothing to divide by, the interval None for fewer than 2 utterances.
    """
    errors, totals = np.asarray(errors, dtype=float), np.asarray(totals, dtype=float)
    if errors.shape != totals.shape:
        raise ValueError(f"{errors.size} error counts but {totals.size} totals")
    estimate = _rate(float(errors.sum()), float(totals.sum())) if totals.sum() > 0 else None
    low = high = None
    # One utterance has no sampling spread to resample: no interval rather than a zero-width one.
    if estimate is not None and errors.size >= 2:
        low, high = _interval(_resampled_rates(errors, totals, bootstrap_indices(len(errors), n_resamples, seed)),
                              confidence)
    return {"estimate": estimate, "low": low, "high": high, "confidence": confidence, "n_resamples": n_resamples,
            "seed": seed, "n_utterances": int(errors.size)}


def paired_bootstrap(errors_a: Sequence[float], errors_b: Sequence[float], totals: Sequence[float], *,
                     n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Paired bootstrap of the pooled-rate difference b - a (e.g. adapter - base) on one set of utterances.

    Returns {"difference", "low", "high", "p_value", "p_floor", "confidence", "n_resamples", "seed",
    "test"}. p_value is two-sided: twice the smaller share of resampled differences on either side
    of 0, with +1 smoothing, so it is never 0 (its floor is 2 / (B + 1)); identical systems give 1.
    With fewer than 2 utterances there is nothing to resample: interval and p are None.
    """
    a, b, totals = (np.asarray(x, dtype=float) for x in (errors_a, errors_b, totals))
    if not (a.shape == b.shape == totals.shape):
        raise ValueError("errors_a, errors_b and totals must have one entry per utterance")
    floor = 2 / (n_resamples + 1)
    if totals.sum() <= 0 or a.size < 2:
        difference = float((b.sum() - a.sum()) / totals.sum()) if totals.sum() > 0 else None
        return {"difference": difference, "low": None, "high": None, "p_value": None, "p_floor": floor,
                "confidence": confidence, "n_resamples": n_resamples, "seed": seed, "test": PAIRED_TEST,
                "n_utterances": int(a.size)}
    idx = bootstrap_indices(len(a), n_resamples, seed)
    diffs = _resampled_rates(b - a, totals, idx)
    diffs = diffs[np.isfinite(diffs)]
    # Differences are ratios of integer sums: round off float noise so identical systems give exact zeros.
    diffs = np.round(diffs, 12)
    low, high = _interval(diffs, confidence)
    below, above = int((diffs <= 0).sum()), int((diffs >= 0).sum())
    p_value = min(1.0, 2 * (min(below, above) + 1) / (diffs.size + 1))
    return {"difference": float((b.sum() - a.sum()) / totals.sum()), "low": low, "high": high, "p_value": p_value,
            "p_floor": floor, "confidence": confidence, "n_resamples": n_resamples, "seed": seed, "test": PAIRED_TEST,
            "n_utterances": int(a.size)}


def sign_test(errors_a: Sequence[float], errors_b: Sequence[float]) -> dict:
    """Exact two-sided sign test on per-utterance error counts (ties dropped).

    Returns {"improved" (b < a), "worsened" (b > a), "ties", "p_value"}; p_value is None when every
    utterance ties.
    """
    a, b = np.asarray(errors_a, dtype=float), np.asarray(errors_b, dtype=float)
    improved, worsened = int((b < a).sum()), int((b > a).sum())
    n = improved + worsened
    p_value = None
    if n:
        k = min(improved, worsened)
        p_value = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
    return {"improved": improved, "worsened": worsened, "ties": int(a.size - n), "p_value": p_value}


def compare_systems(references: Sequence[str], base: Sequence[str], adapter: Sequence[str], *,
                    n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict:
    """WER and CER of two systems on the same (already normalised) utterances, with intervals and tests.

    Returns {"wer": {"base", "adapter", "difference"}, "cer": {...}, "sign_test", "n_utterances"}:
    base/adapter are `bootstrap_rate` results, difference is `paired_bootstrap` (adapter - base),
    sign_test is `sign_test` on per-utterance word errors.
    """
    refs, base_h = _prepare(references, base)
    _, adapter_h = _prepare(references, adapter)
    options = {"n_resamples": n_resamples, "seed": seed, "confidence": confidence}
    out: dict[str, Any] = {"n_utterances": len(refs)}
    words = [per_utterance_errors(refs, h) for h in (base_h, adapter_h)]
    chars = [per_utterance_char_errors(refs, h) for h in (base_h, adapter_h)]
    for rate, (b_rows, a_rows), err_key, total_key in (("wer", words, "errors", "n_ref_words"),
                                                       ("cer", chars, "errors", "n_ref_chars")):
        totals = [r[total_key] for r in b_rows]
        b_err, a_err = [r[err_key] for r in b_rows], [r[err_key] for r in a_rows]
        out[rate] = {"base": bootstrap_rate(b_err, totals, **options),
                     "adapter": bootstrap_rate(a_err, totals, **options),
                     "difference": paired_bootstrap(b_err, a_err, totals, **options)}
    out["sign_test"] = sign_test([r["errors"] for r in words[0]], [r["errors"] for r in words[1]])
    return out


# --- Domain-term recall ---------------------------------------------------------------------------

def _term_hits(ref_words: list[str], hyp_words: list[str], chunks, term: list[str]) -> tuple[int, int]:
    # ref position -> hyp position for words inside "equal" chunks (the aligned hypothesis word is the same)
    matched: dict[int, int] = {}
    for c in chunks:
        if _chunk_type(c) == "equal":
            for k in range(c.ref_end_idx - c.ref_start_idx):
                matched[c.ref_start_idx + k] = c.hyp_start_idx + k
    occurrences = hits = 0
    k = len(term)
    for start in range(len(ref_words) - k + 1):
        if ref_words[start:start + k] != term:
            continue
        occurrences += 1
        positions = [matched.get(start + j) for j in range(k)]
        # Every word matched, and contiguous in the hypothesis (no word inserted inside the term).
        if None not in positions and positions == list(range(positions[0], positions[0] + k)):
            hits += 1
    return occurrences, hits


def _term_counts(references: Sequence[str], hypotheses: Sequence[str], terms: Sequence[str],
                 normaliser: str) -> tuple[dict, list[int], list[int], list[str]]:
    """Per-term {"occurrences", "hits"}, per-utterance occurrences and hits (input order), ignored terms."""
    refs = [normalise(r, normaliser) for r in references]
    hyps = [normalise(h, normaliser) for h in hypotheses]
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    wanted: dict[str, list[str]] = {}
    ignored = []
    for term in terms:
        words = normalise(str(term), normaliser).split()
        if words:
            wanted.setdefault(str(term), words)
        else:
            ignored.append(str(term))
    per_term = {t: {"occurrences": 0, "hits": 0} for t in wanted}
    utt_occurrences, utt_hits = [0] * len(refs), [0] * len(refs)
    # Only utterances that contain a term need aligning (jiwer wants non-empty references anyway).
    keep = [i for i, r in enumerate(refs)
            if any(" ".join(w) in r for w in wanted.values()) and r]
    if keep:
        out = jiwer.process_words([refs[i] for i in keep], [hyps[i] for i in keep])
        for i, ref_words, hyp_words, chunks in zip(keep, out.references, out.hypotheses, out.alignments):
            for term, words in wanted.items():
                occ, hit = _term_hits(ref_words, hyp_words, chunks, words)
                per_term[term]["occurrences"] += occ
                per_term[term]["hits"] += hit
                utt_occurrences[i] += occ
                utt_hits[i] += hit
    return per_term, utt_occurrences, utt_hits, ignored


def term_recall(references: Sequence[str], hypotheses: Sequence[str], terms: Sequence[str],
                normaliser: str = "whisper_english") -> dict:
    """Share of reference occurrences of each key term that the hypothesis gets right.

    References, hypotheses and terms go through the same normaliser. A term (one or more words)
    occurring in a reference is a hit when jiwer's word alignment maps each of its words to an
    equal hypothesis word, contiguously. Returns {"terms": {term: {"occurrences", "hits",
    "recall"}}, "occurrences", "hits", "recall", "normaliser"}; recall is None for 0 occurrences.
    Terms that normalise to nothing are listed under "ignored_terms".
    """
    per_term, _, _, ignored = _term_counts(references, hypotheses, terms, normaliser)
    return _recall_summary(per_term, ignored, normaliser)


def _recall_summary(per_term: dict, ignored: list[str], normaliser: str) -> dict:
    for values in per_term.values():
        values["recall"] = _rate(values["hits"], values["occurrences"])
    occurrences = sum(v["occurrences"] for v in per_term.values())
    hits = sum(v["hits"] for v in per_term.values())
    return {"normaliser": normaliser, "terms": per_term, "occurrences": occurrences, "hits": hits,
            "recall": _rate(hits, occurrences), "ignored_terms": ignored}


def compare_term_recall(references: Sequence[str], base: Sequence[str], adapter: Sequence[str],
                        terms: Sequence[str], normaliser: str = "whisper_english", *, n_resamples: int = 2000,
                        seed: int = 0, confidence: float = 0.95) -> dict:
    """`term_recall` of base and adapter, and their pooled recall with bootstrap intervals over utterances.

    Terms cluster in utterances, so utterances (not occurrences) are resampled, as for WER.
    Returns {"base", "adapter"} (`term_recall` results) and "statistics": {"base", "adapter"}
    (`bootstrap_rate` of hits over occurrences), "difference" (`paired_bootstrap`, adapter - base
    recall), "n_utterances_with_terms".
    """
    base_terms, occurrences, base_hits, ignored = _term_counts(references, base, terms, normaliser)
    adapter_terms, _, adapter_hits, _ = _term_counts(references, adapter, terms, normaliser)
    # Utterances without a term add nothing to either sum; leaving them out keeps the resampling honest.
    keep = [i for i, n in enumerate(occurrences) if n]
    occ = [occurrences[i] for i in keep]
    b, a = [base_hits[i] for i in keep], [adapter_hits[i] for i in keep]
    options = {"n_resamples": n_resamples, "seed": seed, "confidence": confidence}
    return {"base": _recall_summary(base_terms, ignored, normaliser),
            "adapter": _recall_summary(adapter_terms, ignored, normaliser),
            "statistics": {"n_utterances_with_terms": len(keep), "base": bootstrap_rate(b, occ, **options),
                           "adapter": bootstrap_rate(a, occ, **options),
                           "difference": paired_bootstrap(b, a, occ, **options)}}


# --- Loops ------------------------------------------------------------------------------------

LOOP_LENGTH_RATIO = 2.0  # a hypothesis over twice its reference's length counts as a loop


def count_loops(references: Sequence[str], hypotheses: Sequence[str], normaliser: str = "whisper_english") -> dict:
    """Hypotheses with more than LOOP_LENGTH_RATIO x their reference's words (normalised), e.g. a
    decoder stuck on "an an an ..."; {"count", "n_utterances", "ratio"}."""
    count = 0
    for ref, hyp in zip(references, hypotheses):
        ref_words = len(normalise(ref, normaliser).split())
        if len(normalise(hyp, normaliser).split()) > LOOP_LENGTH_RATIO * max(ref_words, 1):
            count += 1
    return {"count": count, "n_utterances": len(references), "ratio": LOOP_LENGTH_RATIO}


# --- Forgetting ------------------------------------------------------------------------------------

def forgetting_check(references: Sequence[str], base: Sequence[str], adapter: Sequence[str], *,
                     margin_pts: float, normaliser: str = "whisper_english", n_resamples: int = 2000,
                     seed: int = 0, confidence: float = 0.95) -> dict:
    """WER of base and adapter on a general (out-of-domain) set; flagged when the adapter is worse.

    flagged is True when adapter WER - base WER > margin_pts percentage points (normalised text).
    Returns {"n_utterances", "base", "adapter" (error_rates), "wer_change_pts", "margin_pts",
    "flagged", "difference" (paired_bootstrap, as a fraction)}.
    """
    refs = [normalise(r, normaliser) for r in references]
    base_n = [normalise(h, normaliser) for h in base]
    adapter_n = [normalise(h, normaliser) for h in adapter]
    base_rates, adapter_rates = error_rates(refs, base_n), error_rates(refs, adapter_n)
    change = None
    if base_rates["wer"] is not None and adapter_rates["wer"] is not None:
        change = 100 * (adapter_rates["wer"] - base_rates["wer"])
    b_rows, a_rows = per_utterance_errors(refs, base_n), per_utterance_errors(refs, adapter_n)
    difference = paired_bootstrap([r["errors"] for r in b_rows], [r["errors"] for r in a_rows],
                                  [r["n_ref_words"] for r in b_rows], n_resamples=n_resamples, seed=seed,
                                  confidence=confidence)
    return {"n_utterances": len(refs), "normaliser": normaliser, "base": base_rates, "adapter": adapter_rates,
            "loops": {"base": count_loops(references, base, normaliser)["count"],
                      "adapter": count_loops(references, adapter, normaliser)["count"]},
            "wer_change_pts": change, "margin_pts": float(margin_pts),
            "flagged": bool(change is not None and change > margin_pts + 1e-9), "difference": difference}


def band_labels(values, bands: dict[str, float], column: str = "value") -> list[str]:
    """Label each number with the band whose lower bound is the largest one at or below it.

    `bands` maps label -> lower bound, e.g. {"children": 0, "adults": 16}. A missing or non-numeric
    value is "unknown"; one below every bound is "below <lowest bound>".
    """
    if not bands:
        raise ValueError(f"group_bands.{column}: give at least one band, e.g. {{children: 0, adults: 16}}")
    try:
        ordered = sorted(((float(bound), str(label)) for label, bound in bands.items()), reverse=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"group_bands.{column}: each band needs a numeric lower bound, got {bands!r}") from exc
    labels = []
    for value in values:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if number != number:
            labels.append("unknown")
            continue
        labels.append(next((label for bound, label in ordered if number >= bound), f"below {ordered[-1][0]:g}"))
    return labels


def groups_worse_beyond_interval(by_group: dict) -> list[dict]:
    """Groups whose paired WER difference interval (adapter - base) lies wholly above zero, worst first.

    `by_group` is a `statistics["by_<column>"]` block of `compare_systems` results.
    """
    rows = []
    for value, entry in by_group.items():
        diff = entry["wer"]["difference"]
        if diff.get("low") is not None and diff["low"] > 0:
            rows.append({"group": value, "n_utterances": entry["n_utterances"], "difference": diff["difference"],
                         "low": diff["low"], "high": diff["high"], "p_value": diff.get("p_value"),
                         "base_wer": entry["wer"]["base"]["estimate"],
                         "adapter_wer": entry["wer"]["adapter"]["estimate"]})
    return sorted(rows, key=lambda r: (-r["difference"], r["group"]))


def worst_groups(by_group_base: dict, by_group_adapter: dict, top_n: int) -> list[dict]:
    """The `top_n` groups (e.g. speakers) with the highest adapter WER (normalised), worst first."""
    rows = []
    for value, adapted in by_group_adapter.items():
        wer = adapted["normalised"]["wer"]
        base = by_group_base.get(value, {}).get("normalised", {})
        rows.append({"group": value, "n_utterances": adapted["normalised"]["n_utterances"],
                     "base_wer": base.get("wer"), "adapter_wer": wer})
    rows.sort(key=lambda r: (-(r["adapter_wer"] if r["adapter_wer"] is not None else -1), r["group"]))
    return rows[:top_n]
