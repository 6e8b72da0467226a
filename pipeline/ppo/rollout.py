"""What one PPO step's rollout hands to its update: the sampled batch, scored, with rewards and advantages."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Rollout:
    """One process's rollout batch. B = local_batch_size prompts, Q = their longest (left-padded) length,
    R = response_length, V = the vocabulary. Per-token tensors are zero past `mask` unless said otherwise.

    input_ids, attention_mask  (B, Q + R)  the left-padded queries followed by their responses
    responses                  (B, R)      sampled tokens, padded after the first EOS
    mask                       (B, R)      bool: response tokens up to and including the first EOS
    logprobs, ref_logprobs     (B, R)      log pi(token) under the policy that sampled it and under the SFT
                                           reference, at the sampling temperature (not masked)
    values                     (B, R)      the value head's V(state before each token)
    scores                     (B,)        reward model / reward_fn score, less missing_eos_penalty if no EOS
    rewarded_scores            (B,)        the scores the rewards carry: standardised by the SFT answers' mean
                                           and std when normalize_scores (the penalty after that), else scores
    ended                      (B,)        bool: the response emitted EOS
    kl                         (B, R)      per-token KL(policy || reference) estimate (kl_estimator)
    non_score_rewards          (B, R)      -kl_coef * kl
    rewards                    (B, R)      non_score_rewards plus rewarded_scores on the last token (whitened if
                                           whiten_rewards)
    advantages, returns        (B, R)      GAE advantages (whitened) and returns (advantages + values)
    first_epoch_order          (B,)        the row order of the first PPO epoch, drawn by the rollout
    reused_forward             ((b, R, V), (b, R)) or None: logits and values of the first micro-batch of
                               first_epoch_order (b = per_device_train_batch_size), computed with grad by the
                               rollout for the update to reuse (reuse_rollout_forward)
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    responses: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    rewarded_scores: torch.Tensor
    ended: torch.Tensor
    kl: torch.Tensor
    non_score_rewards: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    first_epoch_order: torch.Tensor
    reused_forward: tuple[torch.Tensor, torch.Tensor] | None = None
