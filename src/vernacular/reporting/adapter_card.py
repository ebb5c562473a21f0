"""Adapter card: a Markdown record, published beside the adapter weights, of what the adapter is,
which data and code produced it, how well it does on which test set, on what hardware, and what it
is not validated for (a Hugging Face style model card with YAML front matter).

`build_adapter_card` takes the run's outputs (ingestion summary, manifest, base model record,
training and evaluation metrics) and returns the Markdown. The helpers record provenance that the
metrics alone do not: SHA-256 of the source manifests, of the manifest table and of the audio, the
git commit, the base model's revision and weights hash, and the machine. None of them raises on a
missing git checkout, hub cache or file: they record "unknown" and why.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
import importlib.metadata
import json
import os
import platform
import re
import subprocess
from pathlib import Path

import pandas as pd
import torch
import yaml
from huggingface_hub import EvalResult, ModelCardData, try_to_load_from_cache

from vernacular.common.config import build_settings
from vernacular.common.fileio import new_digest, sha256_file, sha256_text, write_text_atomically
from vernacular.common.storage import version_of
from vernacular.common.text import sentence_key
from vernacular.data.corpus import packaged_text
from vernacular.data.manifest import sha256_source
from vernacular.evaluation.report import control_figures, format_interval, unseen_voice_sentence
from vernacular.models.families import FAMILIES, family_for
from vernacular.models.loading import ADAPTER_CARD, hub_name, speech_task
from vernacular.models.whisper_ct2 import EMBEDDED_MODELS

CARD_FORMAT_VERSION = 2  # 2: Hub metadata (hub base model id, model-index)
# Kedro's save-version format, e.g. 2026-11-25T22.47.43.693Z
WEIGHT_PATTERNS = ("model.safetensors", "model-*.safetensors", "pytorch_model.bin", "pytorch_model-*.bin")
METHOD_NAMES = {"lora": "LoRA", "dora": "DoRA", "ia3": "IA3"}
SMALL_TEST_SET = 100  # below this many test utterances the card warns that intervals are wide


@dataclass
class CardSettings:
    """`params:<vertical>.card`: what the run cannot know about the data, for the Hub metadata."""

    datasets: list[str] = field(default_factory=list)  # Hub dataset ids of the training data
    test_set_name: str | None = None  # the model-index's dataset name (default: "<vertical> test split")

    @classmethod
    def from_dict(cls, values: dict | None) -> "CardSettings":
        return build_settings(cls, values, "card")


def hub_license(license_: str | None) -> str:
    """The Hub's lower-case licence id (`mit`, `apache-2.0`); `other` when it is not recorded."""
    if not license_ or license_ == "unknown":
        return "other"
    return license_.strip().lower().replace(" ", "-")


def hub_metadata(base: dict, base_model: dict, training_metrics: dict, eval_metrics: dict, vertical: str,
                 card: CardSettings, extra: dict) -> ModelCardData:
    """Hub front matter: base model, licence, language, datasets, tags and a model-index with the
    adapter's WER and CER (percent, normalised text) on the test split."""
    method = str(training_metrics["adapter"].get("method", "lora"))
    adapter = eval_metrics["adapter"]["normalised"]
    dataset = {"task_type": "automatic-speech-recognition", "task_name": "Automatic Speech Recognition",
               "dataset_type": card.datasets[0] if card.datasets else "local",
               "dataset_name": card.test_set_name or f"{vertical} test split", "dataset_split": "test"}
    results = [EvalResult(**dataset, metric_type="wer", metric_value=round(100 * adapter["wer"], 2),
                          metric_name=f"WER (normalised: {eval_metrics.get('normaliser')})")]
    if adapter.get("cer") is not None:
        results.append(EvalResult(**dataset, metric_type="cer", metric_value=round(100 * adapter["cer"], 2),
                                  metric_name=f"CER (normalised: {eval_metrics.get('normaliser')})"))
    license_, base_id = hub_license(base["license"]), hub_name(base["name"])
    return ModelCardData(
        library_name="peft", base_model=base_id, license=license_,
        license_name="unknown" if license_ == "other" else None, language=[speech_task(base_model)[0]],
        datasets=list(card.datasets) or None, pipeline_tag="automatic-speech-recognition",
        tags=[*_family(base_model, training_metrics).hub_tags, method, vertical, "vernacular"],
        metrics=["wer", "cer"], model_name=f"{vertical} {METHOD_NAMES.get(method, method)} adapter for {base_id}",
        eval_results=results, **extra)


def write_card_into_adapter(adapter_dir: str | Path, card: str) -> Path:
    """Write `card` as the adapter folder's ADAPTER_CARD, README.md (atomically; the Hub shows it)."""
    folder = Path(adapter_dir)
    if not (folder / "adapter_config.json").is_file():
        raise CardInputError(f"{folder}: not a PEFT adapter folder (no adapter_config.json); the evaluation's "
                             "adapter_path must point at the adapter the card describes")
    return write_text_atomically(folder / ADAPTER_CARD, card)


class CardInputError(ValueError):
    """An input of the adapter card is missing, incomplete or from another run."""


# ---------------------------------------------------------------------------------------------
# Provenance helpers


def manifest_sha256(manifest: pd.DataFrame) -> str:
    """SHA-256 of the manifest table as CSV (`to_csv(index=False)`), i.e. of the bytes Kedro's
    `pandas.CSVDataset` writes: `sha256sum manifest.csv` of the saved version gives the same value."""
    return sha256_text(manifest.to_csv(index=False))


