"""Every stage on every common architecture, and PPO on-policy by construction on each.

Tiny random models (tests/tiny_models.py: hidden size 32, 2 layers, the tiny tokenizer) of Llama, Qwen2, Mistral,
Gemma2, Phi3, GPT-2, OPT and GPT-NeoX, plus a Llama whose tokenizer pads with EOS (Llama 3 style), go through the
real stage scripts: SFT with LoRA, reward with LoRA, PPO with LoRA and with full fine-tuning, evaluation. One
short run per architecture is shared by its tests (module-scoped fixtures).

On-policy means: at the first PPO step policy and reference are the same weights, so the KL is 0 and the first
mini-batch's ratio is 1; a left-padded batch scores each row exactly as that row alone; rollouts are drawn from
softmax(logits / T), whatever the model's generation_config.json asks for.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.tiny_models import ARCHITECTURES, build_model_dir, tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "tiny"
TOL = 1e-4  # float32: equal up to rounding
VARIANTS = {name: (name, {}) for name in ARCHITECTURES} | {"llama_pad_eos": ("llama", {"pad_is_eos": True})}


# --- one tiny run per architecture ------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """At width 32 a second intra-op thread only adds synchronisation: a tiny matmul took 24 ms on two threads of
    a busy 2-core machine against 0.03 ms on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_data(tiny_data, tmp_path_factory) -> Path:
    """The built-in task's data, cut to a few rows: the stages tokenize everything they are given."""
    from datasets import DatasetDict, load_from_disk

    out = tmp_path_factory.mktemp("arch-data")
    for name in ("sft", "preference"):
        data = load_from_disk(str(tiny_data / name))
        DatasetDict(
            {"train": data["train"].select(range(64)), "test": data["test"].select(range(16))}
        ).save_to_disk(str(out / name))
    for name in ("prompts", "eval_prompts", "pretrain"):
        (out / name).symlink_to(tiny_data / name)
    return out


@pytest.fixture(scope="module")
def tokenizer_dir(small_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("arch-tokenizer")
    tiny_tokenizer(small_data / "pretrain").save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=list(VARIANTS))
