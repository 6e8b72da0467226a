"""Where bf16 stops. `bf16: true` runs the model's matmuls in bfloat16 (Accelerate's autocast, as transformers'
Trainer does for SFT and reward), and `dtype: bfloat16` stores the frozen weights in it; both work on CPU as on GPU.
The numbers RLHF lives on stay float32 whatever the model computes in (OpenRLHF and verl do the same):

  - log-probs of sampled tokens: log-softmax in fp32 of the (bf16) logits (`pipeline.lm.logprobs`), so the
    ratio, the KL and the entropy are differences of fp32 numbers, not of 8-bit-mantissa ones;
  - the value head and the reward model's score head: fp32 weights applied in fp32 to the trunk's last hidden
    state, outside autocast (`FP32Linear`);
  - everything after them: KL, rewards, advantages, returns, losses (`pipeline.ppo.core` works on fp32 tensors).

bf16 has 8 significant bits: unit roundoff u = 2^-8, so a logit of 10 is held to within 0.04 nats. Two forwards of
one model that add their numbers in a different order (another batch shape, a KV cache) round differently; PPO's
step-1 ratio and KL are then 1 and 0 only up to that rounding (tests/test_precision.py derives the bound).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


class FP32Linear(nn.Linear):
    """A scalar head computed in float32 from a bf16 trunk: its input is upcast and autocast is off within it.

    Same parameters and state-dict keys as nn.Linear, so a model saves and loads unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            bias = None if self.bias is None else self.bias.float()
            return F.linear(x.float(), self.weight.float(), bias)


def fp32_head(linear: nn.Linear) -> FP32Linear:
    """`linear`, in place, with float32 weights and an fp32 forward."""
    linear.float()
    linear.__class__ = FP32Linear
    return linear


def fp32_score_head(model: nn.Module) -> nn.Module:
    """A sequence-classification model (the reward model) with its score head in fp32: every family transformers
    builds one for keeps it in `score`. A model without one is left as it is, and says so."""
    head = getattr(model, "score", None)
    if isinstance(head, nn.Linear) and not isinstance(head, FP32Linear):
        fp32_head(head)
    elif head is None:
        logger.warning("%s has no `score` head: its score is computed in its own dtype", type(model).__name__)
    return model


def computed_eps(values: torch.Tensor) -> float:
    """The machine epsilon of the precision `values` were computed in: an autocast forward hands its logits back as
    float32 (Accelerate converts them) that hold bf16 numbers, so the tensor's own dtype does not tell."""
    for low in (torch.bfloat16, torch.float16):
        if values.dtype == low or bool((values == values.to(low).to(values.dtype)).all()):
            return torch.finfo(low).eps
    return torch.finfo(values.dtype).eps