def audio_sha256(manifest: pd.DataFrame, column: str = "audio_path") -> dict | None:
    """One SHA-256 over every audio file of the manifest: the digest of "<utterance_id> <file sha256>"
    lines in utterance-id order. Reads every file once (~0.5 s per 160 MB on a 2-core CPU)."""
    if column not in manifest.columns or "utterance_id" not in manifest.columns:
        return None
    digest, total, missing = new_digest(), 0, []
    rows = manifest[["utterance_id", column]].astype(str).sort_values("utterance_id")
    for utt, path in rows.itertuples(index=False):
        try:
            file_hash = sha256_file(path)
            total += os.path.getsize(path)
        except OSError:
            missing.append(path)
            file_hash = "missing"
        digest.update(f"{utt} {file_hash}\n".encode())
    return {"sha256": digest.hexdigest(), "files": len(rows), "bytes": total, "missing": missing}


def _git(folder: Path, *args: str) -> subprocess.CompletedProcess:
    # GIT_OPTIONAL_LOCKS=0: `git status` must not take the index lock while someone else commits.
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=20,
                          env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})


def git_revision(folders: list[str | Path] | None = None) -> dict:
    """The git commit of the code: {"commit", "dirty", "changed_files", "repository"}.

    Looks at the folder of this package first (the code that ran), then the working directory.
    Outside a git checkout, or without git, the commit is "unknown" with the reason; never raises.
    """
    folders = [Path(f) for f in folders] if folders else [Path(__file__).resolve().parent, Path.cwd()]
    reason = "not a git checkout"
    for folder in folders:
        try:
            head = _git(folder, "rev-parse", "HEAD")
            if head.returncode != 0:
                continue
            top = _git(folder, "rev-parse", "--show-toplevel").stdout.strip()
            status = _git(folder, "status", "--porcelain")
        except FileNotFoundError:
            reason = "git is not installed"
            break
        except (OSError, subprocess.SubprocessError) as exc:
            reason = f"git failed: {exc}"
            continue
        changed = [line for line in status.stdout.splitlines() if line.strip()] if status.returncode == 0 else None
        return {"commit": head.stdout.strip(), "dirty": None if changed is None else bool(changed),
                "changed_files": None if changed is None else len(changed), "repository": top}
    return {"commit": "unknown", "dirty": None, "changed_files": None, "repository": None,
            "reason": f"{reason} ({', '.join(str(f) for f in folders)})"}


def _distribution(name: str) -> tuple[str | None, str | None]:
    """(version, license) of an installed distribution, or (None, None)."""
    try:
        meta = importlib.metadata.metadata(name)
    except importlib.metadata.PackageNotFoundError:
        return None, None
    license_ = meta.get("License-Expression") or meta.get("License")
    return meta.get("Version"), (license_.strip() if license_ else None)


def _readme_license(folder: Path) -> str | None:
    """`license:` from a model card's YAML front matter (README.md), if there is one."""
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    match = re.match(r"\A---\s*\n(.*?)\n---\s*\n", text, re.S)
    if not match:
        return None
    try:
        front = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError:
        return None
    value = front.get("license") if isinstance(front, dict) else None
    return str(value) if value else None


