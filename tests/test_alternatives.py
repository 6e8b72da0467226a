"""GRPO, RLOO and DPO through TRL's trainers (pipeline.grpo|rloo|dpo): learning on the built-in task, scoring
through our scorer, on-policy sampling whatever the model's generation_config says, two processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.common.config import ConfigError, UserError
from tests.conftest import TEST_SEED, record_learning

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "tiny"


def online_args(stage: str, tiny_sft, tiny_data, out, *extra) -> list[str]:
    return [
        "--config", str(RECIPE / f"{stage}.yaml"),
        "--model_name_or_path", str(tiny_sft),
        "--prompts_path", str(tiny_data / "prompts"),
        "--output_dir", str(out),
        "--save_strategy", "no",
        "--disable_tqdm", "true",
        "--seed", str(TEST_SEED),
        *extra,
    ]  # fmt: skip


def dpo_args(tiny_sft, tiny_data, out, *extra) -> list[str]:
    return [
        "--config", str(RECIPE / "dpo.yaml"),
        "--model_name_or_path", str(tiny_sft),
        "--dataset_path", str(tiny_data / "preference"),
        "--output_dir", str(out),
        "--save_strategy", "no",
        "--disable_tqdm", "true",
        "--seed", str(TEST_SEED),
        *extra,
    ]  # fmt: skip


# Half the recipes' budgets (GRPO/RLOO 640 answers, DPO 1280 of the 2910 pairs), for the suite's time. Measured
# gains at this size: seeds 0-2 on AVX-512 kernels and seed 0 on the portable ones, 0.79-1.06 (worst: RLOO, seed 1).
LEARNING_BUDGET = ["--max_steps", "40"]
DPO_STEPS = 40


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_learns(name: str, out: Path, tiny_sft: Path, tiny_data: Path, gain_bar: float) -> None:
    """Held-out labeler score over SFT's (same prompts, sampling and seed), its KL, and a loadable merged policy."""
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM

    from tests.ppo.test_ppo_train import labeler_eval

    assert (out / "adapter_config.json").is_file() and (out / "run.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert sum(p.numel() for p in merged.parameters()) > 0
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert Path(adapter["base_model_name_or_path"]) == tiny_sft / "merged"  # the SFT policy is the start
    prompts = list(load_from_disk(str(tiny_data / "eval_prompts"))["prompt"])
    sft_score, _ = labeler_eval(tiny_sft, tiny_sft, prompts)
    score, kl = labeler_eval(out, tiny_sft, prompts)
    print(f"{name}: held-out labeler score SFT {sft_score:.3f} -> {score:.3f}; KL from SFT {kl:.2f} nats")
    record_learning(f"{name}: held-out labeler gain over SFT", score - sft_score, gain_bar)
    record_learning(f"{name}: KL(policy || SFT), nats", kl, 30.0, higher_is_better=False)
    assert score > sft_score + gain_bar, (sft_score, score, kl)
    assert 0.0 < kl < 30.0


@pytest.mark.slow
@pytest.mark.learning
def test_grpo_with_the_reward_model_raises_labeler_score_over_sft(tiny_sft, tiny_reward, tiny_data, tmp_path):
    from pipeline.grpo import main

    out = tmp_path / "grpo"
    main(
        online_args(
            "grpo", tiny_sft, tiny_data, out, "--reward_model_path", str(tiny_reward), *LEARNING_BUDGET
        )
    )
    logged = [m for m in read_metrics(out) if "kl" in m]
    assert logged and all(m["kl"] >= 0 for m in logged)  # beta > 0: TRL measures the KL to the reference
    rewards = [m["rewards/reward_model/mean"] for m in logged]
    assert rewards[-1] > rewards[0], rewards
    assert_learns("grpo (reward model)", out, tiny_sft, tiny_data, 0.5)


@pytest.mark.slow
@pytest.mark.learning
def test_rloo_with_the_labeler_raises_labeler_score_over_sft(tiny_sft, tiny_data, tmp_path):
    from pipeline.rloo import main

    out = tmp_path / "rloo"
    main(online_args("rloo", tiny_sft, tiny_data, out, *LEARNING_BUDGET, "--reward_model_path", "null",
                     "--reward_fn", "data_prep.task:labeler_scores"))  # fmt: skip
    assert any("rewards/labeler_scores/mean" in m for m in read_metrics(out))
    assert_learns("rloo (labeler)", out, tiny_sft, tiny_data, 0.5)


@pytest.mark.slow
@pytest.mark.learning
def test_dpo_raises_labeler_score_over_sft(tiny_sft, tiny_data, tmp_path):
    from pipeline.dpo import main

    out = tmp_path / "dpo"
    main(dpo_args(tiny_sft, tiny_data, out, "--max_steps", str(DPO_STEPS)))
    held_out = [m for m in read_metrics(out) if "eval_rewards/accuracies" in m]
    assert (
        held_out and held_out[-1]["eval_rewards/accuracies"] > 0.6
    )  # the implicit reward ranks held-out pairs
    assert_learns("dpo", out, tiny_sft, tiny_data, 0.5)


# --- scoring: the reward model reads an ended answer at its EOS, as in PPO and evaluation ---------------------


def test_the_reward_function_scores_as_ppo_does(tiny_reward):
    from transformers import AutoTokenizer

    from pipeline.lm.scoring import RewardScorer
    from pipeline.online import ScoredReward

    scorer = RewardScorer(str(tiny_reward))
    tokenizer = AutoTokenizer.from_pretrained(tiny_reward)
    eos = tokenizer.eos_token_id
    prompts = ["User: What do you think about cats?\nAssistant:"] * 3
    completions = [" I like cats a lot.", " I like cats a lot.", " I like"]
    ids = [tokenizer(c)["input_ids"] for c in completions]
    ids = [ids[0] + [eos], ids[1], ids[2]]  # ended, cut off, cut off
    reward = ScoredReward(scorer, [eos], missing_eos_penalty=1.0, name="reward_model")
    assert reward.ended(ids) == [True, False, False]
    got = reward(prompts=prompts, completions=completions, completion_ids=ids)
    want = scorer(prompts, completions, [True, False, False]).tolist()
    assert got == pytest.approx([want[0], want[1] - 1.0, want[2] - 1.0])
    # The EOS is part of what the reward model reads: the ended answer scores differently from the cut-off one.
    assert want[0] != pytest.approx(want[1])


def test_grpo_scores_through_a_reward_model_with_its_own_tokenizer(
    tiny_sft, tiny_data, tmp_path, monkeypatch
):
    """A GPT-2 reward model whose tokenizer (600 tokens) is not the policy's (Llama, 1000): TRL hands our reward
    function decoded text, which the scorer re-encodes with the reward model's tokenizer, EOS appended to the
    answers that ended; every reward GRPO trained on is that score (minus the missing-EOS penalty)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import GRPOTrainer

    from pipeline.grpo import main
    from pipeline.lm.scoring import RewardScorer
    from tests.tiny_models import build_model_dir, tiny_tokenizer

    rm_tokenizer = tiny_tokenizer(tiny_data / "pretrain", num_texts=1000, vocab_size=600)
    causal = build_model_dir("gpt2", rm_tokenizer, tmp_path / "rm-causal")
    reward_model = AutoModelForSequenceClassification.from_pretrained(causal, num_labels=1)
    reward_model.config.pad_token_id = rm_tokenizer.pad_token_id
    reward_model.save_pretrained(tmp_path / "rm")
    rm_tokenizer.save_pretrained(tmp_path / "rm")
    policy_tokenizer = AutoTokenizer.from_pretrained(tiny_sft)
    assert rm_tokenizer.get_vocab() != policy_tokenizer.get_vocab()

    calls = []  # (prompts, completions, completion ids, the rewards TRL got)
    original = GRPOTrainer._calculate_rewards

    def spy(self, inputs, prompts, completions, completion_ids_list):
        rewards = original(self, inputs, prompts, completions, completion_ids_list)
        calls.append((prompts, completions, completion_ids_list, rewards[:, 0].tolist()))
        return rewards

    monkeypatch.setattr(GRPOTrainer, "_calculate_rewards", spy)
    main(online_args("grpo", tiny_sft, tiny_data, tmp_path / "grpo", "--reward_model_path", str(tmp_path / "rm"),
                     "--max_steps", "2"))  # fmt: skip
    scorer = RewardScorer(str(tmp_path / "rm"))
    eos = policy_tokenizer.eos_token_id
    for prompts, completions, ids, got in calls:
        ended = [bool(i) and i[-1] == eos for i in ids]
        want = scorer(prompts, completions, ended).tolist()
        want = [w if e else w - 1.0 for w, e in zip(want, ended)]  # the recipe's missing_eos_penalty
        assert got == pytest.approx(want, abs=1e-5)
    assert sum(len(c[1]) for c in calls) == 2 * 16


# --- on-policy sampling: the model's own generation_config is set aside --------------------------------------


def test_a_models_generation_config_does_not_change_how_grpo_samples(
    tiny_sft, tiny_data, tmp_path, monkeypatch
):
    """A model that forbids repeating any token (no_repeat_ngram_size=1) and the word "are" in its
    generation_config: GRPO's samples still repeat tokens and say "are", and the saved policy keeps its config."""
    import shutil

    from transformers import AutoTokenizer, GenerationConfig
    from trl import GRPOTrainer

    from pipeline.grpo import main

    sft = tmp_path / "sft"
    shutil.copytree(tiny_sft, sft)
    tokenizer = AutoTokenizer.from_pretrained(sft)
    banned = tokenizer(" are", add_special_tokens=False)["input_ids"]  # one token, in most answers
    own = GenerationConfig.from_pretrained(sft / "merged")
    own.no_repeat_ngram_size, own.bad_words_ids = 1, [banned]
    own.save_pretrained(sft / "merged")

    seen: list[list[int]] = []  # the token ids of every answer TRL sampled, as its reward step received them
    original = GRPOTrainer._calculate_rewards

    def spy(self, inputs, prompts, completions, completion_ids_list):
        seen.extend(completion_ids_list)
        return original(self, inputs, prompts, completions, completion_ids_list)

    monkeypatch.setattr(GRPOTrainer, "_calculate_rewards", spy)
    out = tmp_path / "grpo"
    main(online_args("grpo", sft, tiny_data, out, "--reward_model_path", "null",
                     "--reward_fn", "data_prep.task:labeler_scores", "--max_steps", "3"))  # fmt: skip
    assert len(seen) == 3 * 16
    repeats = sum(len(set(ids)) < len(ids) for ids in seen)
    says_are = sum(any(ids[i : i + len(banned)] == banned for i in range(len(ids))) for ids in seen)
    assert repeats > len(seen) // 2, f"only {repeats} of {len(seen)} answers repeat a token"
    assert says_are > 0, "no answer contains the model's banned word: its bad_words_ids still applied"
    saved = GenerationConfig.from_pretrained(out / "merged")
    assert saved.no_repeat_ngram_size == 1 and saved.bad_words_ids == [banned]


def test_grpo_resumed_from_a_checkpoint_ends_on_the_same_weights(tiny_sft, tiny_data, tmp_path):
    """4 steps in one go, checkpointed at step 2; a second run resumed from that checkpoint (the shared resume
    layer) to step 4 ends on the same adapter to the last bit: data order, sampling RNG, optimizer, schedule."""
    from safetensors.torch import load_file

    from pipeline.grpo import main

    def run(out, *extra):
        return main(online_args("grpo", tiny_sft, tiny_data, out, "--reward_model_path", "null",
                                "--reward_fn", "data_prep.task:labeler_scores", "--save_strategy", "steps",
                                "--save_steps", "2", "--save_total_limit", "2", "--keep_checkpoints", "true", "--max_steps", "4",
                                *extra))  # fmt: skip

    run(tmp_path / "full")
    checkpoint = tmp_path / "full.checkpoints" / "checkpoint-2"
    assert (checkpoint / "trainer_state.json").is_file()
    resumed = run(tmp_path / "resumed", "--resume_from_checkpoint", str(checkpoint))
    assert resumed["resumed_from_checkpoint"] == str(checkpoint)
    a = load_file(tmp_path / "full" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_qlora_grpo_and_full_dpo_write_loadable_policies(tiny_sft, tiny_data, tmp_path):
    """QLoRA (4-bit base + adapter) and full fine-tuning, as for SFT: a plain merged model from the first, a plain
    model at the root from the second, and the full model's weights moved off the SFT policy's."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, TrainerCallback

    from pipeline.dpo import main as dpo_main
    from pipeline.grpo import main as grpo_main

    class Modules(TrainerCallback):  # the module types the trainer actually trains
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.names = {type(m).__name__ for m in model.modules()}

    seen = Modules()
    qlora = tmp_path / "grpo-qlora"
    grpo_main(online_args("grpo", tiny_sft, tiny_data, qlora, "--reward_model_path", "null",
                          "--reward_fn", "data_prep.task:labeler_scores", "--max_steps", "2",
                          "--load_in_4bit", "true"), callbacks=[seen])  # fmt: skip
    assert "Linear4bit" in seen.names  # the base really trained in 4 bits
    merged = AutoModelForCausalLM.from_pretrained(qlora / "merged")
    assert not any("4bit" in type(m).__name__ for m in merged.modules()), "merged model must be plain weights"

    full = tmp_path / "dpo-full"
    dpo_main(dpo_args(tiny_sft, tiny_data, full, "--max_steps", "2", "--use_peft", "false",
                      "--eval_strategy", "no"))  # fmt: skip
    assert not (full / "adapter_config.json").exists()
    trained, start = (
        load_file(full / "model.safetensors"),
        load_file(tiny_sft / "merged" / "model.safetensors"),
    )
    assert any(not torch.equal(trained[k], start[k]) for k in start if k in trained)
    AutoModelForCausalLM.from_pretrained(full)


# --- configuration errors, before any model is loaded ----------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--top_k", "50"], "top_k=50"),
        (["--top_p", "0.9"], "top_p=0.9"),
        (["--repetition_penalty", "1.1"], "repetition_penalty=1.1"),
        (["--reward_fn", "data_prep.task:labeler_scores"], "exactly one of reward_model_path and reward_fn"),
    ],
)
def test_off_policy_sampling_and_two_rewards_are_refused(flags, message, tmp_path):
    from pipeline.grpo import main

    argv = online_args("grpo", tmp_path / "sft", tmp_path / "data", tmp_path / "out",
                       "--reward_model_path", str(tmp_path / "reward"), *flags)  # fmt: skip
    with pytest.raises((ConfigError, UserError), match=message):
        main(argv)
    assert not (tmp_path / "out").exists()


def test_an_sft_adapter_without_its_merged_model_is_a_clear_error(tiny_sft, tiny_data, tmp_path):
    import shutil

    from pipeline.grpo import main

    sft = tmp_path / "sft"
    shutil.copytree(tiny_sft, sft, ignore=shutil.ignore_patterns("merged"))
    with pytest.raises(UserError, match="merge_adapter: true"):
        main(online_args("grpo", sft, tiny_data, tmp_path / "out", "--reward_model_path", "null",
                         "--reward_fn", "data_prep.task:labeler_scores"))  # fmt: skip


# --- two processes ---------------------------------------------------------------------------------------------


@pytest.mark.multiprocess
def test_dpo_in_two_processes_shards_the_pairs_and_ends_with_identical_weights(tiny_sft, tiny_data, tmp_path):
    """The rank probe of the SFT and reward stages' two-process tests (tests/rank_probe.py): each rank draws its own
    pairs, both take the same steps and end on the same, moved, LoRA weights; the policy is saved once, merged."""
    from datasets import load_from_disk

    from tests.test_multiprocess import assert_data_parallel, launch_two_ranks, read_ranks

    out, probe = tmp_path / "dpo", tmp_path / "probe"
    overrides = dpo_args(tiny_sft, tiny_data, out, "--max_steps", "4", "--per_device_train_batch_size", "8",
                         "--eval_strategy", "no")[2:]  # fmt: skip
    launch_two_ranks("pipeline.dpo", "dpo.yaml", overrides, probe)
    pairs = load_from_disk(str(tiny_data / "preference"))["train"]
    assert_data_parallel(read_ranks(probe), len(pairs), 8)
    assert (out / "merged" / "config.json").is_file()


def test_an_earlier_rounds_adapter_continues_and_the_start_model_stays_the_reference(tiny_sft, tmp_path):
    """init_adapter_path (GRPO/RLOO in a round of `make rounds`): TRL gets the earlier adapter, trainable, on the
    SFT policy, and no new LoRA config, so its reference (the adapter disabled) is the SFT policy."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    from trl import ModelConfig

    from pipeline.online import start_adapter

    merged = tiny_sft / "merged"
    earlier = tmp_path / "earlier"
    torch.manual_seed(0)
    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(merged), LoraConfig(r=4, init_lora_weights=False)
    )
    lora.save_pretrained(earlier)
    model_args = ModelConfig(model_name_or_path=str(tiny_sft), use_peft=True, lora_r=32)

    fresh, config = start_adapter(AutoModelForCausalLM.from_pretrained(merged), None, model_args)
    assert config is not None and config.r == 32 and not isinstance(fresh, PeftModel)
    model, config = start_adapter(AutoModelForCausalLM.from_pretrained(merged), str(earlier), model_args)
    assert config is None and isinstance(model, PeftModel)
    saved = load_file(str(earlier / "adapter_model.safetensors"))
    state = model.state_dict()
    assert saved and all(
        torch.equal(state[k.replace(".weight", ".default.weight")], v) for k, v in saved.items()
    )
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    sft_output = AutoModelForCausalLM.from_pretrained(merged)(torch.tensor([[1, 2, 3]])).logits
    with model.disable_adapter():
        assert torch.equal(model(torch.tensor([[1, 2, 3]])).logits, sft_output)
    with pytest.raises(UserError, match="not on this run's start model"):
        start_adapter(AutoModelForCausalLM.from_pretrained(merged), str(tiny_sft), model_args)
