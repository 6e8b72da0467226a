"""Stage 3, RLOO (Ahmadian et al., 2024) through TRL's `RLOOTrainer`, from the SFT policy, scored by our reward
model.

Each prompt gets `num_generations` answers; an answer's baseline is the mean score of the others (REINFORCE
leave-one-out), so no value model is trained; `beta` is the KL penalty to the SFT policy. What this shares with
GRPO and DPO (start model, scoring, output layout): `pipeline.online`.

    python -m pipeline.rloo --config recipes/tiny/rloo.yaml [--beta 0.1 ...]

Output (`output_dir`): the LoRA adapter + tokenizer, a plain merged model in `merged/`, `metrics.jsonl`.
"""

from __future__ import annotations

from trl import RLOOConfig, RLOOTrainer

from pipeline.common.config import parse_config, run_main
from pipeline.common.training import LoraModelConfig
from pipeline.online import OnlineScriptArguments, train_online

CONFIG_TYPES = (OnlineScriptArguments, RLOOConfig, LoraModelConfig)


def main(args=None, callbacks=None) -> dict:
    return train_online("rloo", RLOOTrainer, parse_config(CONFIG_TYPES, args), callbacks)


if __name__ == "__main__":
    run_main(main)