def _weights(folder: Path) -> list[dict]:
    files = sorted({p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern) if p.is_file()})
    return [{"name": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files]


def base_model_revision(base_model: dict, hub_cache: str | Path | None = None) -> dict:
    """Identify the base model exactly: {"name", "kind", "revision", "weights", "license", ...}.

    embedded: the wheel's name==version and the SHA-256 of its CTranslate2 `model.bin` (from the
    conversion record), plus the SHA-256 of the converted weights. Hub id: the commit hash of the
    snapshot in the local hub cache, when it is there. Local directory: the weights' SHA-256 (a
    directory has no revision). License: the wheel's metadata or the model card's front matter.
    """
    name = base_model.get("name_or_path")
    if not name:
        raise CardInputError("base_model has no `name_or_path`: the `<vertical>.base_model` dataset "
                             "(data/06_models/<vertical>/base_model.json) is not the features stage's output; "
                             "rerun `kedro run --pipeline=<vertical>.features`")
    local = Path(base_model["local_dir"]) if base_model.get("local_dir") else None
    info = {"name": name, "source": base_model.get("source"), "revision": None, "weights": [], "license": None,
            "license_source": None, "notes": []}
    if name.startswith("embedded:"):
        info["kind"] = "embedded"
        record = {}
        if local and (local / "conversion.json").is_file():
            record = json.loads((local / "conversion.json").read_text(encoding="utf-8"))
        embedded = EMBEDDED_MODELS.get(name.removeprefix("embedded:"))
        distribution = embedded.distributions[0] if embedded else None
        version, license_ = _distribution(distribution) if distribution else (None, None)
        info["revision"] = record.get("source_distribution") or (
            embedded.source_distribution() if embedded and version else
            "unknown (wheel not installed, no conversion record)")
        if record.get("source_sha256"):
            info["notes"].append(f"CTranslate2 `model.bin` in the wheel: SHA-256 `{record['source_sha256']}`; "
                                 f"converted by `{record.get('converter')}` v{record.get('converter_version')} with "
                                 f"transformers {record.get('transformers_version')}, "
                                 f"{record.get('num_parameters', 0) / 1e6:.2f} M parameters")
        if license_:
            info["license"], info["license_source"] = license_, f"`{distribution}` {version} package metadata"
    elif local and base_model.get("source") == "local directory":
        info["kind"] = "local directory"
        info["revision"] = "none (a local directory; identified by the SHA-256 of its weights)"
    else:
        info["kind"] = "hub"
        local = None
        try:
            cached = try_to_load_from_cache(name, "config.json", cache_dir=hub_cache)
        except Exception as exc:  # a malformed id or cache must not stop the card
            cached, info["notes"] = None, [f"hub cache lookup failed: {exc}"]
        if isinstance(cached, str):
            local = Path(cached).parent
            info["revision"] = local.name  # snapshots/<commit hash>/config.json
        else:
            info["revision"] = "unknown (not in the local hub cache)"
    if local and local.is_dir():
        info["weights"] = _weights(local)
        if info["license"] is None and (license_ := _readme_license(local)):
            info["license"], info["license_source"] = license_, f"model card front matter ({local / 'README.md'})"
    if info["license"] is None:
        info["license"] = "unknown"
        info["license_source"] = "not recorded with the model: check where it came from before publishing"
    return info


def machine_info() -> dict:
    """The machine that writes the card and the software versions (training's own device is in its metrics)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024 ** 2, 1)
                break
    except OSError:
        pass
    gpus = []
    try:
        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        cuda = torch.version.cuda
    except Exception:  # the card must not fail for a broken CUDA setup
        cuda = None
    software = {name: _distribution(name)[0] for name in ("vernacular", "torch", "transformers", "peft", "kedro")}
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "memory_gib": memory_gib, "gpus": gpus, "torch_cuda": cuda,
            "software": software}


# ---------------------------------------------------------------------------------------------
# Input checks


def _require(data: dict | None, keys: list[str], dataset: str, vertical: str, stage: str) -> None:
    location = {"eval_metrics": "data/08_reporting/{v}/eval_metrics.json",
                "training_metrics": "data/07_model_output/{v}/training_metrics.json",
                "ingestion_summary": "data/08_reporting/{v}/ingestion_summary.json"}[dataset].format(v=vertical)
    fix = (f"run `kedro run --pipeline={vertical}.{stage}` (or the whole `--pipeline={vertical}`) to write it, "
           f"or pin a complete version with `--load-versions={vertical}.{dataset}:<version>`")
    if not isinstance(data, dict) or not data:
        raise CardInputError(f"{vertical}.{dataset} ({location}) is missing or empty; the adapter card needs it: {fix}")
    for key in keys:
        node = data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise CardInputError(f"{vertical}.{dataset} ({location}) has no `{key}`; it was written by an older "
                                     f"or interrupted run: {fix}")
            node = node[part]


def check_inputs(ingestion_summary: dict, manifest: pd.DataFrame, training_metrics: dict, eval_metrics: dict,
                 vertical: str) -> None:
    """Fail with the dataset, the file and the fix when an input is missing or comes from another run."""
    _require(eval_metrics, ["n_utterances", "base.normalised.wer", "adapter.normalised.wer", "base.raw.wer",
                            "adapter.raw.wer"], "eval_metrics", vertical, "evaluation")
    _require(training_metrics, ["run_id", "trainable_params", "total_params", "adapter", "settings", "device",
                                "device_name", "train_seconds", "device_hours", "steps"],
             "training_metrics", vertical, "training")
    _require(ingestion_summary, ["rows_in", "clean", "quarantined", "quarantine_reasons", "splits", "split_rule"],
             "ingestion_summary", vertical, "ingestion")
    if eval_metrics.get("training_run") not in (None, training_metrics["run_id"]):
        raise CardInputError(
            f"{vertical}.eval_metrics evaluated training run {eval_metrics['training_run']} but "
            f"{vertical}.training_metrics is run {training_metrics['run_id']}: they come from different runs. Rerun "
            f"`kedro run --pipeline={vertical}.evaluation`, or pin matching versions with --load-versions")
    if eval_metrics.get("vertical") not in (None, vertical):
        raise CardInputError(f"{vertical}.eval_metrics belongs to vertical {eval_metrics['vertical']!r}; check the "
                             f"`{vertical}.eval_metrics` entry in conf/*/catalog.yml")
    if "split" not in manifest.columns:
        raise CardInputError(f"{vertical}.manifest (data/03_primary/{vertical}/manifest.csv) has no `split` column; "
                             f"it is not the ingestion output: rerun `kedro run --pipeline={vertical}.ingestion`")
    counted = {str(k): int(v) for k, v in manifest["split"].value_counts().items()}
    recorded = {str(k): int(v) for k, v in ingestion_summary["splits"].items()}
    if counted != recorded:
        raise CardInputError(
            f"{vertical}.manifest has splits {counted} but {vertical}.ingestion_summary records {recorded}: they come "
            f"from different ingestion runs. Rerun `kedro run --pipeline={vertical}.ingestion` or pin matching "
            f"versions with --load-versions")


# ---------------------------------------------------------------------------------------------
# Facts and rendering


def _pct(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def _with_ci(block: dict) -> str:
    ci = block.get("wer_ci")
    text = _pct(block.get("wer"))
    return f"{text} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci and None not in ci else text


def _p(p) -> str:
    return "n/a" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def split_facts(manifest: pd.DataFrame) -> dict:
    """Per split: utterances, speakers, hours; speakers and sentences shared across splits."""
    splits = {}
    for name, rows in manifest.groupby("split", sort=True):
        splits[str(name)] = {"utterances": len(rows),
                             "speakers": int(rows["speaker"].nunique()) if "speaker" in rows else None,
                             "hours": float(rows["duration"].sum() / 3600) if "duration" in rows else None}
    facts = {"splits": splits, "unseen_test_speakers": None, "test_speakers": None, "shared_test_sentences": None}
    test, seen = manifest[manifest["split"] == "test"], manifest[manifest["split"] != "test"]
    if "speaker" in manifest.columns and len(test):
        test_speakers = set(test["speaker"].astype(str))
        facts["test_speakers"] = len(test_speakers)
        facts["unseen_test_speakers"] = sorted(test_speakers - set(seen["speaker"].astype(str)))
    if "text" in manifest.columns and len(test):
        seen_texts = {sentence_key(str(t)) for t in seen["text"]}
        facts["shared_test_sentences"] = int(sum(sentence_key(str(t)) in seen_texts for t in test["text"]))
    return facts


SPLIT_RULES = {
    "sentence": "by sentence: a salted hash of the normalised sentence picks the split, so no test sentence is "
                "ever trained on",
    "speaker": "by speaker: a salted hash of the speaker picks the split, so no test speaker is trained on",
    "utterance": "by utterance: the same speakers and possibly the same sentences occur in training and test, "
                 "so the test measures less than generalisation",
    "given": "the corpus's own split (source parts named train/test); validation carved out of train by speaker",
}


def intended_use_and_limitations(vertical: str, source: dict | None, ingestion_summary: dict, facts: dict,
                                 training_metrics: dict, eval_metrics: dict, base: dict) -> tuple[list, list]:
    """Plain-language intended use and limitations, derived from the data and the results."""
    kind = (source or {}).get("kind")
    synthetic = kind == "synthetic"
    use = [f"Drafting English transcripts of {vertical} speech like the training data below, with "
           f"`{base['name']}` as the base model, for a person to review and correct.",
           "Comparing adapters: the card records the data, code and settings needed to reproduce this one."]
    limits = []
    if synthetic:
        voices = ", ".join((source or {}).get("train_voices") or []) or "see the manifest"
        limits.append(f"**Synthetic speech.** Training and test audio were synthesised with espeak-ng (training "
                      f"voices: {voices}). Much of the gain is adaptation to these synthetic voices; it is "
                      f"**not validated on real recordings** of {vertical} speech. Re-evaluate on real audio "
                      f"before any use.")
    elif kind == "manifest":
        limits.append("Trained and tested on the recordings listed under Training data; the result holds for "
                      "speakers, microphones and conditions like those, not beyond.")
    unseen = facts.get("unseen_test_speakers")
    if unseen is not None:
        if unseen and len(unseen) == facts["test_speakers"]:
            limits.append(f"None of the {len(unseen)} test speakers/voices was trained on: the WER measures new "
                          f"speakers of the same kind, not the training speakers.")
        elif unseen:
            limits.append(f"Test speakers/voices never trained on: {len(unseen)} of {facts['test_speakers']} "
                          f"({', '.join(unseen[:8])}{', ...' if len(unseen) > 8 else ''}); the others were, so the "
                          f"overall WER mixes seen and unseen speakers (per-speaker figures: evaluation summary).")
        else:
            limits.append("Every test speaker/voice also occurs in training: the WER does not show how the adapter "
                          "does on new speakers.")
    shared = facts.get("shared_test_sentences")
    if shared:
        limits.append(f"{shared} test utterances repeat a sentence that also occurs in training/validation (e.g. the "
                      f"same prompt read by another speaker): part of the gain may be memorised text.")
    n = eval_metrics["n_utterances"]
    if n < SMALL_TEST_SET:
        limits.append(f"Small test set ({n} utterances): the confidence intervals are wide.")
    diff = eval_metrics.get("wer_difference") or {}
    if diff.get("low") is not None and diff.get("high") is not None:
        if diff["low"] <= 0 <= diff["high"]:
            limits.append("The WER difference between adapter and base is **not statistically significant** "
                          f"({100 * diff['low']:+.1f} to {100 * diff['high']:+.1f} pts).")
        elif diff["low"] > 0:
            limits.append("**The adapter is worse than the base model** on the test set: do not use it.")
    forgetting = eval_metrics.get("forgetting")
    if not forgetting:
        limits.append("General-speech (forgetting) check not recorded for this run: the effect on speech outside "
                      f"{vertical} is unknown.")
    elif not forgetting.get("enabled"):
        limits.append(f"Forgetting check disabled: the effect on speech outside {vertical} is unknown.")
    elif forgetting.get("flagged"):
        limits.append(f"**Forgetting flagged:** on general speech the adapter's WER worsens by "
                      f"{forgetting['wer_change_pts']:+.1f} pts (margin {forgetting['margin_pts']:g}): use it only "
                      f"for {vertical} audio, or retrain.")
    else:
        if forgetting.get("kind") == "synthetic":
            limits.append("The forgetting check ran on synthetic espeak-ng speech (no real general-speech corpus "
                          "was found): it cannot show what the adapter does to real voices.")
        limits.append(f"On general speech ({forgetting.get('n_utterances')} utterances, "
                      f"{forgetting.get('source', 'control set')}) WER changed by "
                      f"{forgetting['wer_change_pts']:+.1f} pts, within the {forgetting['margin_pts']:g}-pt margin; "
                      f"that control set is small and does not cover every kind of speech.")
    if ingestion_summary["quarantined"]:
        limits.append(f"{ingestion_summary['quarantined']} of {ingestion_summary['rows_in']} source rows were "
                      f"quarantined and not used (reasons under Training data).")
    if not training_metrics.get("completed", True):
        limits.append(f"Training stopped at step {training_metrics['steps']} of {training_metrics.get('total_steps')}.")
    limits.append("English only (the base model is English-only Whisper); audio is decoded in 30-s windows; "
                  "Whisper can insert text on silence or loop on hard audio (decoding guards are on, not proof).")
    limits.append("Not a medical, legal or financial record: transcripts need human review before they are relied on.")
    return use, limits


def build_adapter_card(ingestion_summary: dict, manifest: pd.DataFrame, base_model: dict, training_metrics: dict,
                       eval_metrics: dict, vertical: str, source: dict | None = None, *,
                       written_at: dt.datetime | None = None, hub_cache: str | Path | None = None,
                       git_folders: list[str | Path] | None = None, hash_audio: bool = True,
                       card: CardSettings | dict | None = None) -> str:
    """The adapter card (Markdown with Hugging Face Hub YAML front matter) from a run's outputs."""
    card = CardSettings.from_dict(card)
    check_inputs(ingestion_summary, manifest, training_metrics, eval_metrics, vertical)
    written_at = written_at or dt.datetime.now(dt.timezone.utc)
    base = base_model_revision(base_model, hub_cache)
    git = git_revision(git_folders)
    machine = machine_info()
    facts = split_facts(manifest)
    sources = ingestion_summary.get("source_manifests") or (
        [ingestion_summary["source_manifest"]] if ingestion_summary.get("source_manifest") else [])
    source_hashes = [sha256_source(p) for p in sources]
    corpus_hash = None
    if (source or {}).get("kind") == "synthetic" and source.get("sentences"):
        corpus_hash = _sentence_corpus_hash(source["sentences"])
    audio = audio_sha256(manifest) if hash_audio else None
    use, limits = intended_use_and_limitations(vertical, source, ingestion_summary, facts, training_metrics,
                                               eval_metrics, base)
    adapter = training_metrics["adapter"]
    method = str(adapter.get("method", "lora"))
    method_name = METHOD_NAMES.get(method, method)
    adapter_path = eval_metrics.get("adapter_path")
    adapter_version = version_of(adapter_path)
    b_norm, a_norm = eval_metrics["base"]["normalised"], eval_metrics["adapter"]["normalised"]
    params_pct = 100 * training_metrics["trainable_params"] / training_metrics["total_params"]

    front = hub_metadata(base, base_model, training_metrics, eval_metrics, vertical, card, extra={
             "vernacular": {"card_format": CARD_FORMAT_VERSION, "vertical": vertical, "base_model": base["name"],
                            "adapter_version": adapter_version, "training_run": training_metrics["run_id"],
                            "manifest_sha256": manifest_sha256(manifest),
                            "audio_sha256": audio["sha256"] if audio else None,
                            "git_commit": git["commit"], "git_dirty": git["dirty"],
                            "wer_base": round(b_norm["wer"], 4), "wer_adapter": round(a_norm["wer"], 4),
                            "written_at": written_at.isoformat(timespec="seconds")}})
    out = ["---", front.to_yaml().rstrip(), "---", "",
           f"# {vertical}: {method_name} adapter for {base['name']}", ""]
    split_rule = ingestion_summary["split_rule"]
    out += [f"A {method_name} adapter ({params_pct:.2f}% extra parameters) that adapts `{base['name']}` to "
            f"{vertical} speech. On {eval_metrics['n_utterances']} held-out test utterances its word error rate is "
            f"**{_pct(a_norm['wer'])}** against **{_pct(b_norm['wer'])}** for the base model (normalised text; "
            f"details under Evaluation). Read the limitations before using it.", ""]
    out += ["| | |", "|---|---|",
            f"| base model | `{base['name']}` ({base['kind']}), revision `{base['revision']}`, "
            f"license {base['license']} |",
            f"| adapter | {method_name}, {training_metrics['trainable_params']:,} trainable of "
            f"{training_metrics['total_params']:,} parameters ({params_pct:.2f}%) |",
            f"| training data | {facts['splits'].get('train', {}).get('utterances', 0)} utterances "
            f"({_hours(facts['splits'].get('train', {}).get('hours'))}), split {split_rule['by']}; manifest SHA-256 "
            f"`{manifest_sha256(manifest)[:16]}...` |",
            f"| test set | {eval_metrics['n_utterances']} utterances"
            f"{_audio_minutes(eval_metrics)}, {facts['test_speakers'] or '?'} speakers/voices "
            f"({len(facts['unseen_test_speakers'] or [])} never trained on) |",
            f"| WER (normalised) | base {_with_ci(b_norm)} -> adapter {_with_ci(a_norm)} |",
            f"| training compute | {training_metrics['train_seconds'] / 60:.1f} min on "
            f"{training_metrics['device_name']}, {training_metrics['device_hours']:.3f} device-hours |",
            f"| code | commit `{git['commit']}`{_dirty(git)}, vernacular {machine['software'].get('vernacular')} |",
            f"| adapter version | `{adapter_version or 'unknown'}` (Kedro save version), training run "
            f"`{training_metrics['run_id']}` |",
            f"| card written | {written_at.isoformat(timespec='seconds')} |", ""]

    out += ["## Intended use", ""] + [f"- {u}" for u in use] + [""]
    out += ["## Limitations", ""] + [f"- {x}" for x in limits] + [""]
    out += _evaluation_section(eval_metrics, facts)
    out += _data_section(vertical, source, ingestion_summary, manifest, facts, source_hashes, corpus_hash, audio,
                         training_metrics, adapter_version, adapter_path)
    out += _training_section(training_metrics, params_pct)
    out += _base_section(base)
    out += _compute_section(training_metrics, eval_metrics, machine, git)
    out += _loading_section(base, base_model, adapter_path, vertical, adapter_version, training_metrics)
    return "\n".join(out).rstrip() + "\n"


def _hours(hours) -> str:
    if hours is None:
        return "duration n/a"
    return f"{hours:.2f} h" if hours >= 1 else f"{60 * hours:.1f} min"


def _audio_minutes(eval_metrics: dict) -> str:
    seconds = eval_metrics.get("audio_seconds")
    return f" ({seconds / 60:.1f} min of audio)" if seconds else ""


def _dirty(git: dict) -> str:
    if git["commit"] == "unknown":
        return f" ({git.get('reason')})"
    return f" with {git['changed_files']} uncommitted change(s)" if git["dirty"] else " (clean)"


def _sentence_corpus_hash(name_or_path: str) -> dict | None:
    try:
        path = packaged_text("vernacular.data.corpora", name_or_path, "sentence corpus")
    except ValueError:
        return None
    return {"path": str(path), "sha256": sha256_file(path)}


def _evaluation_section(eval_metrics: dict, facts: dict) -> list[str]:
    base, adapter = eval_metrics["base"], eval_metrics["adapter"]
    out = ["## Evaluation", "",
           f"Test set: the `test` split of the manifest, {eval_metrics['n_utterances']} utterances"
           f"{_audio_minutes(eval_metrics)}, transcribed by the base model and by the adapter merged into it on "
           f"{eval_metrics.get('device_name', 'an unrecorded device')}. WER = word error rate (lower is better); "
           f"normalised = both sides through the `{eval_metrics.get('normaliser')}` normaliser"
           + ("; brackets = 95% bootstrap intervals over utterances." if base["normalised"].get("wer_ci")
              else "; this run recorded no confidence intervals."), ""]
    test_rows = facts["splits"].get("test", {}).get("utterances")
    if test_rows and test_rows != eval_metrics["n_utterances"]:
        out += [f"Only {eval_metrics['n_utterances']} of the {test_rows} test utterances were scored "
                f"(`evaluation.max_utterances`).", ""]
    out += ["| metric | base | adapter |", "|---|---|---|",
            f"| WER, normalised | {_with_ci(base['normalised'])} | {_with_ci(adapter['normalised'])} |",
            f"| CER, normalised | {_pct(base['normalised'].get('cer'))} | {_pct(adapter['normalised'].get('cer'))} |",
            f"| WER, raw text | {_pct(base['raw']['wer'])} | {_pct(adapter['raw']['wer'])} |"]
    terms = eval_metrics.get("key_terms") or {}
    if terms.get("terms"):
        b, a = terms.get("base", {}), terms.get("adapter", {})
        stats = terms.get("statistics") or {}
        b_text, a_text = (format_interval(stats[k]) if stats.get(k) else _pct(v.get("recall"))
                          for k, v in (("base", b), ("adapter", a)))
        out.append(f"| domain-term recall ({a.get('occurrences', 0)} occurrences of {len(terms['terms'])} terms) | "
                   f"{b_text} | {a_text} |")
    latency = eval_metrics.get("latency") or {}
    if latency.get("base") and latency.get("adapter"):
        out.append(f"| real-time factor, batch 1 (merged adapter) | {latency['base']['real_time_factor']:.3f} | "
                   f"{latency['adapter']['real_time_factor']:.3f} |")
    out.append("")
    diff = eval_metrics.get("wer_difference") or {}
    if diff.get("difference") is not None:
        interval = (f" [{100 * diff['low']:+.1f}, {100 * diff['high']:+.1f}]"
                    if diff.get("low") is not None and diff.get("high") is not None else " (no interval: too few utterances)")
        out.append(f"Paired difference adapter - base: {100 * diff['difference']:+.1f} WER points"
                   f"{interval}, p {_p(diff.get('p_value'))} "
                   f"({diff.get('n_resamples')} bootstrap resamples).")
    sign = ((eval_metrics.get("statistics") or {}).get("overall") or {}).get("sign_test")
    if sign:
        out.append(f"Per utterance: {sign['improved']} improved, {sign['worsened']} worsened, {sign['ties']} unchanged "
                   f"(sign test p {_p(sign.get('p_value'))}).")
    worst = eval_metrics.get("worst_speakers") or []
    if worst:
        out.append("Highest adapter WER by speaker: " + "; ".join(
            f"{w['group']} {_pct(w['adapter_wer'])} (base {_pct(w['base_wer'])}, {w['n_utterances']} utts)"
            for w in worst[:3]) + ".")
    forgetting = eval_metrics.get("forgetting") or {}
    if forgetting.get("enabled"):
        out.append(f"Forgetting check (general speech, {forgetting.get('n_utterances')} utterances; "
                   f"{forgetting.get('source', 'control set')}): WER "
                   f"{_pct(forgetting['base']['wer'])} -> {_pct(forgetting['adapter']['wer'])} "
                   f"({forgetting['wer_change_pts']:+.1f} pts; flagged above {forgetting['margin_pts']:g}): "
                   f"{'**FLAGGED**' if forgetting.get('flagged') else 'not flagged'}."
                   + (f" Per corpus: {control_figures(forgetting)}." if forgetting.get("by_set") else ""))
    unseen = unseen_voice_sentence(eval_metrics.get("unseen_voices"))
    if unseen:
        out.append(unseen)
    loops = eval_metrics.get("loops")
    if loops:
        out.append(f"Looping outputs on the test set (hypothesis over {loops['base']['ratio']:g}x the reference): "
                   f"base {loops['base']['count']}, adapter {loops['adapter']['count']}.")
    if out[-1]:
        out.append("")
    out += ["Full figures: the run's `eval_summary.md` and `eval_metrics.json` (data/08_reporting/<vertical>/).",
            ""]
    return out


def _data_section(vertical, source, summary, manifest, facts, source_hashes, corpus_hash, audio, training_metrics,
                  adapter_version, adapter_path) -> list[str]:
    rule = summary["split_rule"]
    out = ["## Training data and provenance", ""]
    kind = (source or {}).get("kind")
    if kind == "synthetic":
        out.append(f"Synthetic corpus: the `{source.get('sentences')}` sentences read by espeak-ng voices "
                   f"(training: {', '.join(source.get('train_voices') or [])}; held out for test only: "
                   f"{', '.join(source.get('heldout_voices') or []) or 'none'}), rate and pitch varied per utterance.")
    elif kind == "manifest":
        out.append("Recordings read from the source manifests below.")
    out += ["", "| source | kind | SHA-256 |", "|---|---|---|"]
    if corpus_hash:
        out.append(f"| `{corpus_hash['path']}` (sentences) | file | `{corpus_hash['sha256']}` |")
    for entry in source_hashes:
        files = f" ({', '.join(f['name'] for f in entry['files'])})" if entry.get("files") else ""
        out.append(f"| `{entry['path']}` | {entry['kind']}{files} | `{entry['sha256'] or 'missing at card time'}` |")
    if not source_hashes:
        out.append("| not recorded in the ingestion summary | | |")
    out += ["", f"- Manifest (rows used, with split): SHA-256 `{manifest_sha256(manifest)}` over the CSV bytes, "
                f"{len(manifest)} rows; equals `sha256sum` of the run's `{vertical}.manifest` file."]
    if audio:
        missing = f"; {len(audio['missing'])} file(s) missing at card time" if audio["missing"] else ""
        out.append(f"- Audio used (16 kHz mono copies): {audio['files']} files, {audio['bytes'] / 1e6:.1f} MB, "
                   f"combined SHA-256 `{audio['sha256']}`{missing}.")
    features = training_metrics.get("features") or {}
    if features.get("fingerprint"):
        out.append(f"- Features cache fingerprint: `{features['fingerprint']}` (rows, texts, splits, audio files, "
                   f"processor and feature settings).")
    out.append(f"- Dataset versions: the adapter evaluated is Kedro save version `{adapter_version or 'unknown'}` "
               f"(`{adapter_path or 'path not recorded'}`). In a full `kedro run` every versioned dataset of the run "
               f"(manifest, quarantine, ingestion summary, metrics, this card) has that version; a run of single "
               f"stages loads the latest versions, so the SHA-256 values above are what identify the data exactly.")
    reasons = summary.get("quarantine_reasons") or {}
    out += ["", f"Rows: {summary['rows_in']} read, {summary['clean']} used, {summary['quarantined']} quarantined"
                + (" (" + ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) + ")" if reasons else "")
                + ". Quarantined rows and their reasons are in the run's `quarantine.csv`.", "",
            f"Split rule: {SPLIT_RULES.get(rule['by'], rule['by'])}. Validation fraction "
            f"{rule.get('validation_fraction')}, test fraction {rule.get('test_fraction')}, salt `{rule.get('salt')}`"
            + (f"; test-only speakers: {', '.join(summary['test_only_speakers'])}" if summary.get("test_only_speakers")
               else "") + ".", "",
            "| split | utterances | speakers/voices | audio |", "|---|---|---|---|"]
    for name in ("train", "validation", "test"):
        if name in facts["splits"]:
            s = facts["splits"][name]
            out.append(f"| {name} | {s['utterances']} | {s['speakers'] if s['speakers'] is not None else 'n/a'} | "
                       f"{_hours(s['hours'])} |")
    out.append("")
    if facts["shared_test_sentences"] is not None:
        out += [f"Test utterances whose sentence also occurs in train/validation: {facts['shared_test_sentences']}. "
                f"Test speakers never trained on: {len(facts['unseen_test_speakers'] or [])} of "
                f"{facts['test_speakers']}.", ""]
    return out


