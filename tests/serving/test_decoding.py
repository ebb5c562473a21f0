"""Decoding guards, segments for latency, and merged vs unmerged adapter equivalence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from vernacular.models.loading import load_model
from vernacular.common.text import collapse_repeats
from vernacular.models.families import DecodeSettings
from vernacular.models.families.whisper import max_new_tokens_for
from vernacular.serving.decoding import build_segments, transcribe


@pytest.mark.parametrize("text, expected", [
    ("No, no, no, no, no, no.", "No, no,"),
    ("the end of it, the end of it, the end of it, the end of it", "the end of it, the end of it,"),
    ("There is no pneumothorax.", "There is no pneumothorax."),
    ("no no", "no no"),
    ("a b a b a b c", "a b a b c"),
])
def test_collapse_repeats(text, expected):
    """The n-gram trimming itself (the loop test switched off)."""
    assert collapse_repeats(text, 2, min_compression_ratio=0) == expected


@pytest.mark.parametrize("text", ["Five five five four.", "My account number is five five five five one two.",
                                  "The bank bank bank of the river.", "No, no, no, I said no.",
                                  "zero zero zero zero zero seven"])
def test_genuine_repeats_are_kept(text):
    assert collapse_repeats(text, 2) == text


def test_a_real_loop_is_cut():
    loop = "The patient was seen " + "an " * 60 + "today."
    assert collapse_repeats(loop, 2) == "The patient was seen an an today."
    assert collapse_repeats("There is no pneumothorax. " + "Thank you. " * 30, 2) == \
        "There is no pneumothorax. Thank you. Thank you."


def test_collapse_repeats_can_be_switched_off():
    assert collapse_repeats("x x x x", 0) == "x x x x"


def test_output_cap_grows_with_duration_and_is_bounded():
    settings = DecodeSettings(max_tokens_per_second=7.0, min_new_tokens_cap=16)
    assert max_new_tokens_for(0.5, settings) == 16
    assert max_new_tokens_for(10.0, settings) == 78
    assert max_new_tokens_for(300.0, settings) == 440


def test_segments_are_built_from_whole_clips_up_to_the_target():
    clips = [np.ones(16000 * s, dtype=np.float32) for s in (5, 6, 7, 8, 9, 10)]
    segments = build_segments(clips, target_seconds=20.0, gap_seconds=0.5, max_segments=2)
    assert len(segments) == 2
    assert all(len(s) <= 20 * 16000 for s in segments)
    assert len(segments[0]) == (5 + 6 + 7 + 1.5) * 16000


def test_unknown_decoding_setting_is_rejected():
    with pytest.raises(ValueError, match=r"unknown setting.*decoding\.beam"):
        DecodeSettings.from_dict({"beam": 4})


def test_merged_adapter_equals_unmerged(tiny_whisper, speech_clips):
    model, processor = load_model(tiny_whisper)[:2]
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at zero: give the adapter a real effect
            param.data.normal_(0, 0.05)
    peft_model.eval()
    audios = [a for _, a in speech_clips[:2]]
    features = processor.feature_extractor(audios, sampling_rate=16000, return_tensors="pt").input_features
    decoder_ids = torch.tensor([[50257, 50362, 383]] * 2)
    with torch.no_grad():
        unmerged = peft_model(input_features=features, decoder_input_ids=decoder_ids).logits
        with peft_model.disable_adapter():
            plain = peft_model(input_features=features, decoder_input_ids=decoder_ids).logits
        unmerged_texts = transcribe(peft_model, processor, audios, DecodeSettings(min_new_tokens_cap=8))
        merged_model = peft_model.merge_and_unload()
        merged = merged_model(input_features=features, decoder_input_ids=decoder_ids).logits
        merged_texts = transcribe(merged_model, processor, audios, DecodeSettings(min_new_tokens_cap=8))
    assert not torch.allclose(plain, unmerged, atol=1e-3)  # the adapter changes the output
    assert torch.allclose(merged, unmerged, atol=1e-4)
    assert merged_texts == unmerged_texts


def test_progress_bar_carries_its_label(tiny_whisper, speech_clips, capsys):
    model, processor = load_model(tiny_whisper)[:2]
    audios = [a for _, a in speech_clips[:2]]
    settings = DecodeSettings(min_new_tokens_cap=2, max_tokens_per_second=1.0)
    transcribe(model, processor, audios, settings, progress="adapter: forgetting control set")
    assert "adapter: forgetting control set" in capsys.readouterr().err
    transcribe(model, processor, audios, settings, progress=False)
    assert capsys.readouterr().err == ""


def test_repeat_stop_ends_only_sequences_stuck_in_a_loop():
    from vernacular.models.families.base import RepeatStop

    stop = RepeatStop(repeats=3)
    ids = torch.tensor([[1, 2, 7, 8, 7, 8, 7, 8],    # a 2-gram three times: stop
                        [1, 2, 3, 4, 5, 6, 7, 8],    # no repeat
                        [9, 5, 5, 5, 5, 5, 4, 4],    # 1-grams need 2 x 3 in a row
                        [5, 5, 5, 5, 5, 5, 5, 5]])   # ... which this has
    assert stop(ids, None).tolist() == [True, False, False, True]
    assert RepeatStop(repeats=3)(torch.tensor([[7, 8]]), None).tolist() == [False]  # too short to tell


def test_generation_stops_a_loop_of_the_untrained_model(tiny_whisper, speech_clips):
    """The randomly initialised model repeats itself; the generation-time guard ends that early."""
    model, processor = load_model(tiny_whisper)[:2]
    audios = [a for _, a in speech_clips[:2]]
    settings = dict(min_new_tokens_cap=60, max_ngram_repeats=0, loop_compression_ratio=0)
    free = transcribe(model, processor, audios, DecodeSettings(stop_repeats=0, **settings))
    stopped = transcribe(model, processor, audios, DecodeSettings(stop_repeats=3, **settings))
    tokens = [len(processor.tokenizer(t, add_special_tokens=False).input_ids) for t in free]
    assert max(tokens) >= 40, f"the untrained model did not loop: {free}"
    assert sum(len(t) for t in stopped) < sum(len(t) for t in free)
    for long, short in zip(free, stopped):
        assert long.startswith(short.strip()[: len(short.strip()) // 2])  # same start, cut short
