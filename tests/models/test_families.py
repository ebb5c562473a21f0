"""Model families (Whisper, CTC, RNN-T) behind one interface, on tiny random models built offline.

Each non-Whisper model is built from a config with a small character tokenizer written here (no hub
access), saved with its processor and loaded back through `vernacular.models.loading.load_model`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from vernacular.data.audio import write_wav
from vernacular.models.families import CTC, IGNORE_INDEX, RNNT, WHISPER, family_for
from vernacular.data.features import extract_features, load_split
from vernacular.models.loading import load_model, load_processor, resolve_base_model
from vernacular.models.families import DecodeSettings
from vernacular.serving.decoding import transcribe

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _char_tokenizer(extra_special: str, pad: str):
    """A SentencePiece-like character tokenizer (Metaspace + BPE without merges), as Parakeet/Nemotron use."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import ParakeetTokenizer

    pieces = ["<unk>", "▁", *LETTERS, "'", ".", ",", "?", *("▁" + c for c in LETTERS), extra_special]
    backend = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.add_special_tokens([extra_special])
    return ParakeetTokenizer(tokenizer_object=backend, unk_token="<unk>", pad_token=pad), len(pieces)


def _save(out: Path, model, processor) -> dict:
    # transformers' small default init (std 0.02) nearly silences a 32-wide random model's encoder, so
    # gradients to its attention would vanish; Xavier keeps the signal so a few LoRA steps show.
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return resolve_base_model(str(out), out / "unused-cache")


def build_wav2vec2(out: Path) -> dict:
    from transformers import (Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC,
                              Wav2Vec2Processor)

    # Upper-case vocabulary like facebook/wav2vec2-base-960h: labels must be upper-cased to match.
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "'": 5,
             **{c: 6 + i for i, c in enumerate(LETTERS.upper())}}
    out.mkdir(parents=True)
    (out / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(out / "vocab.json"), word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                         return_attention_mask=True)
    config = Wav2Vec2Config(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, conv_dim=(32, 32, 32), conv_stride=(5, 8, 8), conv_kernel=(10, 8, 8),
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="layer",
                            do_stable_layer_norm=True, pad_token_id=0, layerdrop=0.1)
    torch.manual_seed(0)
    return _save(out, Wav2Vec2ForCTC(config), Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer))


# Subsampling 2 (real checkpoints: 8 with ~1000-piece vocabularies): with this character vocabulary a
# transcript has more labels than 8x-subsampled frames, which CTC cannot align.
TINY_ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    subsampling_conv_channels=16, num_mel_bins=80, subsampling_factor=2)


def build_parakeet_ctc(out: Path) -> dict:
    from transformers import ParakeetCTCConfig, ParakeetFeatureExtractor, ParakeetForCTC, ParakeetProcessor

    tokenizer, size = _char_tokenizer("<pad>", pad="<pad>")  # blank = pad = last id, as in parakeet-ctc-1.1b
    config = ParakeetCTCConfig(vocab_size=size, pad_token_id=size - 1, encoder_config=TINY_ENCODER)
    torch.manual_seed(0)
    return _save(out, ParakeetForCTC(config), ParakeetProcessor(ParakeetFeatureExtractor(feature_size=80), tokenizer))


def build_nemotron(out: Path) -> dict:
    from transformers import Nemotron3_5AsrConfig, Nemotron3_5AsrForRNNT
    from transformers.models.nemotron3_5_asr import Nemotron3_5AsrProcessor
    from transformers.models.nemotron_asr_streaming import NemotronAsrStreamingFeatureExtractor

    tokenizer, size = _char_tokenizer("<blank>", pad="<unk>")  # blank = last id, pad 0, as in the real config
    config = Nemotron3_5AsrConfig(vocab_size=size, blank_token_id=size - 1, pad_token_id=0, decoder_hidden_size=32,
                                  num_decoder_layers=1, prompt_intermediate_size=32, max_symbols_per_step=2,
                                  encoder_config={"model_type": "nemotron_asr_streaming_encoder", **TINY_ENCODER})
    torch.manual_seed(0)
    processor = Nemotron3_5AsrProcessor(NemotronAsrStreamingFeatureExtractor(feature_size=80), tokenizer)
    return _save(out, Nemotron3_5AsrForRNNT(config), processor)


