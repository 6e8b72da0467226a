"""Padding-free training on CPU and GPU alike: several texts share one row, each attending only to itself.

Position ids that restart at 0 for every text are all it takes: with no attention mask and no KV cache,
transformers' mask builder (`masking_utils.find_packed_sequence_indices`) reads them as one causal block per text,
for sdpa and eager attention. The loss is then the padded batch's loss, without computing the padding: the base
stage's dialogues are 33 tokens against a batch's longest ~52, so a third of each padded step was waste.

- `PackedCollator`: language modelling on rows packed ahead of time (TRL's `pack_dataset`), for the base stage.
- `packed_rewards` / `keeps_texts_apart`: a reward model's score of packed texts, and the check that a model's
  attention really keeps them apart (the reward stage's `reward/packed.py` trains on them).
- `packed_response_logits`: PPO's response logits from packed rows (`lm.logprobs.response_logits(packed=True)`).
"""

from __future__ import annotations

import torch

from pipeline.common.config import UserError
from pipeline.common.precision import computed_eps


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, so a left-padded row sees the same positions as an unpadded one."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def best_fit_rows(lengths: list[int], width: int) -> list[list[int]]:
    """Indices of `lengths` grouped into rows of at most `width` tokens (best-fit decreasing); a longer text gets a
    row of its own."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fits = [r for r in range(len(rows)) if room[r] >= lengths[i]]
        if fits:
            best = min(fits, key=lambda r: room[r])
            rows[best].append(i)
            room[best] -= lengths[i]
        else:
            rows.append([i])
            room.append(width - lengths[i])
    return rows


def packed_batch(texts: list[list[int]], rows: list[list[int]], pad_token_id: int, mask_first: bool) -> dict:
    """Rows of token ids -> input_ids, position_ids (restarting per text; the row's padding is a block of its own),
    labels (-100 on padding, and on each text's first token when `mask_first`: no text is predicted from the one
    before it), `real` (1 on text tokens, 0 on padding) and `ends`, the flat index (row * width + column) of each
    text's last token, in text order."""
    width = max(sum(len(texts[i]) for i in row) for row in rows)
    input_ids, position_ids, labels, real = [], [], [], []
    ends = [0] * len(texts)
    for r, row in enumerate(rows):
        ids, positions, targets = [], [], []
        for i in row:
            targets += [-100 if mask_first else texts[i][0], *texts[i][1:]]
            ids += texts[i]
            positions += range(len(texts[i]))
            ends[i] = r * width + len(ids) - 1
        tail = width - len(ids)
        input_ids.append(ids + [pad_token_id] * tail)
        position_ids.append(positions + list(range(tail)))
        labels.append(targets + [-100] * tail)
        real.append([1] * len(ids) + [0] * tail)
    return {
        "input_ids": torch.tensor(input_ids),
        "position_ids": torch.tensor(position_ids),
        "labels": torch.tensor(labels),
        "real": torch.tensor(real),
        "ends": torch.tensor(ends),
    }


class PackedCollator:
    """Rows packed by TRL's `pack_dataset` (`input_ids`, `seq_lengths`) -> a causal-LM batch without an attention
    mask. Each text's first token is not a target, so the loss equals that of the texts trained one by one."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, packed_rows: list[dict]) -> dict:
        texts, rows = [], []
        for packed in packed_rows:
            ids, start, row = list(packed["input_ids"]), 0, []
            for length in packed["seq_lengths"]:
                row.append(len(texts))
                texts.append(ids[start : start + length])
                start += length
            rows.append(row)
        batch = packed_batch(texts, rows, self.pad_token_id, mask_first=True)
        return {key: batch[key] for key in ("input_ids", "position_ids", "labels")}


def score_head(model: torch.nn.Module) -> torch.nn.Module:
    """The sequence-classification head (`score`, as transformers' causal-LM classifiers name it), under PEFT,
    DDP or DeepSpeed wrappers."""
    inner = model
    for attribute in ("module", "base_model", "model"):  # DDP/DeepSpeed, PEFT's PeftModel, PEFT's LoraModel
        while hasattr(inner, attribute) and not hasattr(inner, "score"):
            inner = getattr(inner, attribute)
    head = getattr(inner, "score", None)
    if head is None:
        raise UserError(
            f"packing: {type(inner).__name__} has no `score` head to read each packed text's reward from; set "
            "packing: false in the reward recipe."
        )
    return head


def packed_rewards(model, input_ids, position_ids, ends) -> torch.Tensor:
    """Reward of each packed text: the score head on the final hidden state of its last token."""
    outputs = model(
        input_ids=input_ids, position_ids=position_ids, use_cache=False, output_hidden_states=True
    )
    hidden = outputs.hidden_states[-1].flatten(0, 1)[ends]
    return score_head(model)(hidden).float()


@torch.no_grad()
def keeps_texts_apart(model, inputs: dict) -> bool:
    """Whether packed texts are scored as alone: the reward of each text that follows another in its row, packed
    and alone (OPT, for one, takes its positions from the attention mask, so a packed text runs on from the one
    before it)."""
    device = next(model.parameters()).device
    ids, ends = inputs["input_ids"].to(device), inputs["ends"].to(device)
    positions = inputs["position_ids"].to(device)
    width = ids.shape[1]
    starts = [int(end) - int(positions.flatten()[end]) for end in ends]
    was_training = model.training
    model.eval()  # dropout would make the two readings differ
    try:
        packed = packed_rewards(model, ids, positions, ends).squeeze(-1)
        for i, start in enumerate(starts):
            if start % width == 0:  # first in its row: nothing before it to leak
                continue
            alone = model(input_ids=ids.flatten()[start : int(ends[i]) + 1].unsqueeze(0), use_cache=False)
            if not torch.allclose(packed[i], alone.logits.squeeze().float(), atol=1e-3, rtol=1e-3):
                return False
    finally:
        model.train(was_training)
    return True


def packed_response_logits(lm, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int,
                           **kwargs):  # fmt: skip
    """`logprobs.response_logits` without the padding: each row's real tokens (left-padded prompt, response up to
    its EOS) packed into rows twice as wide as the batch, the outputs put back in the padded layout. `.logits` (B, R, V)
    predicts each response token; with `output_hidden_states`, `.hidden_states[-1]` (B, R + 1, D) is the final hidden
    state at the last prompt token and at each response token, so `[:, -R - 1 : -1]` reads as on the padded batch.
    Positions after a response's EOS, which every loss masks, repeat a real position's output.

    All positions get logits (the rows mix prompt and response tokens), so with a large vocabulary and long prompts
    the vocabulary projection can cost more than the padding saved: an option, not the default."""
    batch, width = input_ids.shape
    real = attention_mask.bool()
    lengths = real.sum(1)
    # Rows twice the batch's width: a prompt and its answer often fill more than half of it, and one text a row
    # saves little (tiny recipe: update 0.58 -> 0.49 s a step at 1x, 0.43 s at 2x, 0.49 s at 4x).
    rows = best_fit_rows(lengths.tolist(), 2 * width)
    texts = [input_ids[b][real[b]].tolist() for b in range(batch)]
    packed = packed_batch(texts, rows, pad_token_id=0, mask_first=False)
    device = input_ids.device
    out = lm(input_ids=packed["input_ids"].to(device), position_ids=packed["position_ids"].to(device),
             use_cache=False, **kwargs)  # fmt: skip
    # Flat packed index of each padded (row, column): the text's start plus the column's rank among its real tokens.
    starts = packed["ends"].to(device) - lengths + 1
    rank = position_ids_from_mask(attention_mask)  # a real token's index among its row's real tokens
    columns = slice(width - response_length - 1, width)  # the last prompt token and every response token
    flat = starts[:, None] + rank[:, columns]
    flat = torch.where(real[:, columns], flat, starts[:, None])  # after EOS: any real position will do
    out.logits = out.logits.flatten(0, 1)[flat][:, :-1]
    if out.hidden_states is not None:
        last = out.hidden_states[-1].flatten(0, 1)[flat]
        out.hidden_states = (*out.hidden_states[:-1], last)
    return out


def check_packed_responses(forward, mask: torch.Tensor) -> bool:
    """Whether packed texts are computed as alone: `forward(packed)` gives one batch's response logits, and packed
    and padded must agree wherever `mask` counts."""
    with torch.no_grad():
        padded, packed = forward(False), forward(True)
    gap = ((padded - packed).abs().amax(-1) * mask).max().item()
    # Leaked attention moves logits by O(1) (OPT, whose positions come from the mask: 9.6 at |z| 9); rounding in
    # another attention layout by a few units in the last place: up to 4 in bf16 (2^-7 of the logit each), 1e-3 of
    # it in float32. (Logits come back from an autocast forward as float32 holding bf16 values.)
    relative = max(1e-3, 8 * computed_eps(padded))
    return gap <= relative * max(1.0, padded.abs().max().item())
