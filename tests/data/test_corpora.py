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
