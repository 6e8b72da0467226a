"""Padding-free training (pipeline.lm.packing): packed rows must change the cost, never the numbers.

Each packed path is compared with the padded computation it replaces, on every architecture family we support
(rotary and learned positions, sliding windows, soft-capping, fused projections), and a model whose attention
would let packed texts see each other (OPT: positions from the attention mask) is found by the runtime check, and
the stage falls back to padded batches.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.base import train_tokenizer


def test_packed_rows_train_on_the_same_loss_as_the_texts_one_by_one():
    """Packing (the default) must change the cost, not the objective: each text in a packed row attends only to
    itself from position 0 and is never predicted from the text before it, so the packed batch's logits and loss
    equal those of the same texts padded one per row."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling
    from trl import pack_dataset

    from pipeline.base import BaseModelArguments, build_model
    from pipeline.lm.packing import PackedCollator

    texts = [f"\n\nHuman: Tell me about {t}.\n\nAssistant: {t.capitalize()} are nice." + " Thanks." * n
             for n, t in enumerate(["cats", "dogs", "boats", "rocks", "songs", "hats", "cars"])]  # fmt: skip
    tok = train_tokenizer(texts * 20, vocab_size=300, max_length=64)
    model = build_model(BaseModelArguments(corpus_path="-", num_hidden_layers=2), tok, seed=0).eval()
    one_by_one = Dataset.from_dict(tok([t + tok.eos_token for t in texts]))
    lengths = [len(ids) for ids in one_by_one["input_ids"]]
    packed = pack_dataset(
        one_by_one.remove_columns("attention_mask"), max(lengths) + min(lengths), strategy="bfd"
    )
    assert len(packed) < len(texts) and max(len(r) for r in packed["seq_lengths"]) > 1  # really packed
    assert sorted(n for row in packed["seq_lengths"] for n in row) == sorted(lengths)  # nothing cut

    padded = DataCollatorForLanguageModeling(tok, mlm=False)(list(one_by_one))
    rows = PackedCollator(tok.pad_token_id)(list(packed))
    assert "attention_mask" not in rows
    with torch.no_grad():
        solo, together = model(**padded), model(**rows)
    assert together.loss.item() == pytest.approx(solo.loss.item(), rel=1e-5)
    # Logits text by text: nothing leaks across a text boundary (a bug in the positions or the mask would).
    solo_logits = {tuple(ids): solo.logits[i, : len(ids)] for i, ids in enumerate(one_by_one["input_ids"])}
    for r, row in enumerate(packed):
        start = 0
        for length in row["seq_lengths"]:
            ids = tuple(row["input_ids"][start : start + length])
            torch.testing.assert_close(
                together.logits[r, start : start + length], solo_logits[ids], atol=1e-4, rtol=0
            )
            start += length


PACKABLE = ["llama", "qwen2", "mistral", "gemma2", "phi3", "gpt2", "gpt_neox"]


def _tiny_classifier(architecture: str, peft: bool = False):
    import transformers

    from tests.tiny_models import ARCHITECTURES, MAX_POSITIONS

    class_name, settings = ARCHITECTURES[architecture]
    positions = "n_positions" if architecture == "gpt2" else "max_position_embeddings"
    config = getattr(transformers, class_name)(vocab_size=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                               num_labels=1, **{positions: MAX_POSITIONS, **settings})  # fmt: skip
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(config)
    if peft:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, target_modules="all-linear",
                                                 modules_to_save=["score"], init_lora_weights=False))  # fmt: skip
    return model


def _pairs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    lengths = [(7, 12), (20, 5), (9, 9), (3, 15), (11, 2)]
    return [{"chosen_ids": torch.randint(3, 256, (c,), generator=generator).tolist(),
             "rejected_ids": torch.randint(3, 256, (r,), generator=generator).tolist()} for c, r in lengths]  # fmt: skip


@pytest.mark.parametrize(
    "architecture,peft", [(a, False) for a in PACKABLE] + [("llama", True), ("gpt2", True)]
)
def test_packed_pairs_give_the_padded_rewards_and_gradients(architecture, peft):
    """Packing must change the cost, not the training: each text's reward, the pairwise loss and every gradient
    equal TRL's padded batch, on every architecture family we support (learned and rotary positions, sliding
    windows, soft-capping, fused projections) and under LoRA."""
    from trl.trainer.reward_trainer import DataCollatorForPreference

    from pipeline.lm.packing import packed_rewards
    from pipeline.reward.packed import PackedPairCollator

    model = _tiny_classifier(architecture, peft).eval()  # no dropout (TRL's RewardConfig.disable_dropout)
    examples = _pairs()
    padded = DataCollatorForPreference(pad_token_id=0)(examples)
    packed = PackedPairCollator(pad_token_id=0, width=32)(examples)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()  # really fewer token slots
    assert packed["attention_mask"].sum() == padded["attention_mask"].sum()  # the same real tokens

    def loss_and_grads(rewards):
        chosen, rejected = rewards.squeeze(-1).chunk(2)
        loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
        model.zero_grad()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return rewards.detach(), loss.item(), grads

    want = loss_and_grads(model(**padded, use_cache=False).logits)
    got = loss_and_grads(packed_rewards(model, packed["input_ids"], packed["position_ids"], packed["ends"]))
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    assert got[1] == pytest.approx(want[1], rel=1e-5)
    assert got[2].keys() == want[2].keys() and want[2]
    for name in want[2]:
        torch.testing.assert_close(got[2][name], want[2][name], atol=1e-5, rtol=1e-4, msg=name)


