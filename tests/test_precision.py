"""bf16 as the GPU recipes run it (`dtype: bfloat16`, `bf16: true`), on the CPU: PPO stays on-policy up to bf16's
rounding on every architecture, and the numbers PPO lives on are float32 (pipeline.common.precision).

The bound. bf16 keeps 8 significant bits: unit roundoff u = 2^-8. Two forwards of the same model on the same text
that add in another order (a KV cache against a full forward, a batch of 8 against a row alone, a training
micro-batch against a rollout chunk) each round the logits z to bf16, so a logit may land one unit in the last
place apart, |dz_j| <= 2u |z_j|. The log-prob of token t at temperature T is z_t / T - logsumexp(z / T), which moves
by at most |dz_t| / T + max_j |dz_j| / T; hence per token

    |d log p_t| <= 4u max_j |z_j| / T        (the position's own logits z; about 0.06 nats for logits of 7 at T 0.7)

The models are the architecture suite's families (tests/tiny_models.py) at initializer range 0.3, so their
next-token distributions are peaked like a trained model's (logits up to ~10), with a random LoRA adapter as their
SFT policy (a non-zero adapter: the reference is a copy of it). Measured here (Xeon, AVX512-BF16): at most 0.60x
the bound in every check and family; the step-1 KL and ratio exactly 0. What it does not allow: sampling in another
precision than the training forward, as PPO did before generation ran under the autocast (0.66-3.46x the bound,
over it in 5 families of 8). Each family takes about a second; a CPU without bf16 units emulates bf16, in seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from tests.tiny_models import ARCHITECTURES, build_model_dir, tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
U = 2.0**-8  # bf16's unit roundoff
PROMPTS = 8
RESPONSE_LENGTH = 16


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(tiny_data):
    return tiny_tokenizer(tiny_data / "pretrain")


def random_adapter(base: Path, out: Path) -> Path:
    """A LoRA adapter with random, non-zero weights on every linear layer of `base`: a stand-in SFT policy."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(
            r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"
        ),
    )
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


class SamplerScores:
    """Records the scores generate() samples from (after the temperature step: logits / T), step by step, by
    appending a recorder to the logits processors transformers builds."""

    def __init__(self, model):
        self.steps: list[torch.Tensor] = []
        self._original = model._get_logits_processor
        model._get_logits_processor = self

    def __call__(self, *args, **kwargs):
        processors = self._original(*args, **kwargs)
        processors.append(self.record)
        return processors

    def record(self, input_ids, scores):
        self.steps.append(scores.float().clone())
        return scores

    def logprobs(self, responses: torch.Tensor) -> torch.Tensor:
        steps = torch.stack(self.steps, 1)  # (B, steps generated, V)
        return torch.log_softmax(steps, -1).gather(-1, responses[:, : steps.shape[1], None]).squeeze(-1)