def _training_section(training_metrics: dict, params_pct: float) -> list[str]:
    adapter = training_metrics["adapter"]
    settings = training_metrics["settings"]
    shown = {k: v for k, v in adapter.items()
             if v is not None and (k != "feedforward_modules" or adapter.get("method") == "ia3")}
    out = ["## Training", "",
           f"Adapter: {', '.join(f'{k}={_fmt(v)}' for k, v in shown.items())}; "
           f"{training_metrics['trainable_params']:,} / {training_metrics['total_params']:,} parameters trainable "
           f"({params_pct:.3f}%).", "",
           f"Run `{training_metrics['run_id']}`: {training_metrics['steps']} steps"
           + (f" of {training_metrics['total_steps']}" if training_metrics.get("total_steps") else "")
           + f", {training_metrics.get('train_examples', '?')} training and "
             f"{training_metrics.get('validation_examples', '?')} validation utterances; loss "
             f"{_fmt(training_metrics.get('first_loss'))} -> {_fmt(training_metrics.get('final_loss'))} (mean of the "
             f"last 5 steps)"]
    val = training_metrics.get("validation_losses") or []
    if val:
        out[-1] += f", validation loss {_fmt(val[-1]['loss'])} after epoch {val[-1]['epoch']}"
    if training_metrics.get("resumed_from"):
        out[-1] += f"; resumed from checkpoint {training_metrics['resumed_from']}"
    out[-1] += "."
    out += ["", "Settings: " + ", ".join(f"{k}={_fmt(v)}" for k, v in settings.items() if k != "progress") + "."]
    aug = training_metrics.get("augmentation")
    if aug:
        out += ["", "Augmentation: " + (", ".join(f"{k}={_fmt(v)}" for k, v in aug.items()) if aug.get("enabled")
                                        else "off") + "."]
    return out + [""]


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def _base_section(base: dict) -> list[str]:
    out = ["## Base model", "",
           f"`{base['name']}`: {base.get('source') or base['kind']}. Revision: `{base['revision']}`. "
           f"License: **{base['license']}** ({base['license_source']})."]
    embedded = EMBEDDED_MODELS.get(base["name"].removeprefix("embedded:")) if base["kind"] == "embedded" else None
    if embedded:
        out[-1] += (f" The weights are OpenAI's `{embedded.hub_id}`"
                    f"{' (English only)' if embedded.hub_id.endswith('.en') else ' (multilingual)'}, which OpenAI "
                    f"releases under the {embedded.licence.upper()} license, in CTranslate2 format from "
                    f"{', '.join(f'`{d}`' for d in embedded.distributions)}.")
    out.append("")
    out += [f"- {note}." for note in base.get("notes", [])]
    out += [f"- Weights `{w['name']}` ({w['bytes'] / 1e6:.1f} MB): SHA-256 `{w['sha256']}`." for w in base["weights"]]
    if not base["weights"]:
        out.append("- Weights not found locally at card time: no weights hash recorded.")
    return out + [""]