BUILDERS = {"wav2vec2": build_wav2vec2, "parakeet_ctc": build_parakeet_ctc, "nemotron3_5_asr": build_nemotron}
EXPECTED = {"whisper": WHISPER, "wav2vec2": CTC, "parakeet_ctc": CTC, "nemotron3_5_asr": RNNT}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: per-op threading overhead dominates, and on a busy 2-core machine an
    OpenMP barrier per LSTM step (the RNN-T predictor) costs ~50 ms with 2 threads vs 0.4 ms with 1."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, tiny_whisper) -> dict:
    root = tmp_path_factory.mktemp("families")
    return {"whisper": tiny_whisper, **{name: build(root / name) for name, build in BUILDERS.items()}}


@pytest.fixture(scope="module")
def clips(speech_clips):
    return [(text, audio) for text, audio in speech_clips[:3]]


def _examples(family, processor, clips):
    feats = family.features(processor, [a for _, a in clips])
    return [{"features": f, "pad_value": p, "labels": family.label_ids(processor, t)} for (t, _), (f, p)
            in zip(clips, feats)]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_family_trains_decodes_saves_and_reloads(name, tiny_models, clips, tmp_path):
    base = tiny_models[name]
    assert family_for(base) is EXPECTED[name]
    model, processor, family = load_model(base)
    assert family is EXPECTED[name] and not model.training
    examples = _examples(family, processor, clips)
    assert all(f.dtype == torch.float16 for f in (ex["features"] for ex in examples))
    batch = family.collate(examples, processor, family.fixed_frames(processor))
    n_tokens = family.n_label_tokens(batch)
    assert n_tokens == sum(len(ex["labels"]) for ex in examples) - (len(examples) if family is WHISPER else 0)

    family.prepare_for_training(model)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=family.default_target_modules))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=3e-2)
    torch.manual_seed(0)
    peft_model.eval()  # no dropout or SpecAugment: the loss curve then measures the adapter alone
    losses = []
    for _ in range(6):
        loss = family.loss(peft_model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert np.mean(losses[-2:]) < 0.98 * losses[0], losses

    settings = DecodeSettings(batch_size=2, min_new_tokens_cap=8, max_tokens_per_second=4.0)
    # one batch of 1-s clips: an untrained transducer emits up to max_symbols_per_step symbols per frame
    audios = [a[:16000] for _, a in clips[:2]]
    with torch.no_grad():
        texts = transcribe(peft_model, processor, audios, settings)
        logits = peft_model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert len(texts) == len(audios) and all(isinstance(t, str) for t in texts)

    peft_model.save_pretrained(tmp_path / "adapter")
    fresh, _, _ = load_model(base)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter")
    reloaded.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        assert torch.allclose(reloaded(**inputs).logits, logits, atol=1e-5)
        assert transcribe(reloaded, processor, audios, settings) == texts
        assert torch.allclose(reloaded.merge_and_unload()(**inputs).logits, logits, atol=1e-4)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_batched_loss_is_the_mean_per_label_token(name, tiny_models, clips):
    """Padding is invisible to the loss: the batch loss equals the token-weighted mean of one-clip losses."""
    model, processor, family = load_model(tiny_models[name])
    examples = _examples(family, processor, clips)
    frames = family.fixed_frames(processor)
    with torch.no_grad():
        batch = family.collate(examples, processor, frames)
        together = family.loss(model, batch).item()
        singles = [family.collate([ex], processor, frames) for ex in examples]
        weighted = sum(family.loss(model, b).item() * family.n_label_tokens(b) for b in singles)
    assert together == pytest.approx(weighted / family.n_label_tokens(batch), rel=1e-4)


@pytest.mark.parametrize("name", ["wav2vec2", "parakeet_ctc", "nemotron3_5_asr"])
def test_cached_features_rebuild_the_processor_batch(name, tiny_models, clips):
    """features() + collate() give the input the processor itself builds for the batch (fp16 storage aside)."""
    processor = load_processor(tiny_models[name])
    family = family_for(tiny_models[name])
    audios = [a for _, a in clips]
    examples = [{"features": f, "pad_value": p, "labels": [1]} for f, p in family.features(processor, audios)]
    batch = family.collate(examples, processor)
    direct = processor.feature_extractor(audios, sampling_rate=16000, return_tensors="pt", padding="longest",
                                         return_attention_mask=True)
    key = processor.feature_extractor.model_input_names[0]
    mask = batch["attention_mask"].bool()
    assert torch.equal(mask, direct["attention_mask"].bool()[:, :mask.shape[1]])
    assert not direct["attention_mask"].bool()[:, mask.shape[1]:].any()
    values = direct[key][:, :mask.shape[1]]
    scale = values[mask].abs().max()
    assert torch.allclose(batch[key][mask], values[mask], atol=2e-3 * float(scale))
    if name != "wav2vec2":
        assert batch[key].shape[-1] == 80  # (batch, frames, n_mels)


def test_layerdrop_is_switched_off_for_training(tiny_models):
    model, _, family = load_model(tiny_models["parakeet_ctc"])
    assert model.config.encoder_config.layerdrop == pytest.approx(0.1) and model.encoder.layerdrop == pytest.approx(0.1)
    family.prepare_for_training(model)
    assert model.config.encoder_config.layerdrop == 0 and model.encoder.layerdrop == 0

    wav2vec2, _, family = load_model(tiny_models["wav2vec2"])
    family.prepare_for_training(get_peft_model(wav2vec2, LoraConfig(target_modules=family.default_target_modules)))
    assert wav2vec2.config.layerdrop == 0
    assert not any(p.requires_grad for p in wav2vec2.wav2vec2.feature_extractor.parameters())


def test_labels_follow_the_vocabulary(tiny_models):
    wav2vec2 = load_processor(tiny_models["wav2vec2"])
    ids = CTC.label_ids(wav2vec2, "There is no effusion.")  # '.' is not in this vocabulary: <unk>
    assert wav2vec2.tokenizer.decode(ids, group_tokens=False) == "THERE IS NO EFFUSION<unk>"
    assert CTC.unknown_token_id(wav2vec2) in ids
    nemotron = load_processor(tiny_models["nemotron3_5_asr"])
    ids = RNNT.label_ids(nemotron, "Mild Cardiomegaly.")
    assert nemotron.blank_token_id not in ids
    assert nemotron.tokenizer.decode(ids, group_tokens=False) == "mild cardiomegaly."


def test_feature_cache_records_the_family(tiny_models, clips, tmp_path):
    rows = []
    for i, (text, audio) in enumerate(clips):
        rows.append({"utterance_id": f"u{i}", "audio_path": str(write_wav(tmp_path / f"c{i}.wav", audio)),
                     "text": text, "speaker": "v", "split": "train"})
    manifest = pd.DataFrame(rows)
    base = tiny_models["parakeet_ctc"]
    processor = load_processor(base)
    with pytest.raises(ValueError, match="pass family="):
        extract_features(manifest, processor, tmp_path / "cache", splits=("train",), progress=False)
    index = extract_features(manifest, processor, tmp_path / "cache", splits=("train",), progress=False,
                             family=family_for(base))
    assert index["family"] == "ctc" and index["n_frames"] is None and index["counts"] == {"train": 3}
    train = load_split(index, "train")
    assert all(f.ndim == 2 and f.shape[1] == 80 for f in train["features"])
    examples = [{"features": f, "pad_value": p, "labels": l}
                for f, p, l in zip(train["features"], train["pad_values"], train["labels"])]
    assert CTC.collate(examples, processor)["labels"].shape[0] == 3
    whisper_index = extract_features(manifest, load_processor(tiny_models["whisper"]), tmp_path / "cache",
                                     splits=("train",), progress=False)
    assert whisper_index["family"] == "whisper" and whisper_index["n_frames"] == 3000
    assert whisper_index["fingerprint"] != index["fingerprint"]


def test_whisper_collate_feeds_the_prompt_and_predicts_the_next_token(tiny_models, clips):
    processor = load_processor(tiny_models["whisper"])
    examples = _examples(WHISPER, processor, clips)
    batch = WHISPER.collate(examples, processor)
    assert batch["input_features"].shape == (3, 80, 3000)
    first = examples[0]["labels"]
    assert batch["decoder_input_ids"][0, :len(first) - 1].tolist() == first[:-1]
    assert batch["labels"][0, :len(first) - 1].tolist() == first[1:]
    shortest = min(range(3), key=lambda i: len(examples[i]["labels"]))
    assert (batch["labels"][shortest, len(examples[shortest]["labels"]) - 1:] == IGNORE_INDEX).all()


def test_family_selection_and_clear_errors(tiny_models, tmp_path):
    from transformers import ParakeetTDTConfig, Wav2Vec2Config

    parakeet_dir = tiny_models["parakeet_ctc"]["local_dir"]
    assert family_for(resolve_base_model(parakeet_dir, tmp_path, family="ctc")) is CTC
    with pytest.raises(ValueError, match="is a ctc checkpoint"):
        family_for(resolve_base_model(parakeet_dir, tmp_path, family="whisper"))
    with pytest.raises(ValueError, match="model.family must be"):
        resolve_base_model(parakeet_dir, tmp_path, family="seq2seq")
    with pytest.raises(ValueError, match="not wired up"):
        family_for(ParakeetTDTConfig())
    with pytest.raises(ValueError, match="no CTC head"):
        family_for(Wav2Vec2Config(architectures=["Wav2Vec2ForPreTraining"]))
    with pytest.raises(OSError, match="HF_HUB_OFFLINE"):
        family_for("nvidia/not-a-cached-model")


@pytest.mark.parametrize("name", ["wav2vec2", "parakeet_ctc", "nemotron3_5_asr"])
def test_training_loop_trains_every_family(name, tiny_models, speech_clips, tmp_path):
    """The pipeline's training loop (bucketing, accumulation, validation WER, best adapter) on each family."""
    from vernacular.training.settings import LoraSettings, TrainSettings
    from vernacular.training.train import train_lora_adapter

    base = tiny_models[name]
    processor = load_processor(base)
    family = family_for(base)
    rows = [{"utterance_id": f"u{i}", "audio_path": str(write_wav(tmp_path / f"{i}.wav", audio)), "text": text,
             "speaker": "v", "split": "train" if i < 3 else "validation"} for i, (text, audio) in enumerate(speech_clips)]
    index = extract_features(pd.DataFrame(rows), processor, tmp_path / "cache", progress=False, family=family)
    assert index["family"] == family.name
    settings = TrainSettings(epochs=6, batch_size=2, batching="duration", max_batch_seconds=30.0,
                             gradient_accumulation_steps=2, learning_rate=3e-3, warmup_ratio=0.0, device="cpu",
                             progress=False, seed=1, max_validation_utterances=1)
    lora = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=family.default_target_modules)
    model, metrics = train_lora_adapter(base, index, settings, lora, tmp_path / "ckpt")
    assert metrics["completed"] and metrics["final_loss"] < metrics["first_loss"], metrics["losses"]
    assert len(metrics["validation_wers"]) == 6 and metrics["best_validation_wer"] == min(
        w["wer"] for w in metrics["validation_wers"])
    assert 0 < metrics["trainable_fraction"] < 0.5
    assert all(isinstance(t, str) for t in family.transcribe(model, processor, [a for _, a in speech_clips[:2]]))
