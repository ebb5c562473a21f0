"""Checks on the packaged text corpora used as synthetic-speech transcripts."""

import re
from importlib import resources

import pytest

MIN_LINES = {"radiology.txt": 450, "finance.txt": 400, "general.txt": 200}
MAX_WORDS = 40
# Symbols such as % $ / are read badly by espeak-ng, so only these may appear.
ALLOWED_LINE = re.compile(r"^[A-Za-z0-9 .,;:'\-?!]+$")
TERMINAL = (".", "?", "!")

RADIOLOGY_TERMS = [
    "pneumothorax", "atelectasis", "cardiomegaly", "pleural effusion", "hepatosplenomegaly",
    "consolidation", "bronchiectasis", "spondylolisthesis", "cholelithiasis", "hydronephrosis",
    "diverticulitis", "lymphadenopathy", "osteophytes", "subchondral", "hypoattenuating",
    "hyperechoic", "parenchyma", "mediastinum", "pneumoperitoneum", "emphysema",
    "ground glass", "pulmonary embolism", "hemidiaphragm", "costophrenic", "carina",
    "endotracheal", "nasogastric", "interstitial", "honeycombing", "granuloma",
    "hilar", "subsegmental", "nodule", "spiculated", "hypoechoic",
    "anechoic", "acoustic shadowing", "echogenic", "sonographic", "hepatic steatosis",
    "cirrhosis", "splenomegaly", "cholecystitis", "appendicitis", "pancreatitis",
    "ascites", "hydroureter", "diverticulosis", "hemangioma", "adenoma",
    "aneurysm", "dissection", "thrombus", "stenosis", "extravasation",
    "subdural", "subarachnoid", "infarct", "vasogenic edema", "hydrocephalus",
    "restricted diffusion", "meningioma", "demyelinating", "foraminal", "disc extrusion",
    "meniscus", "cruciate", "supraspinatus", "labrum", "avascular necrosis",
    "osteoarthritis", "chondrocalcinosis", "periosteal", "mammography", "calcifications",
    "fibroadenoma", "tomosynthesis", "achalasia", "scintigraphy", "hypermetabolic",
]


def _lines(name: str) -> list[str]:
    text = resources.files("vernacular.data.corpora").joinpath(name).read_text(encoding="utf-8")
    return text.splitlines()


@pytest.mark.parametrize("name", sorted(MIN_LINES))
def test_minimum_count_and_no_blank_lines(name: str) -> None:
    lines = _lines(name)
    assert all(line.strip() for line in lines), f"{name} has blank lines"
    assert len(lines) >= MIN_LINES[name]


@pytest.mark.parametrize("name", sorted(MIN_LINES))
def test_no_duplicates(name: str) -> None:
    seen: dict[str, int] = {}
    dups = []
    for i, line in enumerate(_lines(name), 1):
        key = " ".join(line.lower().split())
        if key in seen:
            dups.append((seen[key], i, line))
        seen.setdefault(key, i)
    assert not dups, f"{name} duplicates (first, again, text): {dups[:5]}"


@pytest.mark.parametrize("name", sorted(MIN_LINES))
def test_characters_punctuation_and_length(name: str) -> None:
    bad_chars, no_terminal, too_long = [], [], []
    for i, line in enumerate(_lines(name), 1):
        if not ALLOWED_LINE.match(line):
            bad_chars.append((i, line))
        if not line.rstrip().endswith(TERMINAL):
            no_terminal.append((i, line))
        if len(line.split()) > MAX_WORDS:
            too_long.append((i, line))
    assert not bad_chars, f"{name} disallowed characters: {bad_chars[:5]}"
    assert not no_terminal, f"{name} missing terminal punctuation: {no_terminal[:5]}"
    assert not too_long, f"{name} lines over {MAX_WORDS} words: {too_long[:5]}"


def test_first_line_is_a_sentence() -> None:
    for name in MIN_LINES:
        first = _lines(name)[0]
        assert first[:1].isupper() and not first.startswith("#"), name


def test_radiology_domain_vocabulary() -> None:
    assert len(set(RADIOLOGY_TERMS)) == 80
    text = " ".join(_lines("radiology.txt")).lower()
    found = [t for t in RADIOLOGY_TERMS if t in text]
    missing = sorted(set(RADIOLOGY_TERMS) - set(found))
    assert len(found) >= 60, f"only {len(found)} of 80 terms; missing {missing}"


# --- Packaged domain-term lists (evaluation.key_terms: radiology / finance) --------------------

@pytest.mark.parametrize("name, min_terms", [("radiology", 150), ("finance", 50)])
def test_term_list_counts_each_word_once_and_survives_normalisation(name: str, min_terms: int) -> None:
    from vernacular.data.corpus import load_sentences, load_terms
    from vernacular.evaluation.metrics import normalise, term_recall

    terms = load_terms(name)
    assert len(terms) >= min_terms
    normalised = {t: normalise(t, "whisper_english") for t in terms}
    # The normaliser must not turn a term into something else (digits, nothing): it would never be found.
    assert {t for t, n in normalised.items() if n.replace(" ", "") != re.sub(r"[^a-z]", "", t.lower())} == set()
    nested = [(a, b) for a, na in normalised.items() for b, nb in normalised.items()
              if a != b and re.search(rf"(^| ){re.escape(na)}( |$)", nb)]
    assert nested == [], "a term inside another one counts its words twice"
    # Most terms occur in the vertical's own corpus (the list is its vocabulary).
    corpus = load_sentences(name)
    found = term_recall(corpus, corpus, terms)
    assert found["recall"] == 1.0
    assert sum(1 for v in found["terms"].values() if v["occurrences"]) >= 0.9 * len(terms)


def test_term_list_from_a_file_and_errors(tmp_path) -> None:
    from vernacular.data.corpus import load_terms
    from vernacular.evaluation.run import EvaluationSettings

    path = tmp_path / "cardiology.txt"
    path.write_text("# my terms\nstent  # inline comment\nStent\nejection fraction\n\n", encoding="utf-8")
    assert load_terms(str(path)) == ["stent", "ejection fraction"]
    assert EvaluationSettings.from_dict({"key_terms": str(path)}).key_terms == ["stent", "ejection fraction"]
    assert EvaluationSettings.from_dict({"key_terms": "radiology"}).key_terms == load_terms("radiology")
    with pytest.raises(ValueError, match=r"no term list 'cardiology': use one of \['finance', 'radiology'\]"):
        EvaluationSettings.from_dict({"key_terms": "cardiology"})
    (tmp_path / "empty.txt").write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(ValueError, match="has no terms"):
        load_terms(str(tmp_path / "empty.txt"))
