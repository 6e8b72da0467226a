"""Log-probs of sampled responses under any causal LM: the one forward (positions that skip left padding, logits
for the response positions only, optionally packed) that PPO's rollout and update, its reference model and
evaluation all read, so a policy is always scored the way it sampled."""

from __future__ import annotations

import torch
from trl.trainer.utils import selective_log_softmax

from pipeline.lm.packing import packed_response_logits, position_ids_from_mask


def response_logits(
    lm,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_length: int,
    packed: bool = False,
    **kwargs,
):
    """The model output whose `.logits` (B, R, V) predict each of the last `response_length` tokens.

    Positions count real tokens only (left padding would shift learned absolute positions, as in GPT-2), and the
    vocabulary projection is computed for the response positions alone (`logits_to_keep`). `packed`: the same
    outputs from the batch's real tokens packed into rows, no padding computed (`pipeline.lm.packing`)."""
    if packed:
        return packed_response_logits(lm, input_ids, attention_mask, response_length, **kwargs)
    out = lm(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=response_length + 1,
        use_cache=False,
        **kwargs,
    )
    out.logits = out.logits[:, :-1]
    return out


def sampled_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The logits of the distribution responses are drawn from, softmax(logits / T), in float32 whatever the model
    computed them in (bf16 logits are upcast: pipeline.common.precision): log-probs and entropy."""
    return logits.float() / (temperature + 1e-7)


def response_logprobs(logits: torch.Tensor, responses: torch.Tensor, temperature: float) -> torch.Tensor:
    """log pi(token | context) of each response token at the sampling temperature, in float32: (B, R).

    bf16/fp16 logits are upcast one row at a time, so the float32 copy is one row's (R, V), not the batch's."""
    if logits.dtype in (torch.float32, torch.float64):
        return selective_log_softmax(sampled_logits(logits, temperature), responses)
    return torch.stack([
        selective_log_softmax(sampled_logits(row, temperature), ids) for row, ids in zip(logits, responses)
    ])  # fmt: skip


def sequence_logprobs(model, query: dict, responses, mask, temperature: float):
    """Sum over response tokens (`mask`) of log pi(token | context) at `temperature`, for one batch of left-padded
    `query` and `responses`: what PPO's rollout computes per token, summed per answer (evaluation, held-out KL)."""
    input_ids = torch.cat([query["input_ids"], responses], dim=1)
    attention_mask = torch.cat([query["attention_mask"], mask.long()], dim=1)
    with torch.no_grad():
        logits = response_logits(model, input_ids, attention_mask, responses.shape[1]).logits
    return (response_logprobs(logits, responses, temperature) * mask).sum(1)
