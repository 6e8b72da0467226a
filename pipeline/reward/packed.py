"""The reward model trained on packed rows: TRL's `RewardTrainer` with each batch's chosen and rejected texts packed
(`pipeline.lm.packing`), the reward of a text read from the score head on its last token as the padded model reads
it."""

from __future__ import annotations

import torch
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.modeling_outputs import SequenceClassifierOutput
from trl import RewardTrainer

from pipeline.common.config import UserError
from pipeline.lm.packing import best_fit_rows, keeps_texts_apart, packed_batch, packed_rewards


class PackedPairCollator:
    """TRL's preference examples (`chosen_ids`, `rejected_ids`[, `margin`]) -> every chosen then every rejected
    text packed into rows of `width` tokens. `attention_mask` marks real tokens (TRL counts them); the model is
    never given it, since a mask turns the per-text blocks off."""

    def __init__(self, pad_token_id: int, width: int):
        self.pad_token_id, self.width = pad_token_id, width

    def __call__(self, examples: list[dict]) -> dict:
        texts = [list(e["chosen_ids"]) for e in examples] + [list(e["rejected_ids"]) for e in examples]
        packed = packed_batch(
            texts, best_fit_rows([len(t) for t in texts], self.width), self.pad_token_id, True
        )
        batch = {key: packed[key] for key in ("input_ids", "position_ids", "ends")}
        batch["attention_mask"] = packed["real"]
        if "margin" in examples[0]:
            batch["margin"] = torch.tensor([e["margin"] for e in examples], dtype=torch.float)
        return batch


class _PackedModel:
    """Stands in for the model inside TRL's compute_loss: returns the packed texts' rewards as `logits`."""

    def __init__(self, model):
        self.model = model

    def __call__(self, input_ids, position_ids, ends, **_ignored):  # attention_mask, margin, use_cache
        return SequenceClassifierOutput(logits=packed_rewards(self.model, input_ids, position_ids, ends))


class PackedRewardTrainer(RewardTrainer):
    """TRL's RewardTrainer (its loss, margin, reward centering, metrics) on packed rows: the same rewards and
    gradients as the padded batch, without the padding. Before training, a few training pairs are scored packed and
    one by one; a model whose attention lets packed texts see each other trains padded, with a warning."""

    def __init__(self, *args, pack_width: int, **kwargs):
        super().__init__(*args, **kwargs)
        collator = PackedPairCollator(self.processing_class.pad_token_id, pack_width)
        # Under ZeRO-3 the weights are partitioned until training starts: the check waits for the first batch, and
        # a failure there is an error (the data loader is built by then).
        self.check_first_batch = is_deepspeed_zero3_enabled()
        if self.check_first_batch:
            self.packed = True
        else:
            sample = collator([self.train_dataset[i] for i in range(min(8, len(self.train_dataset)))])
            self.packed = keeps_texts_apart(self.model, sample)
        if self.packed:
            self.data_collator = collator
            self.args.remove_unused_columns = False
        else:
            print(
                f"packing: {type(self.model).__name__}'s attention does not keep packed texts apart (a text's reward "
                "changes with the text before it); training the reward model padded. Set packing: false to skip "
                "this check.",
                flush=True,
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.check_first_batch:
            self.check_first_batch = False
            if not keeps_texts_apart(model, inputs):
                raise UserError(
                    "packing: this model's attention does not keep packed texts apart (a text's reward changes with "
                    "the text before it). Set packing: false in the reward recipe."
                )
        scorer = _PackedModel(model) if self.packed else model
        return super().compute_loss(scorer, inputs, return_outputs, num_items_in_batch)
