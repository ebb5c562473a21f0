"""Training at scale on a tiny Whisper: length bucketing, early stopping with the best adapter kept,
encoder-output caching, data-parallel training over 2 processes (gloo), and resume after a real kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from peft import get_peft_model_state_dict

from vernacular.training.settings import LoraSettings, TrainSettings
from vernacular.training.train import train_lora_adapter
from vernacular.training.loop import (epoch_batches, latest_checkpoint,
                                 training_plan)


def settings(**overrides) -> TrainSettings:
    values = dict(epochs=2, batch_size=1, learning_rate=3e-2, warmup_ratio=0.0, checkpoint_every_steps=100,
                  device="cpu", progress=False, seed=3, validation_wer=False)
    values.update(overrides)
    return TrainSettings(**values)


NO_DROPOUT = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])


def _examples(durations):
    return [{"duration": d, "labels": [1, 2]} for d in durations]


def test_duration_batches_cover_every_utterance_once_within_the_budget():
    durations = [1.0, 9.5, 2.0, 3.0, 8.0, 1.5, 7.0, 2.5, 4.0, 0.8, 6.0, 5.5] * 5
    examples = _examples(durations)
    config = settings(batching="duration", batch_size=6, max_batch_seconds=16.0, bucket_batches=4)
    batches = epoch_batches(examples, config, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(len(examples)))
    for batch in batches:
        padded = len(batch) * max(durations[i] for i in batch)
        assert len(batch) <= 6 and (padded <= 16.0 or len(batch) == 1)
    assert batches == epoch_batches(examples, config, epoch=0)  # deterministic: resume replays it
    assert batches != epoch_batches(examples, config, epoch=1)
    # bucketing wastes less padding than batching the shuffle by count
    count = epoch_batches(examples, settings(batch_size=3), epoch=0)
    waste = lambda bs: sum(len(b) * max(durations[i] for i in b) - sum(durations[i] for i in b) for b in bs)
    assert waste(batches) < 0.5 * waste(count)


def test_training_plan_groups_micro_batches_per_step_and_process():
    examples = _examples([1.0] * 10)
    plan = training_plan(examples, settings(epochs=2, batch_size=2, gradient_accumulation_steps=2), world_size=2)
    # 5 micro-batches per epoch, 4 per step (2 accumulation x 2 processes): steps of 4 and 1, per epoch
    assert [len(step) for step in plan] == [4, 1, 4, 1]
    assert len(training_plan(examples, settings(epochs=2, batch_size=2, max_steps=3))) == 3


def test_duration_batching_trains_and_resumes_exactly(tiny_whisper, features_index, tmp_path):
    config = settings(batching="duration", batch_size=3, max_batch_seconds=6.0, checkpoint_every_steps=1)
    straight, a = train_lora_adapter(tiny_whisper, features_index, config, NO_DROPOUT, tmp_path / "a")
    assert a["completed"] and a["steps"] == len(a["losses"]) >= 2
    train_lora_adapter(tiny_whisper, features_index, config, NO_DROPOUT, tmp_path / "b", stop_after_steps=1)
    resumed, b = train_lora_adapter(tiny_whisper, features_index, config, NO_DROPOUT, tmp_path / "b")
    assert b["resumed_from"] and b["losses"] == a["losses"]


def test_early_stopping_keeps_the_adapter_with_the_best_validation_wer(tiny_whisper, features_index, tmp_path):
    config = settings(epochs=4, eval_every_steps=1, early_stopping_patience=2, validation_wer=True,
                      learning_rate=5e-2)
    model, metrics = train_lora_adapter(tiny_whisper, features_index, config, NO_DROPOUT, tmp_path / "ckpt")
    wers = [entry["wer"] for entry in metrics["validation_wers"]]
    assert len(wers) == metrics["steps"] and all(w is not None for w in wers)
    # replay the rule on the recorded WERs: stop after 2 evaluations without a strictly better WER
    best, stale, expected_stop = wers[0], 0, None
    for step, wer in enumerate(wers[1:], start=2):
        best, stale = (wer, 0) if wer < best else (best, stale + 1)
        if stale >= 2:
            expected_stop = step
            break
    assert metrics["stopped_early"] == (expected_stop is not None)
    if expected_stop is not None:
        assert metrics["steps"] == expected_stop < metrics["total_steps"]
    assert metrics["best_validation_wer"] == min(wers)
    assert metrics["best_step"] == wers.index(min(wers)) + 1
    best_state = torch.load(tmp_path / "ckpt" / metrics["run_id"] / "best" / "adapter.pt")
    returned = get_peft_model_state_dict(model)
    assert all(torch.equal(returned[k], best_state[k]) for k in best_state)
    if metrics["best_step"] != metrics["steps"]:  # the last state differs from the one returned
        last = torch.load(latest_checkpoint(tmp_path / "ckpt" / metrics["run_id"]) / "state.pt")["adapter"]
        assert any(not torch.equal(returned[k], last[k]) for k in last)


def test_cached_encoder_outputs_train_the_same_decoder_adapter(tiny_whisper, features_index, tmp_path):
    decoder_only = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"], scope="decoder")
    plain, a = train_lora_adapter(tiny_whisper, features_index, settings(), decoder_only, tmp_path / "a")
    cached, b = train_lora_adapter(tiny_whisper, features_index, settings(cache_encoder_outputs=True), decoder_only,
                                   tmp_path / "b")
    assert all(".encoder." not in n for n, p in plain.named_parameters() if p.requires_grad)
    # fp16 storage of the encoder states is the only difference
    assert b["losses"] == pytest.approx(a["losses"], rel=2e-2)
    with pytest.raises(ValueError, match="decoder only"):
        train_lora_adapter(tiny_whisper, features_index, settings(cache_encoder_outputs=True), NO_DROPOUT,
                           tmp_path / "c")


def test_two_process_data_parallel_equals_one_process_with_accumulation(tiny_whisper, features_index, tmp_path):
    # one process, 2 micro-batches per step == 2 processes (gloo), 1 micro-batch each
    single, one = train_lora_adapter(tiny_whisper, features_index, settings(gradient_accumulation_steps=2),
                                     NO_DROPOUT, tmp_path / "one")
    ddp, two = train_lora_adapter(tiny_whisper, features_index, settings(processes_per_node=2, num_threads=1), NO_DROPOUT,
                                  tmp_path / "two")
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["steps"] == one["steps"] == 4  # 3 utterances: micro-batches [2, 1] per epoch
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-4)
    a, b = get_peft_model_state_dict(single), get_peft_model_state_dict(ddp)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert a.keys() == b.keys() and worst < 1e-4, worst


RUNNER = """
import json, sys
from vernacular.training.settings import LoraSettings, TrainSettings
from vernacular.training.train import train_lora_adapter
spec = json.load(open(sys.argv[1]))
train_lora_adapter(spec["base"], spec["index"], TrainSettings(**spec["settings"]), LoraSettings(**spec["lora"]),
                   spec["root"])
