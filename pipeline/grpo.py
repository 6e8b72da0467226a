"""Stage 3, GRPO (Shao et al., 2024) through TRL's `GRPOTrainer`, from the SFT policy, scored by our reward model.

Each prompt gets `num_generations` answers; an answer's advantage is its score against its group's mean (and
spread), so no value model is trained. The KL penalty `beta` (TRL's default is 0) holds the policy near the SFT
policy, the adapter-free model. What this shares with RLOO and DPO (start model, scoring, output layout):
`pipeline.online`.

    python -m pipeline.grpo --config recipes/tiny/grpo.yaml [--beta 0.1 ...]
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m pipeline.grpo --config ...

Output (`output_dir`): the LoRA adapter + tokenizer, a plain merged model in `merged/`, `metrics.jsonl`.
"""

from __future__ import annotations

from trl import GRPOConfig, GRPOTrainer

from pipeline.common.config import parse_config, run_main
from pipeline.common.training import LoraModelConfig
from pipeline.online import OnlineScriptArguments, train_online

CONFIG_TYPES = (OnlineScriptArguments, GRPOConfig, LoraModelConfig)


def main(args=None, callbacks=None) -> dict:
    return train_online("grpo", GRPOTrainer, parse_config(CONFIG_TYPES, args), callbacks)


if __name__ == "__main__":
    run_main(main)