def base(request, tokenizer_dir, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    architecture, options = VARIANTS[request.param]
    out = tmp_path_factory.mktemp(f"arch-{request.param}") / "base"
    return build_model_dir(architecture, AutoTokenizer.from_pretrained(tokenizer_dir), out, **options)


@pytest.fixture(scope="module")
def sft(base, small_data) -> Path:
    from pipeline.sft import main

    out = base.parent / "sft"
    main([
        "--config", str(RECIPE / "sft.yaml"), "--model_name_or_path", str(base),
        "--dataset_path", str(small_data / "sft"), "--output_dir", str(out), "--eval_split", "",
        "--max_steps", "2", "--per_device_train_batch_size", "8", "--save_strategy", "no", "--disable_tqdm", "true",
        "--gradient_checkpointing", "true",
    ])  # fmt: skip
    return out


@pytest.fixture(scope="module")
def reward(base, small_data) -> Path:
    from pipeline.reward import main

    out = base.parent / "reward"
    main([
        "--config", str(RECIPE / "reward.yaml"), "--model_name_or_path", str(base),
        "--dataset_path", str(small_data / "preference"), "--output_dir", str(out), "--eval_split", "",
        "--max_steps", "2", "--per_device_train_batch_size", "8", "--save_strategy", "no", "--disable_tqdm", "true",
        "--gradient_checkpointing", "true",
    ])  # fmt: skip
    return out


def run_ppo(policy: Path, reward: Path, small_data: Path, out: Path, *extra: str):
    """Two PPO steps of 4 prompts, one mini-batch: the first step's val/ratio is the first mini-batch's ratio,
    taken before any optimizer step."""
    from pipeline.ppo import main

    return main([
        "--config", str(RECIPE / "ppo.yaml"), "--sft_model_path", str(policy), "--reward_model_path", str(reward),
        "--prompts_path", str(small_data / "prompts"), "--eval_prompts_path", "null", "--output_dir", str(out),
        "--total_episodes", "8", "--per_device_train_batch_size", "4", "--num_mini_batches", "1",
        "--num_ppo_epochs", "1", "--local_rollout_forward_batch_size", "4", "--response_length", "12",
        "--sample_every", "0", "--save_steps", "0", "--save_merged", "false", *extra,
    ])  # fmt: skip


@pytest.fixture(scope="module")
def ppo_lora(sft, reward, small_data):
    """The policy continues the SFT adapter; the reference is a frozen copy of it on the same base. Gradient
    checkpointing on, as the GPU recipes train (the full fine-tuning run keeps it off: both paths run)."""
    return run_ppo(sft, reward, small_data, sft.parent / "ppo-lora", "--gradient_checkpointing", "true")


@pytest.fixture(scope="module")
def ppo_full(sft, reward, small_data):
    """Full fine-tuning of the merged SFT model; the reference is a separate frozen copy (its own forward)."""
    return run_ppo(
        sft / "merged",
        reward,
        small_data,
        sft.parent / "ppo-full",
        "--use_peft",
        "false",
        "--value_head",
        "shared",
    )


@pytest.fixture(scope="module")
def evaluation(sft, reward, ppo_lora, small_data) -> dict:
    from pipeline.evaluate import main

    return main([
        "--config", str(RECIPE / "eval.yaml"), "--run_dir", str(sft.parent / "eval"),
        "--sft_model_path", str(sft), "--ppo_model_path", str(ppo_lora.output_dir),
        "--reward_model_path", str(reward), "--eval_prompts_path", str(small_data / "eval_prompts"),
        "--preference_path", str(small_data / "preference"), "--num_prompts", "8", "--num_pairs", "8",
        "--max_new_tokens", "12", "--batch_size", "8", "--num_report_samples", "2",
    ])  # fmt: skip


def first_step(trainer) -> dict:
    return json.loads((trainer.output_dir / "metrics.jsonl").read_text().splitlines()[0])


# --- the stages ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sft_with_lora(sft):
    assert (sft / "adapter_config.json").is_file() and (sft / "merged" / "config.json").is_file()
    assert math.isfinite(json.loads((sft / "eval_results.json").read_text())["train_loss"])


def eos_padded_copy(reward: Path, out: Path) -> Path:
    """The reward model as a hub model that pads with EOS would come (tokenizer and config.pad_token_id)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(reward)
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(reward)
    model.config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.slow
def test_reward_with_lora_tells_finished_from_cut_off(reward, tmp_path):
    """The score is read at the EOS of a finished answer, so finished != cut off: the reward stage saves a pad
    token distinct from EOS, and both scorers give one to a reward model that pads with EOS. (With pad == EOS the
    EOS counted as padding and both answers scored the same.) Right padding moves no score."""
    from transformers import AutoTokenizer
    from trl import ModelConfig

    from pipeline.lm.scoring import RewardScorer

    tokenizer = AutoTokenizer.from_pretrained(reward)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert json.loads((reward / "config.json").read_text())["pad_token_id"] == tokenizer.pad_token_id
    prompts, answers, ended = (
        ["\n\nHuman: hi\n\nAssistant:"] * 2,
        [" Hello there.", " Hello there, my"],
        [True, False],
    )
    for path in (reward, eos_padded_copy(reward, tmp_path / "eos-padded")):
        # One scorer serves PPO, evaluation and the reward stage's accuracy; batch sizes 4 and 1 both.
        scorers = {
            "batch of 4": RewardScorer(str(path), None, ModelConfig(), "cpu", batch_size=4),
            "batch of 1": RewardScorer(str(path), None, ModelConfig(), "cpu", batch_size=1),
        }
        for name, score in scorers.items():
            finished, cut_off = torch.as_tensor(score(prompts, answers[:1] * 2, ended)).tolist()
            assert abs(finished - cut_off) > 1e-6, f"{name} scorer of {path.name}: finished scored as cut off"
            batched = torch.as_tensor(score(prompts, answers, ended))
            alone = torch.as_tensor([score(prompts[:1], [a], [e])[0] for a, e in zip(answers, ended)])
            torch.testing.assert_close(batched, alone, rtol=0, atol=TOL, msg=f"{name}: padding moved a score")


@pytest.mark.slow
def test_reward_stage_adds_a_pad_token_when_none_is_spare(tokenizer_dir, small_data, tmp_path):
    """A GPT-2-style tokenizer, EOS its only special token: the reward stage adds a pad token and an embedding row
    for it (LoRA and the merge share the resized base), and a scorer given such a reward model that pads with EOS
    adds one too."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import ModelConfig

    from pipeline.common.models import ADDED_PAD_TOKEN
    from pipeline.lm.scoring import RewardScorer
    from pipeline.reward import main
    from tests.tiny_models import eos_only

    base = build_model_dir("gpt2", eos_only(AutoTokenizer.from_pretrained(tokenizer_dir)), tmp_path / "base")
    out = tmp_path / "reward"
    main([
        "--config", str(RECIPE / "reward.yaml"), "--model_name_or_path", str(base),
        "--dataset_path", str(small_data / "preference"), "--output_dir", str(out), "--eval_split", "",
        "--max_steps", "1", "--per_device_train_batch_size", "8", "--save_strategy", "no", "--disable_tqdm", "true",
    ])  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.pad_token == ADDED_PAD_TOKEN and tokenizer.pad_token_id != tokenizer.eos_token_id
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id

    eos_padded = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    eos_padded.config.pad_token_id = tokenizer.eos_token_id
    eos_padded.save_pretrained(tmp_path / "eos-padded")
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp_path / "eos-padded")
    for path in (out, tmp_path / "eos-padded"):
        score = RewardScorer(str(path), None, ModelConfig(), "cpu", batch_size=4)
        finished, cut_off = score(["Human: hi"] * 2, [" Hello."] * 2, [True, False]).tolist()
        assert abs(finished - cut_off) > 1e-6, path.name


