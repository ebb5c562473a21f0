"""Corpus-level ASR error rates (WER, CER), per-utterance errors and alignment examples.

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