def _compute_section(training_metrics: dict, eval_metrics: dict, machine: dict, git: dict) -> list[str]:
    soft = ", ".join(f"{k} {v}" for k, v in machine["software"].items() if v)
    gpus = ", ".join(machine["gpus"]) or "none"
    out = ["## Hardware, compute and code", "",
           f"- Training: {training_metrics['device_name']}, precision "
           f"{training_metrics.get('precision', 'n/a')}, {training_metrics['train_seconds']:.0f} s = "
           f"{training_metrics['device_hours']:.4f} device-hours.",
           f"- Evaluation: {eval_metrics.get('device_name', 'not recorded')}.",
           f"- Machine that wrote this card: {machine['cpu']}, {machine['cpu_count']} CPUs, "
           f"{machine['memory_gib']} GiB RAM, GPUs: {gpus}; {machine['platform']}, Python {machine['python']}.",
           f"- Software: {soft}.",
           f"- Code: git commit `{git['commit']}`{_dirty(git)}"
           + (f" in `{git['repository']}`" if git.get("repository") else "")
           + ". This is the code when the card was written; a run of single stages may have trained with an "
             "earlier commit.", ""]
    return out


def _family(base_model: dict, training_metrics: dict):
    """The base model's family as training recorded it (else read from the checkpoint)."""
    return FAMILIES.get(training_metrics.get("family")) or family_for(base_model)


def _loading_section(base: dict, base_model: dict, adapter_path: str | None, vertical: str,
                     adapter_version: str | None, training_metrics: dict) -> list[str]:
    location = base_model.get("local_dir") or base["name"]
    folder = adapter_path or f"data/06_models/{vertical}/adapter/<version>/adapter"
    return ["## How to load", "",
            "The adapter folder holds plain PEFT files (`adapter_config.json`, `adapter_model.safetensors`):", "",
            "```python",
            *_family(base_model, training_metrics).loading_snippet(str(location), folder),
            "```", "",
            (f"Or with this project: `vernacular transcribe --vertical {vertical} FILES...`, or "
             f"`kedro run --pipeline={vertical}.transcribe --load-versions={vertical}.adapter:"
             f"{adapter_version or '<version>'}`."
             + (f" The embedded base model is rebuilt from its wheels with `python -m vernacular.models.whisper_ct2 "
                f"--embedded {base['name'].removeprefix('embedded:')} <out_dir>`." if base["kind"] == "embedded"
                else "")), ""]