@pytest.mark.slow
@pytest.mark.parametrize("run", ["lora", "full"])
def test_ppo_first_step_is_on_policy(run, ppo_lora, ppo_full):
    """Step 1: policy == reference, so KL = 0; the first mini-batch re-scores the rollout, so every ratio = 1."""
    metrics = first_step({"lora": ppo_lora, "full": ppo_full}[run])
    assert abs(metrics["objective/kl"]) < TOL, metrics["objective/kl"]
    assert abs(metrics["val/ratio"] - 1) < TOL, metrics["val/ratio"]
    rms_log_ratio = math.sqrt(2 * metrics["policy/approxkl_avg"])  # approxkl = 0.5 * mean((log ratio)^2)
    assert rms_log_ratio < TOL, rms_log_ratio


def one_row(row: dict, i: int) -> dict:
    """Row `i` of a rollout batch without its left padding, as if it had been rolled out alone."""
    start = int((row["attention_mask"][i] == 0).long().cumprod(0).sum())  # left padding of the prompt
    return {k: row[k][i : i + 1, start:] for k in ("input_ids", "attention_mask")} | {
        "responses": row["responses"][i : i + 1]
    }


@pytest.mark.slow
@pytest.mark.parametrize("run", ["lora", "full"])
def test_left_padded_batch_scores_each_row_as_alone(run, ppo_lora, ppo_full):
    """Policy log-probs, values, reference log-probs and evaluation's log-probs of a left-padded batch equal
    those of each row alone (the same positions and mask per row in every forward)."""
    from pipeline.lm.logprobs import response_logprobs, sequence_logprobs
    from pipeline.ppo.models import reference_logprobs

    trainer = {"lora": ppo_lora, "full": ppo_full}[run]
    rollout = trainer.rollout(trainer.prompts[:4])
    batch = {name: getattr(rollout, name) for name in ("input_ids", "attention_mask", "responses")}
    assert (batch["attention_mask"][:, 0] == 0).any(), "no left padding to test"
    model, R = trainer.model, batch["responses"].shape[1]
    causal_lm = trainer.ref_model if trainer.ref_model is not None else model.lm  # what evaluation loads

    def score(rows: dict) -> dict:
        with torch.no_grad():
            logits, values = model(rows["input_ids"], rows["attention_mask"], R)
            query = {"input_ids": rows["input_ids"][:, :-R], "attention_mask": rows["attention_mask"][:, :-R]}
            mask = rows["attention_mask"][:, -R:].bool()
            return {
                "policy": response_logprobs(logits, rows["responses"], trainer.args.temperature),
                "value": values.float(),
                "reference": reference_logprobs(
                    model,
                    trainer.ref_model,
                    rows["input_ids"],
                    rows["attention_mask"],
                    rows["responses"],
                    trainer.args.temperature,
                ),
                "evaluation": sequence_logprobs(
                    causal_lm, query, rows["responses"], mask, trainer.args.temperature
                ),
            }

    batched = score(batch)
    mask = rollout.mask
    for i in range(len(mask)):
        alone = score(one_row(batch, i))
        for name, value in alone.items():
            got = batched[name][i : i + 1]
            if name != "evaluation":  # per token; evaluation's is already summed over the response
                got, value = got[:, mask[i]], value[:, mask[i]]
            torch.testing.assert_close(got, value, rtol=0, atol=TOL, msg=f"{name}, row {i}")


