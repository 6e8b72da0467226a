"""PPOTrainer: rollout -> score -> KL-penalised per-token rewards -> GAE -> clipped PPO updates, on Accelerate.

The loop follows the old TRL PPOTrainer and "The N+ implementation details of RLHF with PPO": logprobs are
recomputed with a forward pass (not taken from generate), logits are divided by the sampling temperature, the
score lands on the last response token, advantages are whitened, dropout is off. Metric names are TRL's.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import save_file
from transformers import get_scheduler
from trl.models.utils import unwrap_model_for_generation
from trl.trainer.utils import entropy_from_logits

from pipeline.analysis.health import CollapseWatch
from pipeline.common import outputs, tracking
from pipeline.common.config import NonFiniteError, UserError
from pipeline.common.models import load_base_of, load_callable, load_tokenizer
from pipeline.common.training import end_distributed, local_loading_from_now_on, report_engine
from pipeline.lm.logprobs import response_logits, response_logprobs, sampled_logits
from pipeline.lm.packing import check_packed_responses
from pipeline.lm.sampling import (
    first_eos_mask,
    generate,
    generation_config,
    load_prompts,
    sampling_summary,
    set_aside,
    tokenize_prompts,
)
from pipeline.lm.scoring import RewardScorer
from pipeline.ppo import core, distributed
from pipeline.ppo.checkpoint import is_checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint
from pipeline.ppo.models import POLICY, VALUE, load_policy
from pipeline.ppo.timing import PHASES, PhaseTimer


class PPOTrainer:
    def __init__(self, args, model_args):
        self.args = args
        # What this run is, checked against the output folder and any checkpoint before anything is written.
        self.identity = outputs.run_identity("ppo", (args, model_args))
        self.output_dir = Path(args.output_dir)
        self.work_dir = outputs.checkpoints_dir(
            self.output_dir
        )  # checkpoints and the logs of the run in progress
        self.resume = outputs.resolve_resume(args.resume_from_checkpoint, self.output_dir, is_checkpoint)
        outputs.check_run(self.identity, self.output_dir, self.resume, args.overwrite_output_dir)
        self.trackers = tracking.trackers(args.report_to)  # a missing tracker package fails before any load
        self.tracked_config = tracking.public_config(args, model_args)
        # The process group as transformers' Trainer starts it for the SFT and reward stages (reading args.device
        # does it: gloo when use_cpu), then the engine the launch config asks for; DeepSpeed runs on CPU too.
        _ = args.device
        self.accelerator = Accelerator(
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            deepspeed_plugin=args.deepspeed_plugin,
            mixed_precision="bf16" if args.bf16 else ("fp16" if args.fp16 else "no"),
        )
        acc = self.accelerator
        distributed.check_supported(acc)
        report_engine(acc)
        self.sharded = distributed.is_sharded(acc)  # FSDP / DeepSpeed: saves and checkpoints are collective
        self.synced_gpus = distributed.synced_generation(acc)
        set_seed(args.seed)  # same initial weights on every rank (DDP also broadcasts them)
        if not Path(args.sft_model_path).exists():
            raise UserError(
                f"sft_model_path {args.sft_model_path} does not exist. Run the SFT stage first (make sft) or fix "
                "the path."
            )
        self.tokenizer = load_tokenizer(args.sft_model_path, trust_remote_code=args.trust_remote_code)
        self.prompts = load_prompts(args.prompts_path, args.prompt_field)
        held_out = load_prompts(args.eval_prompts_path, args.prompt_field)
        self.eval_prompts = held_out[: args.num_samples]
        self.gold_prompts = held_out[: args.eval_num_prompts]
        # Sample tables and gold evaluations answer the held-out prompts: without them, neither runs.
        gold = args.eval_every and held_out
        self.gold_fn = load_callable(args.eval_reward_fn, "eval_reward_fn") if gold else None

        # Batch sizes, exactly as in old TRL.
        self.local_batch_size = (
            args.per_device_train_batch_size * args.gradient_accumulation_steps * args.num_mini_batches
        )
        self.batch_size = self.local_batch_size * acc.num_processes
        self.local_mini_batch_size = self.local_batch_size // args.num_mini_batches
        if args.max_steps > 0:  # as in the Trainer: max_steps wins over the episode budget
            self.num_steps = args.max_steps
        else:
            total = args.total_episodes or int(args.num_train_epochs * len(self.prompts))
            self.num_steps = max(1, math.ceil(total / self.batch_size))

        self.model, self.ref_model = load_policy(args, model_args)
        self.model.packing = args.packing
        self.packing_checked = not args.packing
        # Under sharded engines a forward's gathered weights are released by its backward: not held across phases.
        self.reuse_rollout_forward = args.reuse_rollout_forward and not self.sharded
        self.scorer = RewardScorer(
            args.reward_model_path, args.reward_fn, model_args, acc.device,
            args.local_rollout_forward_batch_size, args.trust_remote_code,
        )  # fmt: skip
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = distributed.build_optimizer(params, args, acc)
        self.scheduler = get_scheduler(
            args.lr_scheduler_type,
            self.optimizer,
            num_warmup_steps=args.get_warmup_steps(self.num_steps),
            num_training_steps=self.num_steps,
            scheduler_specific_kwargs=args.lr_scheduler_kwargs or None,
        )
        distributed.configure_engine(acc, args)
        self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        distributed.register_generate(self.model)
        if self.ref_model is not None:
            self.ref_model = distributed.place_reference(self.ref_model, acc)
        if self.scorer.model is not None:
            self.scorer.model = distributed.place_reward_model(self.scorer.model, acc)
        self.kl_ctl = (
            core.AdaptiveKLController(args.kl_coef, args.target_kl, args.kl_horizon)
            if args.adaptive_kl
            else core.FixedKLController(args.kl_coef)
        )
        self.gen_config = generation_config(args.response_length, args.temperature, self.tokenizer)
        if acc.is_main_process:
            ignored = set_aside(acc.unwrap_model(self.model), self.gen_config)
            print(sampling_summary("PPO", self.gen_config, ignored), flush=True)
        self.step, self.episode = 0, 0
        self.collapse_watch = CollapseWatch()
        self.timer = PhaseTimer(acc.device, args.log_timing)
        if acc.is_main_process:
            outputs.start_run(self.identity, self.output_dir, self.resume)
        acc.wait_for_everyone()
        self._log_sizes()

    def _log_sizes(self) -> None:
        if self.accelerator.is_main_process:
            n_train = sum(
                getattr(p, "ds_numel", p.numel()) for p in self.model.parameters() if p.requires_grad
            )
            n_proc = self.accelerator.num_processes
            print(
                f"PPO: {self.num_steps} steps x {self.batch_size} episodes ({n_proc} process{'es' if n_proc > 1 else ''}, "
                f"local batch {self.local_batch_size}), {n_train:,} trainable parameters, value head: {self.args.value_head}"
            )
            print(f"Optimizer: {distributed.describe_optimizer(self.optimizer)}")

    # --- data ---------------------------------------------------------------------------------------------
    def batch_prompts(self, step: int) -> list[str]:
        """This rank's prompts for `step`: a seeded permutation per pass over the data, so resume needs no state."""
        n = len(self.prompts)
        start = step * self.batch_size
        indices = []
        while len(indices) < self.batch_size:
            epoch, offset = divmod(start + len(indices), n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.args.seed + epoch)).tolist()
            indices.extend(perm[offset : offset + self.batch_size - len(indices)])
        rank = self.accelerator.process_index
        return [
            self.prompts[i]
            for i in indices[rank * self.local_batch_size : (rank + 1) * self.local_batch_size]
        ]

    # --- forward helpers ------------------------------------------------------------------------------------
    def _logprobs(self, logits: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        return response_logprobs(logits, responses, self.args.temperature)

    @torch.no_grad()
    def _ref_logprobs(self, input_ids, attention_mask, responses) -> torch.Tensor:
        R = responses.shape[1]
        if self.ref_model is not None:  # full fine-tuning: the frozen copy of the SFT model
            # Packed as the policy is (off if the first batch's check failed).
            packed = self.accelerator.unwrap_model(self.model).packing
            logits = response_logits(self.ref_model, input_ids, attention_mask, R, packed=packed).logits
        else:  # LoRA: the same base with the reference adapter (or no adapter)
            model = self.accelerator.unwrap_model(self.model)
            with model.reference():
                logits, _ = model(input_ids, attention_mask, R, with_values=False)
        return self._logprobs(logits, responses)

    @staticmethod
    def _policy_logits(model, input_ids, attention_mask, response_length: int, packed: bool) -> torch.Tensor:
        previous, model.packing = model.packing, packed
        try:
            return model(input_ids, attention_mask, response_length, with_values=False)[0]
        finally:
            model.packing = previous

    # --- one PPO step -------------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        args, acc, tok, timer = self.args, self.accelerator, self.tokenizer, self.timer
        with timer.phase("generate"):
            queries = tokenize_prompts(tok, prompts, args.max_prompt_length, acc.device)
            with unwrap_model_for_generation(self.model, acc) as unwrapped:
                responses = generate(
                    unwrapped,
                    queries,
                    self.gen_config,
                    args.local_rollout_forward_batch_size,
                    self.synced_gpus,
                )
            mask = first_eos_mask(responses, tok.eos_token_id)
            input_ids = torch.cat([queries["input_ids"], responses], 1)
            attention_mask = torch.cat([queries["attention_mask"], mask.long()], 1)
        R, chunk = responses.shape[1], args.local_rollout_forward_batch_size
        logprobs, ref_logprobs, values = [], [], []
        model = acc.unwrap_model(self.model)
        if not self.packing_checked:  # once, before anything is computed packed
            self.packing_checked = True
            first = slice(0, chunk)

            def first_logits(packed: bool) -> torch.Tensor:
                return self._policy_logits(model, input_ids[first], attention_mask[first], R, packed)

            if not check_packed_responses(first_logits, mask[first]):
                model.packing = False
                if acc.is_main_process:
                    print("packing: this model's attention does not keep packed texts apart (its logits change with "
                          "the text before them); PPO runs padded. Set packing: false to skip this check.",
                          flush=True)  # fmt: skip
        # The first PPO epoch's order, drawn where update() would draw it (nothing in between uses the RNG), so the
        # first micro-batch's forward can run now, with grad, and serve both as the rollout's and as the update's.
        order = torch.randperm(self.local_batch_size, device=acc.device)
        reuse_rows = order[: args.per_device_train_batch_size] if self.reuse_rollout_forward else order[:0]
        rest = torch.ones(len(prompts), dtype=torch.bool, device=acc.device)
        rest[reuse_rows] = False
        groups = [g for g in (reuse_rows, *rest.nonzero().squeeze(1).split(chunk)) if len(g)]
        reused = None
        for rows in groups:
            with timer.phase("forward"):
                if rows is reuse_rows:
                    with torch.enable_grad():
                        self.model.train()  # as in update(): the same forward, not just the same weights
                        logits, value = self.model(input_ids[rows], attention_mask[rows], R)
                        self.model.eval()
                    reused = dict(logits=logits, values=value)
                    logits, value = logits.detach(), value.detach()
                else:
                    logits, value = model(input_ids[rows], attention_mask[rows], R)
                logprobs.append(self._logprobs(logits, responses[rows]))
                values.append(value.float())
            with timer.phase("reference"):
                ref_logprobs.append(
                    self._ref_logprobs(input_ids[rows], attention_mask[rows], responses[rows])
                )
        back = torch.cat(groups).argsort()  # the groups' rows back in batch order
        logprobs, ref_logprobs, values = (torch.cat(x)[back] for x in (logprobs, ref_logprobs, values))

        with timer.phase("reward"):
            ended = (responses == tok.eos_token_id).any(1)
            texts = tok.batch_decode(responses, skip_special_tokens=True)
            scores = self.scorer(prompts, texts, ended.tolist())
            self._check_finite("reward", scores)
            if args.missing_eos_penalty is not None:
                scores = torch.where(ended, scores, scores - args.missing_eos_penalty)

        with timer.phase("other"):
            kl = core.per_token_kl(logprobs, ref_logprobs, args.kl_estimator) * mask
            rewards, non_score = core.compute_rewards(scores, kl, mask, self.kl_ctl.value)
            if args.whiten_rewards:
                rewards = core.masked_whiten(rewards, mask, shift_mean=False) * mask
            advantages, returns = core.compute_gae(rewards, values, mask, args.gamma, args.lam)
            advantages = core.masked_whiten(advantages, mask) * mask
        return dict(
            input_ids=input_ids, attention_mask=attention_mask, responses=responses, mask=mask, logprobs=logprobs,
            values=values * mask, advantages=advantages, returns=returns, scores=scores, kl=kl, non_score=non_score,
            ended=ended, texts=texts, first_order=order, reused_forward=reused,
        )  # fmt: skip

    def update(self, batch: dict) -> dict[str, torch.Tensor]:
        """num_ppo_epochs passes of mini-batch updates over the rollout batch; returns per-micro-batch stats."""
        args, acc = self.args, self.accelerator
        R = batch["responses"].shape[1]
        order, reused = batch.pop("first_order"), batch.pop("reused_forward")  # drawn and run by rollout()
        stats: dict[str, list[torch.Tensor]] = {}
        self.model.train()
        for epoch in range(args.num_ppo_epochs):
            if epoch > 0:
                order = torch.randperm(self.local_batch_size, device=acc.device)
            for start in range(0, self.local_batch_size, self.local_mini_batch_size):
                mini = order[start : start + self.local_mini_batch_size]
                for micro_start in range(0, self.local_mini_batch_size, args.per_device_train_batch_size):
                    idx = mini[micro_start : micro_start + args.per_device_train_batch_size]
                    with acc.accumulate(self.model):
                        mb = {k: v[idx] for k, v in batch.items() if isinstance(v, torch.Tensor)}
                        if reused is not None:  # the first micro-batch: its forward ran in the rollout
                            logits, vpred = reused["logits"], reused["values"]
                            reused = None
                        else:
                            logits, vpred = self.model(mb["input_ids"], mb["attention_mask"], R)
                        new_logprobs = self._logprobs(logits, mb["responses"])
                        pg_loss, pg_stats = core.policy_loss(
                            new_logprobs, mb["logprobs"], mb["advantages"], mb["mask"], args.cliprange
                        )
                        vf_loss, vf_stats = core.value_loss(
                            vpred.float(), mb["values"], mb["returns"], mb["mask"], args.cliprange_value
                        )
                        loss = pg_loss + args.vf_coef * vf_loss
                        self._check_finite("loss", loss.detach())
                        acc.backward(loss)
                        if acc.sync_gradients and args.max_grad_norm:
                            acc.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                        self.optimizer.step()
                        self.optimizer.zero_grad()
                    with torch.no_grad():
                        # TRL's policy/entropy_avg: the entropy of the distribution sampled, softmax(logits / T).
                        sampled = sampled_logits(logits.detach(), args.temperature)
                        entropy = core.masked_mean(entropy_from_logits(sampled), mb["mask"])
                        ratio = torch.exp(new_logprobs.detach() - mb["logprobs"])
                    for key, value in (
                        ("policy/approxkl_avg", pg_stats["approxkl"]), ("policy/clipfrac_avg", pg_stats["clipfrac"]),
                        ("loss/policy_avg", pg_loss), ("loss/value_avg", vf_loss),
                        ("val/clipfrac_avg", vf_stats["clipfrac"]), ("policy/entropy_avg", entropy),
                        ("val/ratio", core.masked_mean(ratio, mb["mask"])),
                    ):  # fmt: skip
                        stats.setdefault(key, []).append(value.detach().float())
                    del logits, vpred, loss
        self.model.eval()
        return stats

    def _check_finite(self, what: str, value: torch.Tensor) -> None:
        # Collective, so every rank stops together instead of one rank hanging in the next all-reduce.
        bad = torch.tensor([0.0 if torch.isfinite(value).all() else 1.0], device=self.accelerator.device)
        if self.accelerator.reduce(bad, "sum").item() > 0:
            raise NonFiniteError(what, self.step + 1, latest_checkpoint(self.output_dir))

    def _metrics(self, batch: dict, stats: dict, start_time: float, start_episode: int) -> dict[str, float]:
        acc = self.accelerator

        def mean(x: torch.Tensor) -> float:  # global mean over every process
            return acc.gather(x.detach().float().reshape(-1)).mean().item()

        kl_sum = batch["kl"].sum(1)
        non_score = batch["non_score"].sum(1)
        m = {
            "objective/kl": mean(kl_sum),
            "objective/entropy": mean((-batch["logprobs"] * batch["mask"]).sum(1)),
            "objective/non_score_reward": mean(non_score),
            "objective/rlhf_reward": mean(non_score + batch["scores"]),
            "objective/scores": mean(batch["scores"]),
            "objective/kl_coef": self.kl_ctl.value,
        }
        m.update({k: mean(torch.stack(v)) for k, v in stats.items()})
        ratios = acc.gather(torch.stack(stats["val/ratio"]))
        m["val/ratio_var"] = ratios.var().item() if ratios.numel() > 1 else 0.0
        m["val/num_eos_tokens"] = acc.gather(batch["ended"].sum().reshape(1)).sum().item()
        m["response_length"] = mean(batch["mask"].sum(1).float())
        m["lr"] = self.scheduler.get_last_lr()[0]
        m["episode"] = self.episode
        m["eps"] = (self.episode - start_episode) / (time.time() - start_time)
        m["step"] = self.step
        return m

    def _timing_metrics(self, lap: dict, batch: dict) -> dict[str, float]:
        """time/<phase> and time/step in seconds, tokens per second of generation and of update, and on an
        accelerator memory/<phase>_peak_gib."""
        acc = self.accelerator
        # The slowest rank's seconds per phase (and its peak memory): a step lasts as long as its slowest rank, and a
        # straggler shows in the phase where it is slow. Each phase's maximum is taken on its own, so under several
        # processes the phases may add up to a little more than time/step.
        seconds = [lap["seconds"][name] for name in PHASES] + [lap["step"]]
        seconds = acc.reduce(torch.tensor(seconds, device=acc.device), "max").tolist()
        m = {f"time/{name}": value for name, value in zip((*PHASES, "step"), seconds)}
        # Response tokens up to and including EOS (padding after it is not generated work), summed over processes.
        generated = acc.reduce(batch["mask"].sum().float().reshape(1), "sum").item()
        m["time/generated_tokens_per_s"] = generated / max(m["time/generate"], 1e-9)
        m["time/trained_tokens_per_s"] = generated * self.args.num_ppo_epochs / max(m["time/update"], 1e-9)
        if lap["peak_bytes"] is not None:
            names = sorted(lap["peak_bytes"])
            peaks = torch.tensor([float(lap["peak_bytes"][name]) for name in names], device=acc.device)
            peaks = acc.reduce(peaks, "max").tolist()  # the same phases ran on every rank
            m.update({f"memory/{name}_peak_gib": peak / 2**30 for name, peak in zip(names, peaks)})
        return m

    # --- the loop -------------------------------------------------------------------------------------------
    def train(self) -> None:
        args, acc = self.args, self.accelerator
        resume = self.resume
        state = {}
        if resume is not None:
            state = load_checkpoint(resume, acc, self.model, self.optimizer, self.scheduler, self.sharded)
            self.step, self.episode, self.kl_ctl.value = state["step"], state["episode"], state["kl_coef"]
            if acc.is_main_process:
                truncate_logs(self.work_dir, self.step)  # lines logged after the checkpoint are redone
                print(f"Resumed from {resume} at step {self.step} (episode {self.episode}).")
        else:
            set_seed(args.seed, device_specific=True)  # different samples on each rank
        # The tracker run of the checkpoint continues (its identity is stored in it), from the step after it.
        self.tracking = tracking.start(self.trackers, "ppo", self.output_dir.parent, args, self.tracked_config,
                                       state.get("tracking"), self.step + 1, acc.is_main_process)  # fmt: skip
        self.model.eval()  # dropout is off anyway; eval() also keeps generation deterministic per seed
        start_time, start_episode = time.time(), self.episode
        save_every = (
            math.ceil(args.save_steps * self.num_steps) if 0 < args.save_steps < 1 else int(args.save_steps)
        )
        timer = self.timer
        timer.lap()  # the first step's clock starts here
        while self.step < self.num_steps:
            with timer.phase("other"):
                prompts = self.batch_prompts(self.step)
            batch = self.rollout(prompts)
            with timer.phase("update"):
                stats = self.update(batch)
            with timer.phase("other"):
                self.step += 1
                self.episode += self.batch_size
                metrics = self._metrics(batch, stats, start_time, start_episode)
                if self.gold_fn and (
                    self.step == 1 or self.step % args.eval_every == 0 or self.step == self.num_steps
                ):
                    metrics.update(self.gold_eval())
                self.scheduler.step()
                self.kl_ctl.update(metrics["objective/kl"], self.batch_size)
            # The step's clock stops before its metrics are written: logging, sample tables and checkpoints after
            # this point count in the next step's `other`.
            lap = timer.lap()
            with timer.phase("other"):
                if lap is not None:
                    metrics.update(self._timing_metrics(lap, batch))
                self._log(metrics)
                if args.max_kl is not None and metrics["objective/kl"] > args.max_kl:  # same on every rank
                    if acc.is_main_process:
                        print(f"Stopping at step {self.step} of {self.num_steps}: KL from the SFT policy "
                              f"{metrics['objective/kl']:.2f} > max_kl {args.max_kl:g}; saving this step's policy.",
                              flush=True)  # fmt: skip
                    break
                if args.sample_every and (self.step % args.sample_every == 0 or self.step == self.num_steps):
                    self.sample_table()
                if save_every and self.step % save_every == 0:
                    save_checkpoint(
                        acc, self.output_dir, self.step,
                        {"step": self.step, "episode": self.episode, "kl_coef": self.kl_ctl.value,
                         "tracking": self.tracking.identity},
                        self.model, self.optimizer, self.scheduler, args.save_total_limit, self.sharded,
                    )  # fmt: skip
        self.save_final()
        self.tracking.finish()
        if not args.keep_checkpoints and acc.is_main_process:
            outputs.remove_checkpoints(self.output_dir)
        self.model = acc.unwrap_model(self.model)  # the DDP wrapper goes before the process group
        end_distributed(acc)

    def _log(self, metrics: dict) -> None:
        acc = self.accelerator
        self.tracking.log(metrics, self.step)  # every metric (episode, lr, time/...) at the PPO step
        if not acc.is_main_process:
            return
        with open(self.work_dir / LOG_FILES[0], "a") as f:
            f.write(json.dumps(metrics) + "\n")
        for warning in self.collapse_watch.update(metrics):
            print(warning, flush=True)
        if self.args.logging_steps and (
            self.step % max(1, int(self.args.logging_steps)) == 0 or self.step == 1
        ):
            print(
                f"step {self.step}/{self.num_steps} episode {self.episode} score {metrics['objective/scores']:.3f} "
                f"kl {metrics['objective/kl']:.3f} rlhf_reward {metrics['objective/rlhf_reward']:.3f} "
                f"entropy {metrics['policy/entropy_avg']:.3f} clipfrac {metrics['policy/clipfrac_avg']:.3f} "
                f"vloss {metrics['loss/value_avg']:.4f} len {metrics['response_length']:.1f} eps {metrics['eps']:.1f}"
                + timing_summary(metrics),
                flush=True,
            )

    def _sample_held_out(self, queries: dict) -> torch.Tensor:
        """Sample on a forked RNG with a fixed seed: every table (and gold evaluation) draws the same way, so they
        differ only by what the policy learnt, and training's own random stream is the same with them or without.
        All ranks call it: generation may be collective under ZeRO-3."""
        acc = self.accelerator
        on_cpu = acc.device.type == "cpu"
        with torch.random.fork_rng(
            devices=[] if on_cpu else [acc.device], device_type=None if on_cpu else acc.device.type
        ):
            torch.manual_seed(self.args.seed)
            with unwrap_model_for_generation(self.model, acc) as unwrapped:
                return generate(unwrapped, queries, self.gen_config, self.args.local_rollout_forward_batch_size,
                                self.synced_gpus)  # fmt: skip

    @torch.no_grad()
    def gold_eval(self) -> dict[str, float]:
        """One point of the over-optimisation curve (Gao et al., 2022): held-out answers scored by the reward model
        and by the gold labeler (`eval_reward_fn`), with their KL from the SFT policy (k1, summed per answer).
        Every rank evaluates the same prompts, so there is nothing to gather."""
        args, tok = self.args, self.tokenizer
        queries = tokenize_prompts(tok, self.gold_prompts, args.max_prompt_length, self.accelerator.device)
        responses = self._sample_held_out(queries)
        mask = first_eos_mask(responses, tok.eos_token_id)
        input_ids = torch.cat([queries["input_ids"], responses], 1)
        attention_mask = torch.cat([queries["attention_mask"], mask.long()], 1)
        model, R, chunk = (
            self.accelerator.unwrap_model(self.model),
            responses.shape[1],
            args.local_rollout_forward_batch_size,
        )
        kl = []
        for i in range(0, len(self.gold_prompts), chunk):
            sl = slice(i, i + chunk)
            logits, _ = model(input_ids[sl], attention_mask[sl], R, with_values=False)
            log_ratio = self._logprobs(logits, responses[sl]) - self._ref_logprobs(
                input_ids[sl], attention_mask[sl], responses[sl]
            )
            kl.append((log_ratio * mask[sl]).sum(1))
        texts = tok.batch_decode(responses, skip_special_tokens=True)
        ended = (responses == tok.eos_token_id).any(1).tolist()
        scores = self.scorer(self.gold_prompts, texts, ended)
        gold = [float(x) for x in self.gold_fn(self.gold_prompts, texts)]
        return {"eval/reward_model_score": scores.mean().item(), "eval/labeler_score": sum(gold) / len(gold),
                "eval/kl": torch.cat(kl).mean().item()}  # fmt: skip

    @torch.no_grad()
    def sample_table(self) -> None:
        """Sample the held-out prompts (all ranks: generation may be collective under ZeRO-3), print on rank 0."""
        if not self.eval_prompts:
            return
        tok, acc = self.tokenizer, self.accelerator
        queries = tokenize_prompts(tok, self.eval_prompts, self.args.max_prompt_length, acc.device)
        responses = self._sample_held_out(queries)
        ended = (responses == tok.eos_token_id).any(1)
        texts = tok.batch_decode(responses, skip_special_tokens=True)
        scores = self.scorer(self.eval_prompts, texts, ended.tolist()).tolist()
        if not acc.is_main_process:
            return
        rows = [
            {"step": self.step, "prompt": p, "response": r, "score": s}
            for p, r, s in zip(self.eval_prompts, texts, scores)
        ]
        with open(self.work_dir / LOG_FILES[1], "a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        self.tracking.log_table("samples", list(rows[0]), [list(row.values()) for row in rows], self.step)
        print(f"--- samples at step {self.step} ---")
        print(f"{'score':>7} | {'prompt':<40} | response")
        for row in rows:
            prompt = " ".join(row["prompt"].split())[-40:]
            print(f"{row['score']:7.3f} | {prompt:<40} | {' '.join(row['response'].split())[:100]}")

    def save_final(self) -> None:
        """Policy adapter + tokenizer at the root, value head (and value adapter), merged/ plain policy, the run's
        logs and record: written to `<output_dir>.tmp` and renamed, so output_dir is the old or the new policy."""
        acc = self.accelerator
        tmp = outputs.staging_dir(self.output_dir, acc.is_main_process)
        acc.wait_for_everyone()
        model = acc.unwrap_model(self.model)
        # Sharded weights (FSDP, ZeRO-3) are gathered into one full state dict: a collective, every rank joins.
        full_state = acc.get_state_dict(self.model) if self.sharded else model.state_dict()
        local_loading_from_now_on()  # the merged model below is loaded on the main process alone
        if acc.is_main_process:
            retie_shared(full_state, model)
            out = tmp
            lm = model.lm
            lm_state = submodule_state(full_state, "lm")
            if hasattr(lm, "peft_config"):
                lm.save_pretrained(out, selected_adapters=[POLICY], state_dict=lm_state)
                if model.value_adapter:  # peft writes it to out/value/
                    lm.save_pretrained(out, selected_adapters=[VALUE], state_dict=lm_state)
            else:
                lm.save_pretrained(out, state_dict=lm_state)
            value_head = submodule_state(full_state, "value_head")
            save_file({k: v.detach().cpu().contiguous() for k, v in value_head.items()},
                      str(out / "value_head.safetensors"))  # fmt: skip
            self.tokenizer.save_pretrained(out)
            if self.args.save_merged:
                self._save_merged(lm, lm_state, out)
            for name in LOG_FILES:
                if (self.work_dir / name).is_file():
                    shutil.copy2(self.work_dir / name, out / name)
            if self.tracking.identity:  # evaluation adds its figures to this tracker run, at its last step
                tracking.write_identity(
                    out / tracking.IDENTITY_FILE, {**self.tracking.identity, "step": self.step}
                )
            outputs.write_run(out, self.identity)
            outputs.publish(out, self.output_dir)
            print(f"Saved the PPO policy to {self.output_dir}")
        acc.wait_for_everyone()

    def _save_merged(self, lm, lm_state: dict, out: Path) -> None:
        """`out/merged`: the plain policy, the adapter already saved in `out` merged into its base."""
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        merged_dir = out / "merged"
        if not hasattr(lm, "peft_config"):
            lm.save_pretrained(merged_dir, state_dict=lm_state)
        else:
            # Merge into a fresh full-precision copy of the base: merging into a 4-bit base would be lossy, and
            # the training model still carries the reference and value adapters.
            trained = lm.get_base_model()
            dtype = torch.bfloat16 if getattr(trained, "is_loaded_in_4bit", False) else trained.dtype
            base = load_base_of(out, AutoModelForCausalLM, None, self.args.trust_remote_code,
                                dtype=dtype)  # fmt: skip
            merged = PeftModel.from_pretrained(base, str(out)).merge_and_unload()
            merged.save_pretrained(merged_dir)
        self.tokenizer.save_pretrained(merged_dir)


LOG_FILES = ("metrics.jsonl", "samples.jsonl")  # in the work folder while running, published with the policy
LOG_LINE_PHASES = (("generate", "gen"), ("forward", "fwd"), ("reference", "ref"), ("reward", "rew"),
                   ("update", "upd"), ("other", "other"))  # fmt: skip


def timing_summary(metrics: dict) -> str:
    """The log line's timing part, ' | time gen 1.2s fwd 0.3s ...'; empty without time/ metrics."""
    if "time/step" not in metrics:
        return ""
    parts = " ".join(f"{short} {metrics[f'time/{name}']:.1f}s" for name, short in LOG_LINE_PHASES)
    return f" | time {parts} step {metrics['time/step']:.1f}s"


def truncate_logs(work_dir: Path, step: int) -> None:
    """A resumed run continues its logs from its checkpoint's step: lines logged after it are dropped (redone)."""
    for name in LOG_FILES:
        path = work_dir / name
        if path.is_file():
            kept = [line for line in path.read_text().splitlines(keepends=True)
                    if line.strip() and json.loads(line).get("step", 0) <= step]  # fmt: skip
            outputs.write_file_atomically(path, "".join(kept))


def retie_shared(state: dict, model: torch.nn.Module) -> None:
    """Names that share one parameter (tied embeddings) share one tensor again, so save_pretrained writes it once.

    A gathered state dict (FSDP, ZeRO-3) holds a separate copy under each name; `model.state_dict()` does not.
    """
    first_name: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if name in state:
            state[name] = state[first_name.setdefault(id(param), name)]


def submodule_state(state: dict, name: str) -> dict:
    """The entries of a model's state dict under submodule `name`, keyed as the submodule's own state dict."""
    prefix = f"{name}."
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
