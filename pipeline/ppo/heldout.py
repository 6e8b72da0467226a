"""The policy on held-out prompts during PPO: sample tables (every `sample_every` steps) and gold evaluations
(every `eval_every` steps), one point each of the over-optimisation curve (Gao et al., 2022).

Both sample on a forked RNG with a fixed seed: every table and evaluation draws the same way, so they differ only by
what the policy learnt, and training's own random stream is the same with them or without. Both are collective
(generation may be under ZeRO-3): every rank calls them, on the same prompts, so there is nothing to gather.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from trl.models.utils import unwrap_model_for_generation

from pipeline.lm.logprobs import response_logprobs
from pipeline.lm.sampling import decode_responses, first_eos_mask, generate, tokenize_prompts
from pipeline.ppo.models import reference_logprobs


class HeldOut:
    """`prompts`: the held-out prompts (eval_prompts_path); the first num_samples make the sample table, the first
    eval_num_prompts the gold evaluation, scored by `gold_fn` (eval_reward_fn; None: no gold evaluation)."""

    def __init__(self, prompts, gold_fn, args, accelerator, tokenizer, scorer, gen_config, synced_gpus, ref_model,
                 samples_path: Path):  # fmt: skip
        self.table_prompts = prompts[: args.num_samples]
        self.gold_prompts = prompts[: args.eval_num_prompts]
        self.gold_fn = gold_fn
        self.args, self.accelerator, self.tokenizer, self.scorer = args, accelerator, tokenizer, scorer
        self.gen_config, self.synced_gpus, self.ref_model = gen_config, synced_gpus, ref_model
        self.samples_path = samples_path

    def _sample(self, model, prompts: list[str]) -> tuple[dict, torch.Tensor]:
        """The queries of `prompts` and the policy's responses, drawn on a forked RNG seeded with args.seed."""
        acc, args = self.accelerator, self.args
        queries = tokenize_prompts(self.tokenizer, prompts, args.max_prompt_length, acc.device)
        on_cpu = acc.device.type == "cpu"
        with torch.random.fork_rng(
            devices=[] if on_cpu else [acc.device], device_type=None if on_cpu else acc.device.type
        ):
            torch.manual_seed(args.seed)
            # Under the training forward's autocast, as the rollout samples (pipeline.common.precision).
            with unwrap_model_for_generation(model, acc) as unwrapped, acc.autocast():
                responses = generate(unwrapped, queries, self.gen_config, args.local_rollout_forward_batch_size,
                                     self.synced_gpus)  # fmt: skip
        return queries, responses

    @torch.no_grad()
    def gold_eval(self, model) -> dict[str, float]:
        """Held-out answers scored by the reward model and by the gold labeler, with their KL from the SFT policy
        (k1, summed per answer). `model` is the prepared policy."""
        args, prompts = self.args, self.gold_prompts
        queries, responses = self._sample(model, prompts)
        mask = first_eos_mask(responses, self.tokenizer.eos_token_id)
        input_ids = torch.cat([queries["input_ids"], responses], 1)
        attention_mask = torch.cat([queries["attention_mask"], mask.long()], 1)
        policy, R = self.accelerator.unwrap_model(model), responses.shape[1]
        chunk = args.local_rollout_forward_batch_size
        kl = []
        for i in range(0, len(prompts), chunk):
            rows = slice(i, i + chunk)
            logits, _ = policy(input_ids[rows], attention_mask[rows], R, with_values=False)
            logprobs = response_logprobs(logits, responses[rows], args.temperature)
            with self.accelerator.autocast():
                ref_logprobs = reference_logprobs(policy, self.ref_model, input_ids[rows], attention_mask[rows],
                                                  responses[rows], args.temperature)  # fmt: skip
            kl.append(((logprobs - ref_logprobs) * mask[rows]).sum(1))
        texts, ended, _ = decode_responses(self.tokenizer, responses, mask)
        scores = self.scorer(prompts, texts, ended)
        gold = [float(x) for x in self.gold_fn(prompts, texts)]
        return {"eval/reward_model_score": scores.mean().item(), "eval/labeler_score": sum(gold) / len(gold),
                "eval/kl": torch.cat(kl).mean().item()}  # fmt: skip

    @torch.no_grad()
    def log_samples(self, model, step: int, tracking) -> None:
        """Answer the table's prompts and score them; the main process appends the rows to samples.jsonl, logs
        them to the trackers and prints them."""
        if not self.table_prompts:
            return
        prompts = self.table_prompts
        _, responses = self._sample(model, prompts)
        mask = first_eos_mask(responses, self.tokenizer.eos_token_id)
        texts, ended, _ = decode_responses(self.tokenizer, responses, mask)
        scores = self.scorer(prompts, texts, ended).tolist()
        if not self.accelerator.is_main_process:
            return
        rows = [{"step": step, "prompt": p, "response": r, "score": s}
                for p, r, s in zip(prompts, texts, scores)]  # fmt: skip
        with open(self.samples_path, "a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        tracking.log_table("samples", list(rows[0]), [list(row.values()) for row in rows], step)
        print(f"--- samples at step {step} ---")
        print(f"{'score':>7} | {'prompt':<40} | response")
        for row in rows:
            prompt = " ".join(row["prompt"].split())[-40:]
            print(f"{row['score']:7.3f} | {prompt:<40} | {' '.join(row['response'].split())[:100]}")
