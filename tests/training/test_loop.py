"""Adapter training on a tiny Whisper: loss falls, resume equals an uninterrupted run, PEFT format."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict

from vernacular.catalog_datasets import AdapterDataset
from vernacular.models.loading import load_model
from vernacular.training.loop import latest_checkpoint
from vernacular.training.settings import LoraSettings, TrainSettings
from vernacular.training.train import train_lora_adapter


def settings(**overrides) -> TrainSettings:
    values = dict(epochs=8, batch_size=3, learning_rate=3e-2, warmup_ratio=0.0, checkpoint_every_steps=2,
                  device="cpu", progress=False, seed=3, validation_wer=False)  # WER: test_training_scale.py
    values.update(overrides)
    return TrainSettings(**values)


LORA = LoraSettings(r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj"])


def test_loss_falls_and_only_the_adapter_trains(tiny_whisper, features_index, tmp_path):
    model, metrics = train_lora_adapter(tiny_whisper, features_index, settings(), LORA, tmp_path / "ckpt")
    assert metrics["completed"] and metrics["steps"] == 8
    assert metrics["final_loss"] < metrics["first_loss"] - 0.2, metrics["losses"]
    assert 0 < metrics["trainable_params"] < 0.05 * metrics["total_params"]
    assert metrics["trainable_fraction"] == metrics["trainable_params"] / metrics["total_params"]
    assert metrics["validation_losses"] and metrics["validation_losses"][-1]["loss"] is not None
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    assert metrics["device"] == "cpu" and metrics["device_hours"] > 0


def test_resume_after_interruption_matches_uninterrupted_run(tiny_whisper, features_index, tmp_path):
    # 3 steps per epoch, 6 in all; checkpoints every 2 steps and at each epoch end (2, 3, 4, 6)
    config = settings(epochs=2, batch_size=1)
    straight, straight_metrics = train_lora_adapter(tiny_whisper, features_index, config, LORA, tmp_path / "a")
    _, partial = train_lora_adapter(tiny_whisper, features_index, config, LORA, tmp_path / "b", stop_after_steps=5)
    assert not partial["completed"] and partial["steps"] == 5
    # the run stopped after step 5, which was not checkpointed: resuming redoes it from step 4
    assert latest_checkpoint(tmp_path / "b" / partial["run_id"]).name == "step-0000004"
    resumed, resumed_metrics = train_lora_adapter(tiny_whisper, features_index, config, LORA, tmp_path / "b")
    assert resumed_metrics["resumed_from"] == "step-0000004" and resumed_metrics["completed"]
    assert resumed_metrics["losses"] == straight_metrics["losses"]
    a, b = get_peft_model_state_dict(straight), get_peft_model_state_dict(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_adapter_is_saved_in_plain_peft_format_and_reloads(tiny_whisper, features_index, tmp_path):
    model, _ = train_lora_adapter(tiny_whisper, features_index, settings(epochs=1), LORA, tmp_path / "ckpt")
    dataset = AdapterDataset(filepath=str(tmp_path / "adapter"))
    dataset.save({"model": model, "files": {"NOTE.md": "hello"}})
    path = dataset.load()
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "NOTE.md"} <= files
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert config["base_model_name_or_path"] == tiny_whisper["local_dir"]
    base, _ = load_model(tiny_whisper)[:2]
    reloaded = PeftModel.from_pretrained(base, path)
    saved = get_peft_model_state_dict(model)
    loaded = get_peft_model_state_dict(reloaded)
    assert all(torch.equal(saved[k].cpu(), loaded[k].cpu()) for k in saved)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match=r"unknown setting.*training\.learning_rte"):
        TrainSettings.from_dict({"epochs": 1, "learning_rte": 0.1})
    with pytest.raises(ValueError, match="epochs"):
        TrainSettings.from_dict({"epochs": 0})


def test_ranks_are_processes_per_node_times_nodes_and_torchrun_flags_come_from_them():
    assert not TrainSettings(processes_per_node=1, nodes=1).distributed
    assert TrainSettings(processes_per_node=2).distributed
    rendezvous = ["--node_rank=1", "--rdzv_backend=c10d", "--rdzv_endpoint=node0:29400"]
    assert TrainSettings(processes_per_node=1, nodes=2, launcher_args=rendezvous).distributed
    with pytest.raises(ValueError, match="needs the rendezvous"):
        TrainSettings(nodes=2)
    with pytest.raises(ValueError, match="set training.nodes and training.processes_per_node"):
        TrainSettings(processes_per_node=2, launcher_args=["--nproc_per_node=4"])
    with pytest.raises(ValueError, match="processes_per_node and nodes"):
        TrainSettings(nodes=0)
    with pytest.raises(ValueError, match=r"unknown setting.*training\.processes"):
        TrainSettings.from_dict({"processes": 2})  # the old name, per node but read as a total


def test_augmented_training_is_reproducible_across_resume(tiny_whisper, features_index, tmp_path):
    from vernacular.data.augment import AugmentSettings

    augmentation = AugmentSettings(enabled=True, noise_snr_db=20.0, freq_mask_param=10, time_mask_param=30)
    config = settings(epochs=1, batch_size=1)
    straight, a_metrics = train_lora_adapter(tiny_whisper, features_index, config, LORA, tmp_path / "a",
                                             augmentation=augmentation)
    plain, plain_metrics = train_lora_adapter(tiny_whisper, features_index, config, LORA, tmp_path / "p")
    assert a_metrics["losses"] != plain_metrics["losses"]  # the augmentation is really applied
    assert a_metrics["run_id"] != plain_metrics["run_id"]
    train_lora_adapter(tiny_whisper, features_index, config, LORA, tmp_path / "b", stop_after_steps=1,
                       augmentation=augmentation)
    resumed, b_metrics = train_lora_adapter(tiny_whisper, features_index, config, LORA, tmp_path / "b",
                                            augmentation=augmentation)
    assert b_metrics["losses"] == a_metrics["losses"]
    a, b = get_peft_model_state_dict(straight), get_peft_model_state_dict(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_each_adapter_method_trains_saves_and_reloads(method, tiny_whisper, features_index, tmp_path):
    from vernacular.training.settings import LoraSettings

    adapter = LoraSettings.from_dict({"method": method, "r": 4, "alpha": 8, "dropout": 0.0,
                              "target_modules": ["k_proj", "v_proj", "fc2"] if method == "ia3" else ["q_proj", "v_proj"]})
    model, metrics = train_lora_adapter(tiny_whisper, features_index, settings(epochs=2), adapter, tmp_path / "c")
    assert metrics["final_loss"] < metrics["first_loss"]
    assert metrics["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    config_type = {"lora": "LORA", "dora": "LORA", "ia3": "IA3"}[method]
    dataset = AdapterDataset(filepath=str(tmp_path / "adapter"))
    dataset.save(model)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == config_type and config.get("use_dora", False) == (method == "dora")
    base, _ = load_model(tiny_whisper)[:2]
    reloaded = PeftModel.from_pretrained(base, dataset.load())
    saved, loaded = get_peft_model_state_dict(model), get_peft_model_state_dict(reloaded)
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_parameter_budget_picks_the_largest_rank_that_fits(tiny_whisper):
    from peft import get_peft_model

    from vernacular.training.adapters import build_peft_config

    for budget in ("0.5%", 0.02):
        adapter = LoraSettings.from_dict({"param_budget": budget, "target_modules": ["q_proj", "v_proj"]})
        model, _ = load_model(tiny_whisper)[:2]
        total = sum(p.numel() for p in model.parameters())
        config = build_peft_config(model, adapter)
        peft_model = get_peft_model(model, config)
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        fraction = adapter.budget_fraction()
        assert trainable <= fraction * total < trainable * (config.r + 1) / config.r
        assert config.lora_alpha / config.r == 2.0
    with pytest.raises(ValueError, match="below one rank"):
        build_peft_config(load_model(tiny_whisper)[:2][0], LoraSettings.from_dict({"param_budget": "0.0001%"}))
    with pytest.raises(ValueError, match="adapter.method"):
        LoraSettings.from_dict({"method": "prefix"})


def test_gradient_accumulation_equals_one_large_batch(tiny_whisper, features_index, tmp_path):
    lora = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    big, big_metrics = train_lora_adapter(tiny_whisper, features_index, settings(epochs=2, batch_size=3), lora,
                                          tmp_path / "big")
    small, small_metrics = train_lora_adapter(
        tiny_whisper, features_index, settings(epochs=2, batch_size=1, gradient_accumulation_steps=3), lora,
        tmp_path / "acc")
    assert small_metrics["steps"] == big_metrics["steps"] == 2
    assert small_metrics["losses"] == pytest.approx(big_metrics["losses"], abs=1e-4)
    a, b = get_peft_model_state_dict(big), get_peft_model_state_dict(small)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_gradient_checkpointing_gives_the_same_training(tiny_whisper, features_index, tmp_path):
    lora = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    _, plain = train_lora_adapter(tiny_whisper, features_index, settings(epochs=1), lora, tmp_path / "a")
    _, checkpointed = train_lora_adapter(tiny_whisper, features_index, settings(epochs=1, gradient_checkpointing=True),
                                         lora, tmp_path / "b")
    assert checkpointed["losses"] == pytest.approx(plain["losses"], abs=1e-4)
