"""Reward training on rankings as InstructGPT does it: every comparison of one prompt in one batch element.

Human labellers rank K answers to a prompt, which gives K(K-1)/2 pairs. Shuffled as separate examples (TRL's
`RewardTrainer`), an answer is seen K-1 times per epoch in different steps, and the correlated pairs overfit after
one epoch (Ouyang et al., 2022, section 3.5). Grouped, each answer of a prompt is scored once per step and the
loss is the mean over that prompt's pairs of -log sigmoid(r_better - r_worse - margin), then the mean over
prompts: K forward passes per prompt instead of K(K-1).

The groups are rebuilt from the canonical pair format (`data_prep`): the pairs of one prompt text are one group.
"""

from __future__ import annotations

import torch
from transformers import Trainer


def group_pairs(pairs) -> list[dict]:
    """Pair rows (prompt, chosen, rejected[, margin]) -> one row per prompt: its distinct answers and, per pair,
    the indices of the better and the worse answer and the margin. Order: first appearance."""
    groups: dict[str, dict] = {}
    for row in pairs:
        group = groups.setdefault(row["prompt"], {"prompt": row["prompt"], "responses": [], "better": [],
                                                  "worse": [], "margin": []})  # fmt: skip
        index = {text: i for i, text in enumerate(group["responses"])}
        for text in (row["chosen"], row["rejected"]):
            if text not in index:
                index[text] = len(group["responses"])
                group["responses"].append(text)
        group["better"].append(index[row["chosen"]])
        group["worse"].append(index[row["rejected"]])
        group["margin"].append(float(row.get("margin") or 0.0))  # no margin column (use_margin false): 0
    return list(groups.values())


class GroupCollator:
    """A batch of groups -> every answer once (prompt + answer + EOS, cut on the left to `max_length` as the
    scorer does, padded on the right) and the pairs as indices into it, with their group."""

    def __init__(self, tokenizer, max_length: int | None):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, groups: list[dict]) -> dict:
        texts, better, worse, margin, group_of = [], [], [], [], []
        for g, group in enumerate(groups):
            offset = len(texts)
            texts += [group["prompt"] + r + self.tokenizer.eos_token for r in group["responses"]]
            better += [offset + i for i in group["better"]]
            worse += [offset + i for i in group["worse"]]
            margin += group["margin"]
            group_of += [g] * len(group["better"])
        self.tokenizer.padding_side, self.tokenizer.truncation_side = "right", "left"
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=self.max_length is not None,
                               max_length=self.max_length)  # fmt: skip
        return {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "better": torch.tensor(better),
            "worse": torch.tensor(worse),
            "margin": torch.tensor(margin, dtype=torch.float32),
            "group": torch.tensor(group_of),
        }


class GroupedRewardTrainer(Trainer):
    """transformers' Trainer with the grouped ranking loss (the rest, LoRA, DDP and checkpoints, is the Trainer's)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False
        )
        rewards = outputs.logits[:, 0].float()
        per_pair = -torch.nn.functional.logsigmoid(
            rewards[inputs["better"]] - rewards[inputs["worse"]] - inputs["margin"]
        )
        group = inputs["group"]
        num_groups = int(group.max()) + 1
        totals = torch.zeros(num_groups, device=rewards.device).index_add(0, group, per_pair)
        counts = torch.zeros(num_groups, device=rewards.device).index_add(0, group, torch.ones_like(per_pair))
        loss = (totals / counts).mean()  # each prompt counts once, however many of its pairs survived
        return (loss, outputs) if return_outputs else loss