@pytest.mark.slow
@pytest.mark.parametrize("run", ["lora", "full"])
def test_update_entropy_and_ratio_as_trl_defines_them(run, ppo_lora, ppo_full):
    """policy/entropy_avg is the entropy of softmax(logits / T) (TRL); and after training, the first mini-batch
    of a fresh rollout still has ratio 1."""
    from trl.trainer.utils import entropy_from_logits

    from pipeline.ppo.core import masked_mean

    trainer = {"lora": ppo_lora, "full": ppo_full}[run]
    rollout = trainer.rollout(trainer.batch_prompts(0))
    with torch.no_grad():
        logits, _ = trainer.model(rollout.input_ids, rollout.attention_mask, rollout.responses.shape[1])
    expected = masked_mean(entropy_from_logits(logits / trainer.args.temperature), rollout.mask).item()
    stats = trainer.update(rollout)  # one mini-batch of every row: its entropy is over the same tokens
    assert stats["policy/entropy_avg"][0].item() == pytest.approx(expected, abs=TOL)
    assert abs(stats["val/ratio"][0].item() - 1) < TOL


@pytest.mark.slow
def test_ppo_saves_the_models_own_generation_config(sft, ppo_full):
    """Sampling swaps in our config only while it generates: the saved policy keeps the model's own."""
    own, saved = (
        json.loads((d / "generation_config.json").read_text()) for d in (sft / "merged", ppo_full.output_dir)
    )
    assert saved == own


@pytest.mark.slow
def test_evaluation(evaluation):
    for key in (
        "reward_model_accuracy",
        "sft_reward_model_score",
        "ppo_reward_model_score",
        "kl_ppo_from_sft",
    ):
        assert math.isfinite(evaluation[key]), key
    assert evaluation["counts"] == {"num_prompts": 8, "num_preference_pairs": 8}


# --- sampling comes from our config alone ---------------------------------------------------------------------

# What instruct models ship, exaggerated so that any of it leaking into sampling is unmistakable.
LEAKY_GENERATION = dict(
    do_sample=True, temperature=1.3, repetition_penalty=5.0, top_k=3, top_p=0.5, no_repeat_ngram_size=1,
    min_new_tokens=2, renormalize_logits=True,
)  # fmt: skip
SAMPLES = 20000