def bf16_ppo(policy: Path, prompts: Path, out: Path, *extra: str):
    """A PPO trainer as the GPU recipes set it up (bf16 weights and autocast), rolling out 8 prompts a step in one
    forward chunk and training on micro-batches of 4 (no reused forward: the update computes its own)."""
    from pipeline.common.config import parse_config
    from pipeline.ppo import CONFIG_TYPES
    from pipeline.ppo.trainer import PPOTrainer

    argv = [
        "--config", str(REPO / "recipes" / "tiny" / "ppo.yaml"), "--sft_model_path", str(policy),
        "--reward_model_path", "null", "--reward_fn", "data_prep.task:labeler_scores",
        "--prompts_path", str(prompts), "--eval_prompts_path", "null", "--output_dir", str(out),
        "--dtype", "bfloat16", "--bf16", "true", "--response_length", str(RESPONSE_LENGTH),
        "--per_device_train_batch_size", "4", "--num_mini_batches", "2", "--gradient_accumulation_steps", "1",
        "--local_rollout_forward_batch_size", str(PROMPTS), "--reuse_rollout_forward", "false", *extra,
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        return PPOTrainer(*parse_config(CONFIG_TYPES, argv))


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def bf16_trainer(request, tokenizer, tiny_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"bf16-{request.param}")
    base = build_model_dir(request.param, tokenizer, folder / "base", config={"initializer_range": 0.3})
    trainer = bf16_ppo(random_adapter(base, folder / "sft"), tiny_data / "prompts", folder / "ppo")
    sampler = SamplerScores(trainer.model.transformers_model())
    torch.manual_seed(0)
    rollout = trainer.rollout(trainer.batch_prompts(0))
    return request.param, trainer, rollout, sampler


def bound(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """4u max_j |z_j| / T per token, from each position's own logits (B, R, V) -> (B, R)."""
    return 4 * U * logits.float().abs().amax(-1) / temperature


def assert_within(
    name: str, family: str, delta: torch.Tensor, limit: torch.Tensor, mask: torch.Tensor
) -> None:
    used = (delta.abs() / limit)[mask]
    print(json.dumps({"family": family, "check": name, "max |d log p| / bound": round(used.max().item(), 3),
                      "max |d log p|": used.new_tensor(delta.abs()[mask].max().item()).item()}))  # fmt: skip
    assert used.max() <= 1, f"{family}: {name} off by {used.max():.2f}x the bf16 bound"


def rollout_logits(trainer, rollout) -> torch.Tensor:
    with torch.no_grad():
        logits, _ = trainer.model(rollout.input_ids, rollout.attention_mask, rollout.responses.shape[1])
    return logits


def test_bf16_runs_where_the_recipe_asks_and_fp32_where_ppo_needs_it(bf16_trainer):
    """The frozen weights are bf16 and the training forward autocasts to bf16; the LoRA adapters (optimizer's
    weights), the value head, log-probs, values, KL, rewards and advantages are float32."""
    family, trainer, rollout, _ = bf16_trainer
    model = trainer.accelerator.unwrap_model(trainer.model)
    base = {p.dtype for n, p in model.lm.named_parameters() if "lora_" not in n}
    adapters = {
        p.dtype for n, p in model.lm.named_parameters() if "lora_" in n
    }  # policy (trained) and reference
    assert base == {torch.bfloat16} and adapters == {torch.float32}, (family, base, adapters)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}, family
    logits = rollout_logits(trainer, rollout)  # Accelerate hands autocast outputs back as float32 ...
    assert torch.equal(logits, logits.bfloat16().float())  # ... holding bf16 numbers: the forward ran in bf16
    for name in ("logprobs", "ref_logprobs", "values", "kl", "rewards", "advantages", "returns", "scores"):
        assert getattr(rollout, name).dtype == torch.float32, (family, name)


def test_bf16_step_one_kl_and_ratio_within_the_rounding_bound(bf16_trainer):
    """Step 1: the policy is its reference (KL) and the update's first micro-batch, a training forward of 4 rows,
    re-scores the rollout's forward of 8 (ratio) before any optimizer step: both 1 and 0 up to the bound."""
    family, trainer, rollout, _ = bf16_trainer
    limit, mask = bound(rollout_logits(trainer, rollout), trainer.args.temperature), rollout.mask
    # The KL per token is log pi - log pi_ref of the sampled token (k1).
    assert_within("step-1 KL", family, rollout.logprobs - rollout.ref_logprobs, limit, mask)
    rows = rollout.first_epoch_order[: trainer.args.per_device_train_batch_size]
    from pipeline.lm.logprobs import response_logprobs

    trainer.model.train()  # exactly the update's forward (pipeline.ppo.trainer.PPOTrainer.update)
    with torch.no_grad():
        logits, _ = trainer.model(
            rollout.input_ids[rows], rollout.attention_mask[rows], rollout.responses.shape[1]
        )
    trainer.model.eval()
    new = response_logprobs(logits, rollout.responses[rows], trainer.args.temperature)
    assert_within("step-1 log ratio", family, new - rollout.logprobs[rows], limit[rows], mask[rows])


def test_bf16_rollouts_are_sampled_from_the_distribution_ppo_trains_on(bf16_trainer):
    """generate() (KV cache, one token at a time) samples from softmax(logits / T) equal, up to the bound, to the
    full forward PPO computes its log-probs with: sampling runs under the training forward's autocast."""
    family, trainer, rollout, sampler = bf16_trainer
    sampled = sampler.logprobs(rollout.responses)
    steps = sampled.shape[1]
    limit = bound(rollout_logits(trainer, rollout), trainer.args.temperature)
    assert_within("sampler vs forward", family, sampled - rollout.logprobs[:, :steps], limit[:, :steps],
                  rollout.mask[:, :steps])  # fmt: skip


def test_bf16_left_padded_batch_scores_each_row_as_alone_within_the_bound(bf16_trainer):
    family, trainer, rollout, _ = bf16_trainer
    from pipeline.lm.logprobs import response_logprobs

    limit, R = bound(rollout_logits(trainer, rollout), trainer.args.temperature), rollout.responses.shape[1]
    alone = []
    for i in range(PROMPTS):
        start = int((rollout.attention_mask[i] == 0).long().cumprod(0).sum())  # the row's left padding
        with torch.no_grad():
            logits, _ = trainer.model(
                rollout.input_ids[i : i + 1, start:], rollout.attention_mask[i : i + 1, start:], R
            )
        alone.append(response_logprobs(logits, rollout.responses[i : i + 1], trainer.args.temperature))
    assert (rollout.attention_mask[:, 0] == 0).any(), "no left padding to test"
    assert_within("batched vs one row", family, torch.cat(alone) - rollout.logprobs, limit, rollout.mask)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_bf16_full_fine_tuning_reference_runs_as_the_policy(dtype, tokenizer, tiny_data, tmp_path):
    """Full fine-tuning keeps a separate frozen reference model, which Accelerate does not prepare: it runs under
    the policy's autocast too, so at step 1 the KL is 0 up to the bound, as with LoRA; also with float32 weights
    (bf16 autocast over fp32 master weights), where a reference outside the autocast would compute in fp32."""
    base = build_model_dir("qwen2", tokenizer, tmp_path / "base", config={"initializer_range": 0.3})
    trainer = bf16_ppo(
        base,
        tiny_data / "prompts",
        tmp_path / "ppo",
        "--use_peft",
        "false",
        "--value_head",
        "shared",
        "--dtype",
        dtype,
    )
    assert trainer.ref_model is not None
    torch.manual_seed(0)
    rollout = trainer.rollout(trainer.batch_prompts(0))
    limit = bound(rollout_logits(trainer, rollout), trainer.args.temperature)
    assert_within(
        "step-1 KL, full fine-tuning", "qwen2", rollout.logprobs - rollout.ref_logprobs, limit, rollout.mask
    )


def test_reward_model_scores_in_fp32_from_a_bf16_trunk(tokenizer, tmp_path):
    """A bf16 reward model's score head keeps float32 weights and computes in float32, outside any autocast: the
    score equals the fp32 head applied to the bf16 trunk's hidden state at the last real token."""
    from transformers import AutoModelForSequenceClassification

    from pipeline.common.models import load_reward_model
    from pipeline.common.precision import FP32Linear

    base = build_model_dir("llama", tokenizer, tmp_path / "base", config={"initializer_range": 0.3})
    torch.manual_seed(0)
    seqcls = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    seqcls.config.pad_token_id = tokenizer.pad_token_id
    seqcls.save_pretrained(tmp_path / "reward")
    tokenizer.save_pretrained(tmp_path / "reward")

    from trl import ModelConfig

    model = load_reward_model(str(tmp_path / "reward"), ModelConfig(dtype="bfloat16"))
    assert isinstance(model.score, FP32Linear) and model.score.weight.dtype == torch.float32
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    batch = tokenizer(["Human: hi Assistant: hello there"], return_tensors="pt")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch, output_hidden_states=True)
    hidden = out.hidden_states[-1][0, -1].float()
    expected = hidden @ model.score.weight.float()[0]
    assert out.logits.dtype == torch.float32
    torch.testing.assert_close(out.logits[0, 0], expected, rtol=1e-6, atol=1e-6)
    # The same score from the bf16 head (what transformers would compute) is rounded to 8 bits: visibly apart.
    assert (hidden.bfloat16() @ model.score.weight.bfloat16()[0]).float().item() != out.logits[0, 0].item()


def test_computed_eps_tells_the_precision_a_tensor_was_computed_in():
    """What the packing check allows for rounding: an autocast forward's float32 output holds bf16 numbers."""
    from pipeline.common.precision import computed_eps

    torch.manual_seed(0)
    x, w = torch.randn(4, 64), torch.randn(64, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_out = (x @ w).float()
    assert computed_eps(autocast_out) == torch.finfo(torch.bfloat16).eps == 2.0**-7
    assert computed_eps(x @ w) == torch.finfo(torch.float32).eps
    assert computed_eps((x @ w).half().float()) == torch.finfo(torch.float16).eps