def test_the_reward_check_finds_a_model_that_lets_packed_texts_see_each_other():
    """OPT takes its positions from the attention mask, so a packed text runs on from the one before it: the check
    the reward trainer runs before training must tell (it then trains padded), and pass the models that work."""
    from pipeline.lm.packing import keeps_texts_apart
    from pipeline.reward.packed import PackedPairCollator

    inputs = PackedPairCollator(pad_token_id=0, width=32)(_pairs())
    assert keeps_texts_apart(_tiny_classifier("opt"), inputs) is False
    assert keeps_texts_apart(_tiny_classifier("llama"), inputs) is True
    assert keeps_texts_apart(_tiny_classifier("gpt2"), inputs) is True


def _tiny_lm(architecture: str):
    import transformers

    from tests.tiny_models import ARCHITECTURES, MAX_POSITIONS

    class_name, settings = ARCHITECTURES[architecture]
    positions = "n_positions" if architecture == "gpt2" else "max_position_embeddings"
    config = getattr(transformers, class_name)(vocab_size=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                               **{positions: MAX_POSITIONS, **settings})  # fmt: skip
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()  # eval: no dropout, as PPO runs it


def _rollout(seed: int = 0):
    """A PPO rollout batch as generation leaves it: prompts left-padded, responses cut by EOS (2) then padded."""
    from pipeline.lm.sampling import first_eos_mask

    generator = torch.Generator().manual_seed(seed)
    prompt_lengths, response_lengths, width, R = [5, 9, 3, 7, 9, 4], [6, 12, 1, 12, 3, 9], 9, 12
    input_ids = torch.zeros(len(prompt_lengths), width + R, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for b, (p, r) in enumerate(zip(prompt_lengths, response_lengths)):
        input_ids[b, width - p : width + r] = torch.randint(3, 256, (p + r,), generator=generator)
        if r < R:
            input_ids[b, width + r - 1] = 2  # the response ended with EOS
        attention_mask[b, width - p : width] = 1
    mask = first_eos_mask(input_ids[:, width:], 2) & (
        torch.arange(R) < torch.tensor(response_lengths)[:, None]
    )
    attention_mask[:, width:] = mask.long()
    return input_ids, attention_mask, mask, R


@pytest.mark.parametrize("architecture", PACKABLE)
def test_packed_policy_forward_gives_the_padded_logits_values_and_gradients(architecture):
    """PPO's forward (response logits and the last hidden state the value head reads), packed against padded,
    wherever the response mask counts; and the gradients of a masked loss through both."""
    from pipeline.lm.logprobs import response_logits

    lm = _tiny_lm(architecture)
    input_ids, attention_mask, mask, R = _rollout()

    def outputs(packed: bool):
        out = response_logits(lm, input_ids, attention_mask, R, packed=packed, output_hidden_states=True)
        hidden = out.hidden_states[-1][:, -R - 1 : -1]
        loss = (out.logits.logsumexp(-1) * mask).sum() + (hidden.sum(-1) * mask).sum()
        lm.zero_grad()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None}
        return out.logits.detach(), hidden.detach(), grads

    padded, packed = outputs(False), outputs(True)
    assert padded[0].shape == packed[0].shape and padded[1].shape == packed[1].shape
    torch.testing.assert_close(packed[0][mask], padded[0][mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[1][mask], padded[1][mask], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(packed[0]).all()  # after EOS: finite filler, masked by every loss
    assert packed[2].keys() == padded[2].keys() and padded[2]
    for name in padded[2]:
        torch.testing.assert_close(packed[2][name], padded[2][name], atol=1e-4, rtol=1e-4, msg=name)


def test_the_ppo_check_finds_a_model_that_lets_packed_texts_see_each_other():
    """The check PPO runs on its first batch (it then runs padded): OPT fails it, the others pass."""
    from pipeline.lm.logprobs import response_logits
    from pipeline.lm.packing import check_packed_responses

    input_ids, attention_mask, mask, R = _rollout()
    for architecture, apart in (("opt", False), ("llama", True), ("gpt2", True)):
        lm = _tiny_lm(architecture)

        def forward(packed, lm=lm):
            return response_logits(lm, input_ids, attention_mask, R, packed=packed).logits

        assert check_packed_responses(forward, mask) is apart, architecture