@pytest.fixture(scope="module")
def leaky_model(tokenizer_dir, small_data, tmp_path_factory) -> Path:
    """A Llama whose generation_config.json asks for every logits processor, and bans (bad_words_ids) the token it
    finds likeliest after the first prompt; weights at a large init scale, so that distribution is peaked and the
    sample frequencies below are tight."""
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("arch-leaky") / "base"
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    build_model_dir("llama", tokenizer, out, generation=LEAKY_GENERATION, config={"initializer_range": 0.5})
    model = AutoModelForCausalLM.from_pretrained(out)
    prompt = load_from_disk(str(small_data / "prompts"))["prompt"][0]
    with torch.no_grad():
        likeliest = model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1].argmax().item()
    model.generation_config.bad_words_ids = [[likeliest]]
    model.generation_config.save_pretrained(out)
    return out


class ProcessorSpy:
    """Records the logits processors generate() builds (transformers' own `_get_logits_processor`, called)."""

    def __init__(self, model):
        self.built, self._original = [], model._get_logits_processor
        model._get_logits_processor = self

    def __call__(self, *args, **kwargs):
        processors = self._original(*args, **kwargs)
        self.built.append(processors)
        return processors


def assert_only_temperature(spy: ProcessorSpy, temperature: float) -> None:
    from transformers.generation.logits_process import TemperatureLogitsWarper

    assert spy.built, "generate() built no logits processors"
    for processors in spy.built:
        assert [type(p).__name__ for p in processors] == ["TemperatureLogitsWarper"], processors
        assert isinstance(processors[0], TemperatureLogitsWarper) and processors[0].temperature == temperature


@pytest.fixture(scope="module")
def leaky_trainer(leaky_model, small_data, tmp_path_factory):
    """A PPO trainer on the leaky model (fresh LoRA), rolling out one token per prompt; and what it printed."""
    import contextlib
    import io

    from pipeline.common.config import parse_config
    from pipeline.ppo import CONFIG_TYPES
    from pipeline.ppo.trainer import PPOTrainer

    argv = [
        "--config", str(RECIPE / "ppo.yaml"), "--sft_model_path", str(leaky_model), "--use_peft", "true",
        "--reward_model_path", "null", "--reward_fn", "data_prep.task:labeler_scores",
        "--prompts_path", str(small_data / "prompts"), "--eval_prompts_path", "null",
        "--output_dir", str(tmp_path_factory.mktemp("arch-leaky-ppo")), "--response_length", "1",
    ]  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        trainer = PPOTrainer(*parse_config(CONFIG_TYPES, argv))
    return trainer, printed.getvalue()


