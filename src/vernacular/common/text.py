"""Text keys and text clean-up shared by every stage.

`sentence_key` is the one "same sentence" key: splits, the synthetic corpus plan, the forgetting
control set and the adapter card all compare sentences through it (changing it would move rows
between splits). `collapse_repeats` is the decode-time loop guard applied to every model alike.
"""

from __future__ import annotations

import re
import zlib

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_PUNCT = ",.;:!?"
_NON_WORD = re.compile(r"[^\w']+")


def sentence_key(text: str) -> str:
    """Lower case, every run of non-alphanumerics one space: "The lungs, clear." -> "the lungs clear"."""
    return _NON_ALNUM.sub(" ", str(text).lower()).strip()


def word_key(word: str) -> str:
    """A word compared without case or punctuation, apostrophes kept (joining overlapping chunks)."""
    return _NON_WORD.sub("", word.lower())


def slug(text: str) -> str:
    """A file-name-safe form of a name: "en-gb-x-rp+f2" -> "en_gb_x_rp_f2"."""
    return re.sub(r"[^a-zA-Z0-9]+", "_", text).strip("_")


def sentence_case(text: str) -> str:
    """"MARK IS GOING TO SEE ELEPHANT" -> "Mark is going to see elephant" ("I" stays upper case)."""
    words = text.strip().lower().split()
    words = ["I" if w == "i" else "I'" + w[2:] if w.startswith("i'") else w for w in words]
    joined = " ".join(words)
    return joined[:1].upper() + joined[1:]


def compression_ratio(text: str) -> float:
    """len(text) / len(zlib(text)): about 1 for ordinary sentences, high for text that repeats itself
    (Whisper's own hallucination test uses > 2.4)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def collapse_repeats(text: str, max_repeats: int, max_ngram: int = 8, min_compression_ratio: float = 2.4) -> str:
    """In a looping hypothesis, cut any run of a word n-gram (n <= max_ngram) repeated back to back
    to `max_repeats` copies.

    A decoding guard, applied to every model alike: a looping hypothesis otherwise adds dozens of
    insertions to one utterance and dominates a group's WER. Only text whose compression ratio
    exceeds `min_compression_ratio` counts as a loop, so genuine repeats ("five five five four",
    "bank bank bank") are kept.
    """
    if max_repeats <= 0 or compression_ratio(text) <= min_compression_ratio:
        return text
    words = text.split()
    changed = True
    while changed:
        changed = False
        for n in range(1, max_ngram + 1):
            i = 0
            while i + n * (max_repeats + 1) <= len(words):
                unit = [w.strip(_PUNCT).lower() for w in words[i:i + n]]
                count = 1
                while words[i + count * n:i + (count + 1) * n] and \
                        [w.strip(_PUNCT).lower() for w in words[i + count * n:i + (count + 1) * n]] == unit:
                    count += 1
                if count > max_repeats:
                    del words[i + max_repeats * n:i + count * n]
                    changed = True
                i += 1
    return " ".join(words)
