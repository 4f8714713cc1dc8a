"""Training: pretraining, instruction fine-tuning (full and LoRA), evaluation and plots; drives gpt2tui's model.

Installed as `gpt2tui.training`. Modules: `data` (token shards, instruction sets, collate), `loop` (the one training
loop: optimizer, schedule, precision, checkpoints, resume, DDP), `pretrain`, `finetune`, `lora`, `evaluate`, `plots`,
and `cli` (the `pretrain`, `finetune` and `evaluate` subcommands of `gpt2tui`).
"""