@pytest.mark.slow
def test_generation_config_alone_overrides_every_field_it_can(leaky_model):
    """Our GenerationConfig states each processor's field at its neutral value, so transformers has nothing to
    fill in from the model but the fields whose neutral value is 'unset' (here bad_words_ids, min_new_tokens):
    those are why sampling.generate also swaps our config in as the model's own while it samples (next tests)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.lm.sampling import generation_config

    model = AutoModelForCausalLM.from_pretrained(leaky_model)
    tokenizer = AutoTokenizer.from_pretrained(leaky_model)
    ours = generation_config(1, 0.7, tokenizer)
    merged, _ = model._prepare_generation_config(ours)
    merged._eos_token_tensor = torch.tensor([tokenizer.eos_token_id])
    built = model._get_logits_processor(merged, input_ids_seq_length=4, device="cpu")
    leaked = ["NoBadWordsLogitsProcessor", "MinNewTokensLengthLogitsProcessor"]
    assert [type(p).__name__ for p in built] == [*leaked, "TemperatureLogitsWarper"]


@pytest.mark.slow
def test_ppo_logs_what_it_set_aside(leaky_trainer):
    trainer, printed = leaky_trainer
    line = next(line for line in printed.splitlines() if line.startswith("PPO samples from"))
    assert line.startswith("PPO samples from softmax(logits / 0.7) with no other logits processor"), line
    for field in (
        "repetition_penalty=5.0",
        "top_k=3",
        "top_p=0.5",
        "no_repeat_ngram_size=1",
        "bad_words_ids=[[",
    ):
        assert field in line, (field, line)


@pytest.mark.slow
def test_ppo_rollouts_are_drawn_from_softmax_logits_over_temperature(leaky_trainer):
    """The processors generation builds are the temperature step alone, and the first sampled token's frequencies
    match softmax(logits / T) of the policy forward PPO trains on, within a stated bound."""
    from pipeline.lm.sampling import generate, tokenize_prompts

    trainer, T = leaky_trainer[0], leaky_trainer[0].args.temperature
    spy = ProcessorSpy(trainer.model.transformers_model())
    queries = tokenize_prompts(trainer.tokenizer, trainer.prompts[:1] * SAMPLES, 512, "cpu")
    torch.manual_seed(0)
    first = generate(trainer.model, queries, trainer.gen_config, chunk_size=5000)[:, 0]
    assert_only_temperature(spy, T)

    with torch.no_grad():
        full = torch.cat([queries["input_ids"][:1], first[:1, None]], 1)
        logits, _ = trainer.model(full, torch.ones_like(full), 1, with_values=False)
    p = torch.softmax(logits[0, 0].double() / T, -1)
    freq = torch.bincount(first, minlength=p.numel()).double() / SAMPLES
    tv = 0.5 * (freq - p).abs().sum().item()
    # E[TV] <= 1/2 sum_i sqrt(p_i (1 - p_i) / N) (Jensen, per token), and TV moves by at most 1/N per sample, so
    # McDiarmid adds sqrt(ln(1/delta) / 2N) for a failure probability delta = 1e-6 on a correct sampler.
    bound = 0.5 * (p * (1 - p) / SAMPLES).sqrt().sum().item() + math.sqrt(math.log(1e6) / (2 * SAMPLES))
    print(f"first-token TV distance {tv:.4f} over {SAMPLES} samples (bound {bound:.4f}); top p {p.max():.3f}")
    assert tv < bound, (tv, bound)


@pytest.mark.slow
def test_evaluation_samples_as_ppo_does(leaky_model, small_data, capsys):
    """Evaluation's sampling builds the temperature step alone too, and says what it set aside."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer
    from trl import ModelConfig

    from pipeline.evaluate import EvalArguments, load_policy_for_inference, sample

    tokenizer = AutoTokenizer.from_pretrained(leaky_model)
    policy = load_policy_for_inference(str(leaky_model), ModelConfig(), "cpu")
    spy = ProcessorSpy(policy)
    args = EvalArguments(run_dir=str(leaky_model.parent), max_new_tokens=3, batch_size=4)
    prompts = load_from_disk(str(small_data / "eval_prompts"))["prompt"][:4]
    sample(policy, tokenizer, prompts, args, seed=0, name="the SFT policy")
    assert_only_temperature(spy, args.temperature)
    out = capsys.readouterr().out
    assert "the SFT policy samples from softmax(logits / 0.7) with no other logits processor" in out, out
    assert "repetition_penalty=5.0" in out and "bad_words_ids=[[" in out and "temperature=1.3" in out, out


@pytest.mark.parametrize("stage", ["ppo", "evaluate"])
@pytest.mark.parametrize("flag", [("--top_k", "20"), ("--top_p", "0.8")])
def test_top_k_and_top_p_are_refused(stage, flag):
    from pipeline.common.config import ConfigError, parse_config

    if stage == "ppo":
        from pipeline.ppo import CONFIG_TYPES
    else:
        from pipeline.evaluate import CONFIG_TYPES
    with pytest.raises(ConfigError, match="off-policy"):
        parse_config(
            CONFIG_TYPES, ["--config", str(RECIPE / f"{stage.replace('evaluate', 'eval')}.yaml"), *flag]
        )
