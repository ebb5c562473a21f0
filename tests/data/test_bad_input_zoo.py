"""Ingestion on the bad-input zoo: each row's outcome and reason, every good row kept, the accounting
holds against the file itself."""

from __future__ import annotations

import pandas as pd

from tests.data.zoo import write_tsv_zoo, write_zoo
from vernacular.data.ingestion import SourceSettings, SplitSettings, load_source, split_corpus, validate_corpus
from vernacular.data.manifest import AudioLimits

SPLIT = SplitSettings(by="utterance", validation_fraction=0.0, test_fraction=0.0)


def ingest(path, tmp_path):
    source = SourceSettings(kind="manifest", path=str(path))
    raw = load_source(source, SPLIT, tmp_path / "synthetic")
    clean, quarantine = validate_corpus(raw, AudioLimits(), tmp_path / "clean")
    return raw, *split_corpus(clean, quarantine, raw, SPLIT)


def test_every_zoo_row_is_kept_or_quarantined_for_its_reason(tmp_path, speech_clips):
    expected = write_zoo(tmp_path / "corpus", speech_clips)
    raw, manifest, report, summary = ingest(tmp_path / "corpus" / "manifest.csv", tmp_path)
    data_lines = len((tmp_path / "corpus" / "manifest.csv").read_bytes().splitlines()) - 1
    assert summary["rows_in"] == data_lines == summary["clean"] + summary["quarantined"]

    kept = set(manifest["utterance_id"])
    assert kept == {uid for uid, outcome in expected.items() if outcome is None}
    by_id = dict(zip(report["utterance_id"], report["reason"]))
    by_line = {f"line {int(n)}": r for n, r in zip(report["source_row"], report["reason"]) if pd.notna(n)}
    for key, outcome in expected.items():
        if outcome is None:
            continue
        reason = by_line[key] if key.startswith("line ") else by_id[key]
        assert outcome in reason, (key, reason)
    # the duplicate id: the first row is kept, the second quarantined
    assert "duplicate utterance_id" in " ".join(report["reason"])
    # parse errors name the file and line
    assert all("manifest.csv:" in by_line[k] for k, v in expected.items() if k.startswith("line "))
    # reasons are grouped by kind in the summary, not by file
    assert summary["quarantine_reasons"]["audio file not found"] == 2  # missing file, dangling link
    assert not any("/" in kind for kind in summary["quarantine_reasons"]), summary["quarantine_reasons"]


def test_a_tsv_transcript_may_start_with_a_quote(tmp_path, speech_clips):
    path, lines = write_tsv_zoo(tmp_path / "tsv", speech_clips)
    raw, manifest, report, summary = ingest(path, tmp_path)
    assert summary["rows_in"] == lines == len(manifest), report["reason"].tolist()
    assert manifest["text"].str.startswith('"Quoted"').sum() == 1


def test_a_csv_with_an_unbalanced_quote_quarantines_each_line_it_swallows(tmp_path, speech_clips):
    folder = tmp_path / "csv"
    folder.mkdir()
    import soundfile as sf

    lines = ["audio_path,text,speaker"]
    for i, (text, clip) in enumerate(speech_clips * 2):
        sf.write(folder / f"{i}.wav", clip, 16000, subtype="PCM_16")
        lines.append(f'{i}.wav,"{text}{"" if i != 2 else " and more"},s{i}' if i == 2 else f"{i}.wav,{text},s{i}")
    (folder / "m.csv").write_text("\n".join(lines) + "\n")
    raw, manifest, report, summary = ingest(folder / "m.csv", tmp_path)
    assert summary["rows_in"] == len(lines) - 1 == summary["clean"] + summary["quarantined"]
    assert len(manifest) == 2 and all("unbalanced quote" in r for r in report["reason"])
