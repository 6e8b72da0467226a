"""Collect a round's comparisons: K answers per prompt from the round's own policy, for raters to rank.

Round 1 samples the SFT policy, round n the policy round n-1 ended with, on `num_prompts` distinct prompts drawn
from the RL prompt pool (never an evaluation prompt), with PPO's sampling code and settings (`pipeline.lm.sampling`).
Identical answers to one prompt are merged: ranking a duplicate wastes a rater's time. A prompt left with one
distinct answer has nothing to rank and is skipped (counted). Writes `<output_dir>/<n>/comparisons.jsonl`.

    python -m pipeline.rounds.collect --config recipes/tiny/rounds.yaml --round 1
    accelerate launch ... -m pipeline.rounds.collect ...   # prompts shared out across processes
"""

from __future__ import annotations

import random

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from transformers import set_seed

from pipeline.common.config import UserError, parse_config, run_main
from pipeline.common.data import load_prompts
from pipeline.common.models import check_model_dir, load_policy_for_inference, load_tokenizer
from pipeline.common.outputs import fingerprint
from pipeline.lm.sampling import (
    decode_responses,
    first_eos_mask,
    generate,
    generation_config,
    sampling_summary,
    set_aside,
    tokenize_prompts,
)
from pipeline.rounds.comparisons import COMPARISONS, prompt_id, write_jsonl
from pipeline.rounds.config import CONFIG_TYPES, RoundsConfig


def collect_seed(config: RoundsConfig, n: int) -> int:
    """Each round draws its own prompts and answers; the same recipe, seed and round draw the same again."""
    return config.seed * 1000 + n


def draw_prompts(config: RoundsConfig, n: int) -> list[str]:
    """`num_prompts` distinct pool prompts, none of them an evaluation prompt, drawn for round n."""
    pool = list(dict.fromkeys(load_prompts(config.prompts_path, "prompt")))
    held_out = set(load_prompts(config.eval_prompts_path, "prompt")) if config.eval_prompts_path else set()
    pool = [p for p in pool if p not in held_out]
    if len(pool) < 2:
        raise UserError(f"{config.prompts_path} holds {len(pool)} distinct prompt(s) outside the evaluation "
                        "prompts; collecting needs a pool of prompts (make data).")  # fmt: skip
    rng = random.Random(collect_seed(config, n))
    return rng.sample(pool, min(config.num_prompts, len(pool)))


def sample_answers(
    model, tokenizer, prompts: list[str], config: RoundsConfig, seed: int
) -> list[tuple[str, bool]]:
    """K answers per prompt (prompt-major), each (text, ended with EOS)."""
    gen = generation_config(config.max_new_tokens, config.temperature, tokenizer)
    set_seed(seed)
    repeated = [p for p in prompts for _ in range(config.responses_per_prompt)]
    answers = []
    for i in range(0, len(repeated), config.batch_size):
        batch = tokenize_prompts(tokenizer, repeated[i : i + config.batch_size], config.max_prompt_length,
                                 model.device)  # fmt: skip
        responses = generate(model, batch, gen, config.batch_size)
        texts, ended, _ = decode_responses(tokenizer, responses, first_eos_mask(responses, gen.eos_token_id))
        answers += zip(texts, ended)
    return answers


def comparison_rows(prompts: list[str], answers: list[tuple[str, bool]], k: int, header: dict) -> list[dict]:
    """One row per prompt with its distinct answers (first occurrence kept); prompts with one distinct answer
    dropped."""
    rows = []
    for i, prompt in enumerate(prompts):
        distinct = dict(answers[i * k : (i + 1) * k])  # text -> ended; dict keeps the first-drawn order
        if len(distinct) < 2:
            continue
        rows.append({"id": prompt_id(prompt), "prompt": prompt, "responses": list(distinct),
                     "ended": list(distinct.values()), "num_sampled": k, **header})  # fmt: skip
    return rows


def main(args=None):
    config, model_args = parse_config(CONFIG_TYPES, args)
    n = config.need_round()
    out = config.round_dir(n) / COMPARISONS
    if out.exists():
        raise UserError(f"{out} exists already: round {n} was collected. Delete it (and the round's rankings) to "
                        "collect again.")  # fmt: skip
    policy = config.policy_of(n)
    if n > 1 and not (config.round_dir(n - 1) / config.methods[0]).exists():
        raise UserError(f"Round {n} collects from the policy round {n - 1} ended with ({policy}), which does not "
                        f"exist yet: finish round {n - 1} first (make rounds ROUNDS={n - 1}).")  # fmt: skip
    check_model_dir(policy)
    prompts = draw_prompts(config, n)

    state = PartialState(cpu=not torch.cuda.is_available())
    per_rank = -(-len(prompts) // state.num_processes)
    mine = prompts[state.process_index * per_rank : (state.process_index + 1) * per_rank]
    tokenizer = load_tokenizer(policy, trust_remote_code=config.trust_remote_code)
    model = load_policy_for_inference(policy, model_args, state.device, config.trust_remote_code)
    if state.is_main_process:
        gen = generation_config(config.max_new_tokens, config.temperature, tokenizer)
        print(
            sampling_summary(f"Round {n}: collecting from {policy};", gen, set_aside(model, gen)), flush=True
        )
    seed = collect_seed(config, n)
    answers = gather_object(sample_answers(model, tokenizer, mine, config, seed + state.process_index))

    if state.is_main_process:
        header = {
            "round": n,
            "policy": {"path": policy, "fingerprint": fingerprint(policy)},
            "sampling": {
                "max_new_tokens": config.max_new_tokens,
                "temperature": config.temperature,
                "top_k": 0,
                "top_p": 1.0,
            },  # fmt: skip
            "seed": seed,
            "num_processes": state.num_processes,
        }
        rows = comparison_rows(prompts, answers, config.responses_per_prompt, header)
        merged = sum(config.responses_per_prompt - len(r["responses"]) for r in rows)
        skipped = len(prompts) - len(rows)
        if not rows:
            raise UserError(f"Every one of the {len(prompts)} prompts got {config.responses_per_prompt} identical "
                            "answers: nothing to rank. Raise temperature in rounds.yaml.")  # fmt: skip
        write_jsonl(out, rows)
        print(f"Round {n}: {len(rows)} prompts x up to {config.responses_per_prompt} answers -> {out} "
              f"({merged} duplicate answers merged, {skipped} prompts with one distinct answer skipped)")  # fmt: skip
    state.wait_for_everyone()
    state.destroy_process_group()


if __name__ == "__main__":
    run_main(main)
