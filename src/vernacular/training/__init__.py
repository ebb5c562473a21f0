"""Adapter training: settings, PEFT adapter configuration, the training loop and its distributed launch.

`train.train_lora_adapter` is the entry point; `loop` holds the loop (batches, accumulation,
checkpoints with exact resume, validation WER, early stopping), `distributed` the torchrun launch,
`adapters` the PEFT config, `settings` the typed `training` and `adapter` sections.
"""