"""


def test_resume_after_a_killed_run_matches_an_uninterrupted_one(tiny_whisper, features_index, tmp_path):
    from dataclasses import asdict

    lora = LoraSettings(r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj"])  # dropout: RNG must replay
    # same thread count in the child: a different float summation order would change the bits
    config = settings(epochs=6, checkpoint_every_steps=1, keep_checkpoints=20, num_threads=torch.get_num_threads())
    straight, a = train_lora_adapter(tiny_whisper, features_index, config, lora, tmp_path / "a")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"base": tiny_whisper, "index": features_index, "settings": asdict(config),
                                "lora": asdict(lora), "root": str(tmp_path / "b")}))
    child = subprocess.Popen([sys.executable, "-c", RUNNER, str(spec)], env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
                             start_new_session=True)
    run_dir = tmp_path / "b" / a["run_id"]
    deadline = time.time() + 300
    while time.time() < deadline and child.poll() is None and not (run_dir / "step-0000004").is_dir():
        time.sleep(0.005)  # a fast machine runs a tiny step in milliseconds
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    killed_at = latest_checkpoint(run_dir)
    assert killed_at is not None and int(killed_at.name.split("-")[1]) < a["total_steps"], "the run was not cut short"
    resumed, b = train_lora_adapter(tiny_whisper, features_index, config, lora, tmp_path / "b")
    assert b["resumed_from"] == killed_at.name and b["completed"]
    assert b["losses"] == a["losses"]
    x, y = get_peft_model_state_dict(straight), get_peft_model_state_dict(resumed)
    assert all(torch.equal(x[k], y[k]) for k in x)
