"""PPOTrainer: rollout -> score -> KL-penalised per-token rewards -> GAE -> clipped PPO updates, on Accelerate.

The loop follows the old TRL PPOTrainer and "The N+ implementation details of RLHF with PPO": logprobs are
recomputed with a forward pass (not taken from generate), logits are divided by the sampling temperature, the
score lands on the last response token, advantages are whitened, dropout is off. Metric names are TRL's.

Around the loop: the maths in `core`, the models in `models`, the held-out samples and gold evaluations in
`heldout`, checkpoints in `checkpoint`, the finished run's folder in `final_save`, phase timers in `timing`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import get_scheduler
from trl.models.utils import unwrap_model_for_generation
from trl.trainer.utils import entropy_from_logits

from pipeline.analysis.health import CollapseWatch
from pipeline.common import outputs, tracking
from pipeline.common.config import NonFiniteError, Stopped, UserError
from pipeline.common.data import load_prompts
from pipeline.common.models import load_scoring_function, load_tokenizer
from pipeline.common.preemption import StopRequest
from pipeline.common.training import end_distributed, report_engine
from pipeline.lm.logprobs import response_logprobs, sampled_logits
from pipeline.lm.sampling import (
    first_eos_mask,
    generate,
    generation_config,
    sampling_summary,
    set_aside,
    tokenize_prompts,
)
from pipeline.lm.scoring import RewardScorer
from pipeline.ppo import checkpoint, core, distributed
from pipeline.ppo.final_save import save_final
from pipeline.ppo.heldout import HeldOut
from pipeline.ppo.models import load_policy, reference_logprobs
from pipeline.ppo.rollout import Rollout
from pipeline.ppo.timing import PhaseTimer, log_line_timing, timing_metrics


class PPOTrainer:
    def __init__(self, args, model_args):
        self.args = args
        # What this run is, checked against the output folder and any checkpoint before anything is written.
        self.identity = outputs.run_identity("ppo", (args, model_args))
        self.output_dir = Path(args.output_dir)
        # The work folder holds the checkpoints and the logs of the run in progress.
        self.work_dir = outputs.checkpoints_dir(self.output_dir)
        self.resume = outputs.resolve_resume(
            args.resume_from_checkpoint, self.output_dir, checkpoint.is_checkpoint
        )
        outputs.check_run(self.identity, self.output_dir, self.resume, args.overwrite_output_dir)
        self.trackers = tracking.trackers(args.report_to)  # a missing tracker package fails before any load
        self.tracked_config = tracking.public_config(args, model_args)
        # The process group as transformers' Trainer starts it for the SFT and reward stages (reading args.device
        # does it: gloo when use_cpu), then the engine the launch config asks for; DeepSpeed runs on CPU too.
        _ = args.device
        self.accelerator = acc = Accelerator(
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            deepspeed_plugin=args.deepspeed_plugin,
            mixed_precision="bf16" if args.bf16 else ("fp16" if args.fp16 else "no"),
        )
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
        # Sample tables and gold evaluations answer the held-out prompts: without them, neither runs.
        gold_fn = (
            load_scoring_function(args.eval_reward_fn, "eval_reward_fn")
            if args.eval_every and held_out
            else None
        )
        self.batch_size = args.batch_size(acc.num_processes)
        self.num_steps = args.num_steps(acc.num_processes, len(self.prompts))

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
        self.held_out = HeldOut(held_out, gold_fn, args, acc, self.tokenizer, self.scorer, self.gen_config,
                                self.synced_gpus, self.ref_model, self.work_dir / checkpoint.SAMPLES_FILE)  # fmt: skip
        self.step, self.episode = 0, 0
        # normalize_scores: (mean, std) of the reward on the first rollout's (SFT) answers, once it is known
        self.score_norm: tuple[float, float] | None = None
        self.collapse_watch = CollapseWatch()
        self.timer = PhaseTimer(acc.device, args.log_timing)
        self.stop = StopRequest()  # its signal handlers are installed while train() runs
        self.step_in_progress = 0  # the step being computed, once the loop runs
        if acc.is_main_process:
            outputs.start_run(self.identity, self.output_dir, self.resume)
        acc.wait_for_everyone()
        if acc.is_main_process:
            n_train = sum(
                getattr(p, "ds_numel", p.numel()) for p in self.model.parameters() if p.requires_grad
            )
            n_proc = acc.num_processes
            print(
                f"PPO: {self.num_steps} steps x {self.batch_size} episodes ({n_proc} process{'es' if n_proc > 1 else ''}, "
                f"local batch {args.local_batch_size}), {n_train:,} trainable parameters, value head: {args.value_head}"
            )
            print(f"Optimizer: {distributed.describe_optimizer(self.optimizer)}")

    def batch_prompts(self, step: int) -> list[str]:
        """This rank's prompts for `step`: a seeded permutation per pass over the data, so resume needs no state."""
        n, local = len(self.prompts), self.args.local_batch_size
        start = step * self.batch_size
        indices = []
        while len(indices) < self.batch_size:
            epoch, offset = divmod(start + len(indices), n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.args.seed + epoch)).tolist()
            indices.extend(perm[offset : offset + self.batch_size - len(indices)])
        rank = self.accelerator.process_index
        return [self.prompts[i] for i in indices[rank * local : (rank + 1) * local]]

    # --- one PPO step: rollout, then update -----------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, prompts: list[str]) -> Rollout:
        """Sample a response to each prompt, score it, and turn the scores into per-token rewards and advantages."""
        args, acc, tok, timer = self.args, self.accelerator, self.tokenizer, self.timer
        with timer.phase("generate"):
            queries = tokenize_prompts(tok, prompts, args.max_prompt_length, acc.device)
            # Under the autocast the training forward runs in (bf16: true): sampled from the policy it trains.
            with unwrap_model_for_generation(self.model, acc) as unwrapped, acc.autocast():
                responses = generate(unwrapped, queries, self.gen_config, args.local_rollout_forward_batch_size,
                                     self.synced_gpus)  # fmt: skip
            mask = first_eos_mask(responses, tok.eos_token_id)
            input_ids = torch.cat([queries["input_ids"], responses], 1)
            attention_mask = torch.cat([queries["attention_mask"], mask.long()], 1)
        R, chunk = responses.shape[1], args.local_rollout_forward_batch_size
        model = acc.unwrap_model(self.model)
        if not self.packing_checked:  # once, before anything is computed packed
            self.packing_checked = True
            packs_exactly = model.check_packing(input_ids[:chunk], attention_mask[:chunk], mask[:chunk])
            if not packs_exactly and acc.is_main_process:
                print("packing: this model's attention does not keep packed texts apart (its logits change with "
                      "the text before them); PPO runs padded. Set packing: false to skip this check.",
                      flush=True)  # fmt: skip
        # The first PPO epoch's order, drawn where update() would draw it (nothing in between uses the RNG), so the
        # first micro-batch's forward can run now, with grad, and serve both as the rollout's and as the update's.
        order = torch.randperm(args.local_batch_size, device=acc.device)
        reuse_rows = order[: args.per_device_train_batch_size] if self.reuse_rollout_forward else order[:0]
        rest = torch.ones(len(prompts), dtype=torch.bool, device=acc.device)
        rest[reuse_rows] = False
        groups = [g for g in (reuse_rows, *rest.nonzero().squeeze(1).split(chunk)) if len(g)]
        logprobs, ref_logprobs, values, reused = [], [], [], None
        for rows in groups:
            with timer.phase("forward"):
                if rows is reuse_rows:
                    with torch.enable_grad():
                        self.model.train()  # as in update(): the same forward, not just the same weights
                        logits, value = self.model(input_ids[rows], attention_mask[rows], R)
                        self.model.eval()
                    reused = (logits, value)
                    logits, value = logits.detach(), value.detach()
                else:
                    logits, value = model(input_ids[rows], attention_mask[rows], R)
                logprobs.append(response_logprobs(logits, responses[rows], args.temperature))
                values.append(value.float())
            with timer.phase("reference"), acc.autocast():  # (a full fine-tuning reference is not prepared)
                ref_logprobs.append(reference_logprobs(model, self.ref_model, input_ids[rows], attention_mask[rows],
                                                       responses[rows], args.temperature))  # fmt: skip
        back = torch.cat(groups).argsort()  # the groups' rows back in batch order
        logprobs, ref_logprobs, values = (torch.cat(x)[back] for x in (logprobs, ref_logprobs, values))

        with timer.phase("reward"):
            ended = (responses == tok.eos_token_id).any(1)
            texts = tok.batch_decode(responses, skip_special_tokens=True)
            scores = self.scorer(prompts, texts, ended.tolist())
            self._check_finite("reward", scores)
            rewarded_scores = self._normalized(scores)  # the penalty below is in the rewards' units
            if args.missing_eos_penalty is not None:
                penalty = torch.where(ended, 0.0, args.missing_eos_penalty)
                scores, rewarded_scores = scores - penalty, rewarded_scores - penalty

        with timer.phase("other"):
            kl = core.per_token_kl(logprobs, ref_logprobs, args.kl_estimator) * mask
            rewards, non_score_rewards = core.compute_rewards(rewarded_scores, kl, mask, self.kl_ctl.value)
            if args.whiten_rewards:
                rewards = core.masked_whiten(rewards, mask, shift_mean=False) * mask
            advantages, returns = core.compute_gae(rewards, values, mask, args.gamma, args.lam)
            advantages = core.masked_whiten(advantages, mask) * mask
        return Rollout(
            input_ids=input_ids, attention_mask=attention_mask, responses=responses, mask=mask, logprobs=logprobs,
            ref_logprobs=ref_logprobs, values=values * mask, scores=scores,
            rewarded_scores=rewarded_scores, ended=ended, kl=kl,
            non_score_rewards=non_score_rewards, rewards=rewards, advantages=advantages, returns=returns,
            first_epoch_order=order, reused_forward=reused,
        )  # fmt: skip

    def _normalized(self, scores: torch.Tensor) -> torch.Tensor:
        """normalize_scores: standardised by the first rollout's statistics (the SFT policy's answers), over every
        process's scores, fixed from then on; otherwise the scores as they are."""
        if not self.args.normalize_scores:
            return scores
        if self.score_norm is None:
            self.score_norm = core.score_normalizer(self.accelerator.gather(scores.float()))
            if self.accelerator.is_main_process:
                print(
                    f"normalize_scores: the first rollout's answers score {self.score_norm[0]:.4g} +- "
                    f"{self.score_norm[1]:.4g}; the rewards carry (score - mean) / std from here on",
                    flush=True,
                )
        mean, std = self.score_norm
        return (scores - mean) / std

    def update(self, rollout: Rollout) -> dict[str, list[torch.Tensor]]:
        """num_ppo_epochs passes of mini-batch updates over the rollout; returns each micro-batch's stats."""
        args, acc = self.args, self.accelerator
        R, micro = rollout.responses.shape[1], args.per_device_train_batch_size
        # The first epoch's order was drawn by rollout(), which may have run its first micro-batch's forward: that
        # forward is taken out of the rollout, so its logits (b, R, V) are freed once used.
        order, reused = rollout.first_epoch_order, rollout.reused_forward
        rollout.reused_forward = None
        stats: dict[str, list[torch.Tensor]] = {}
        self.model.train()
        for epoch in range(args.num_ppo_epochs):
            if epoch > 0:
                order = torch.randperm(args.local_batch_size, device=acc.device)
            for start in range(0, args.local_batch_size, args.local_mini_batch_size):
                mini = order[start : start + args.local_mini_batch_size]
                for micro_start in range(0, args.local_mini_batch_size, micro):
                    idx = mini[micro_start : micro_start + micro]
                    mask = rollout.mask[idx]
                    with acc.accumulate(self.model):
                        if reused is not None:  # the first micro-batch: its forward ran in the rollout
                            logits, vpred = reused
                            reused = None
                        else:
                            logits, vpred = self.model(rollout.input_ids[idx], rollout.attention_mask[idx], R)
                        new_logprobs = response_logprobs(logits, rollout.responses[idx], args.temperature)
                        pg_loss, pg_stats = core.policy_loss(
                            new_logprobs, rollout.logprobs[idx], rollout.advantages[idx], mask, args.cliprange
                        )
                        vf_loss, vf_stats = core.value_loss(vpred.float(), rollout.values[idx], rollout.returns[idx],
                                                            mask, args.cliprange_value)  # fmt: skip
                        loss = pg_loss + args.vf_coef * vf_loss
                        self._check_finite("loss", loss.detach())
                        acc.backward(loss)
                        if acc.sync_gradients and args.max_grad_norm:
                            acc.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                        self.optimizer.step()
                        self.optimizer.zero_grad()
                    with torch.no_grad():
                        # TRL's policy/entropy_avg: the entropy of the distribution sampled, softmax(logits / T),
                        # in fp32 one row at a time (bf16 logits are upcast row by row, as for the log-probs).
                        entropy = torch.stack([entropy_from_logits(sampled_logits(row, args.temperature))
                                               for row in logits.detach()])  # fmt: skip
                        entropy = core.masked_mean(entropy, mask)
                    for key, value in (
                        ("policy/approxkl_avg", pg_stats["approxkl"]), ("policy/clipfrac_avg", pg_stats["clipfrac"]),
                        ("loss/policy_avg", pg_loss), ("loss/value_avg", vf_loss),
                        ("val/clipfrac_avg", vf_stats["clipfrac"]), ("policy/entropy_avg", entropy),
                        ("val/ratio", pg_stats["ratio"]),
                    ):  # fmt: skip
                        stats.setdefault(key, []).append(value.detach().float())
                    del logits, vpred, loss
        self.model.eval()
        return stats

    def _check_finite(self, what: str, value: torch.Tensor) -> None:
        # Collective, so every rank stops together instead of one rank hanging in the next all-reduce.
        bad = torch.tensor([0.0 if torch.isfinite(value).all() else 1.0], device=self.accelerator.device)
        if self.accelerator.reduce(bad, "sum").item() > 0:
            raise NonFiniteError(what, self.step + 1, checkpoint.latest_checkpoint(self.output_dir))

    # --- the loop -------------------------------------------------------------------------------------------
    def train(self) -> None:
        with self.stop.installed():  # SIGTERM/SIGINT/SIGUSR1: finish the step, checkpoint, stop (Stopped)
            try:
                self._train()
            except UserError as err:  # mid-run (the user's reward_fn failed at step N): say what can resume
                if isinstance(err, NonFiniteError) or not self.step_in_progress:  # (it gives its own advice)
                    raise
                latest = checkpoint.latest_checkpoint(self.output_dir)
                raise UserError(f"{err} {outputs.resume_advice(self.step_in_progress, latest)}") from err

    def _train(self) -> None:
        args, acc, timer = self.args, self.accelerator, self.timer
        state = {}
        if self.resume is not None:
            state = checkpoint.load_checkpoint(self.resume, acc, self.model, self.optimizer, self.scheduler,
                                               self.sharded)  # fmt: skip
            self.step, self.episode, self.kl_ctl.value = state["step"], state["episode"], state["kl_coef"]
            self.score_norm = tuple(state["score_norm"]) if state.get("score_norm") else None
            if acc.is_main_process:  # lines logged after the checkpoint are redone
                checkpoint.truncate_logs(self.work_dir, self.step)
                print(f"Resumed from {self.resume} at step {self.step} (episode {self.episode}).")
        else:
            set_seed(args.seed, device_specific=True)  # different samples on each rank
        # The tracker run of the checkpoint continues (its identity is stored in it), from the step after it.
        self.tracking = tracking.start(self.trackers, "ppo", self.output_dir.parent, args, self.tracked_config,
                                       state.get("tracking"), self.step + 1, acc.is_main_process)  # fmt: skip
        self.model.eval()  # dropout is off anyway; eval() also keeps generation deterministic per seed
        start_time, start_episode = time.time(), self.episode
        save_every = args.checkpoint_interval(self.num_steps)
        timer.lap()  # the first step's clock starts here
        while self.step < self.num_steps:
            self.step_in_progress = self.step + 1  # self.step counts it done before its gold eval and save
            with timer.phase("other"):
                prompts = self.batch_prompts(self.step)
            rollout = self.rollout(prompts)
            with timer.phase("update"):
                stats = self.update(rollout)
            with timer.phase("other"):
                self.step += 1
                self.episode += self.batch_size
                metrics = self._metrics(rollout, stats, start_time, start_episode)
                last = self.step == self.num_steps
                if self.held_out.gold_fn and (self.step == 1 or self.step % args.eval_every == 0 or last):
                    metrics.update(self.held_out.gold_eval(self.model))
                self.scheduler.step()
                self.kl_ctl.update(metrics["objective/kl"], self.batch_size)
            # The step's clock stops before its metrics are written: logging, sample tables and checkpoints after
            # this point count in the next step's `other`.
            lap = timer.lap()
            with timer.phase("other"):
                if lap is not None:
                    metrics.update(timing_metrics(lap, acc, rollout.mask, args.num_ppo_epochs))
                self._log(metrics)
                if args.max_kl is not None and metrics["objective/kl"] > args.max_kl:  # same on every rank
                    if acc.is_main_process:
                        print(f"Stopping at step {self.step} of {self.num_steps}: KL from the SFT policy "
                              f"{metrics['objective/kl']:.2f} > max_kl {args.max_kl:g}; saving this step's policy.",
                              flush=True)  # fmt: skip
                    break
                if args.sample_every and (self.step % args.sample_every == 0 or last):
                    self.held_out.log_samples(self.model, self.step, self.tracking)
                saved = bool(save_every and self.step % save_every == 0)
                if saved:
                    self._save_checkpoint()
                if self.stop.agreed(acc.device) and not last:  # a scheduler's signal: this step, then stop
                    if not saved:
                        self._save_checkpoint()
                    self.tracking.finish()
                    end_distributed(acc)
                    raise Stopped(
                        self.stop.signal_name, self.step, checkpoint.latest_checkpoint(self.output_dir)
                    )
        # Evaluation adds its figures to this tracker run, at its last step.
        tracker_identity = {**self.tracking.identity, "step": self.step} if self.tracking.identity else None
        save_final(acc, self.model, self.tokenizer, args, self.identity, tracker_identity, self.sharded)
        self.tracking.finish()
        if not args.keep_checkpoints and acc.is_main_process:
            outputs.remove_checkpoints(self.output_dir)
        self.model = acc.unwrap_model(self.model)  # the DDP wrapper goes before the process group
        end_distributed(acc)

    def _save_checkpoint(self) -> None:
        state = {"step": self.step, "episode": self.episode, "kl_coef": self.kl_ctl.value,
                 "score_norm": self.score_norm, "tracking": self.tracking.identity}  # fmt: skip
        checkpoint.save_checkpoint(self.accelerator, self.output_dir, self.step, state, self.model, self.optimizer,
                                   self.scheduler, self.args.save_total_limit, self.sharded)  # fmt: skip

    # --- logging --------------------------------------------------------------------------------------------
    def _metrics(self, rollout: Rollout, stats: dict, start_time: float, start_episode: int) -> dict:
        acc = self.accelerator

        def mean(x: torch.Tensor) -> float:  # global mean over every process
            return acc.gather(x.detach().float().reshape(-1)).mean().item()

        kl_sum = rollout.kl.sum(1)
        non_score = rollout.non_score_rewards.sum(1)
        m = {
            "objective/kl": mean(kl_sum),
            "objective/entropy": mean((-rollout.logprobs * rollout.mask).sum(1)),
            "objective/non_score_reward": mean(non_score),
            "objective/rlhf_reward": mean(non_score + rollout.rewarded_scores),  # what PPO maximises
            "objective/scores": mean(rollout.scores),
            "objective/kl_coef": self.kl_ctl.value,
        }
        m.update({k: mean(torch.stack(v)) for k, v in stats.items()})
        ratios = acc.gather(torch.stack(stats["val/ratio"]))
        m["val/ratio_var"] = ratios.var().item() if ratios.numel() > 1 else 0.0
        m["val/num_eos_tokens"] = acc.gather(rollout.ended.sum().reshape(1)).sum().item()
        moments = acc.gather(
            core.variance_moments(rollout.values, rollout.returns, rollout.mask).reshape(1, -1)
        )
        m["val/explained_variance"] = core.explained_variance(moments.sum(0))  # of the values that sampled
        m["response_length"] = mean(rollout.mask.sum(1).float())
        m["lr"] = self.scheduler.get_last_lr()[0]
        m["episode"] = self.episode
        m["eps"] = (self.episode - start_episode) / (time.time() - start_time)
        m["step"] = self.step
        return m

    def _log(self, metrics: dict) -> None:
        self.tracking.log(metrics, self.step)  # every metric (episode, lr, time/...) at the PPO step
        if not self.accelerator.is_main_process:
            return
        with open(self.work_dir / checkpoint.METRICS_FILE, "a") as f:
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
                + log_line_timing(metrics),
                flush=True,
            )
