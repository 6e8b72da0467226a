"""Stage 3: PPO (InstructGPT) with a two-headed policy on one shared frozen base model.

python -m pipeline.ppo --config recipes/tiny/ppo.yaml [--field value ...]
accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m pipeline.ppo --config ...
"""

from __future__ import annotations

from trl import ModelConfig

from pipeline.common.config import parse_config
from pipeline.common.lock import one_writer
from pipeline.ppo.config import PPOConfig
from pipeline.ppo.trainer import PPOTrainer

CONFIG_TYPES: tuple[type, ...] = (PPOConfig, ModelConfig)


def main(args=None):
    ppo_args, model_args = parse_config(CONFIG_TYPES, args)
    _ = ppo_args.device  # the process group: every rank agrees on the lock
    with one_writer(ppo_args.output_dir, "ppo", ppo_args.process_index == 0):
        trainer = PPOTrainer(ppo_args, model_args)
        trainer.train()
    return trainer


__all__ = ["CONFIG_TYPES", "PPOConfig", "main"]
