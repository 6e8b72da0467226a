"""PPO end to end on the built-in task: learning, resume, NaN stop, reward-model path, two processes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TEST_SEED, record_learning

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "tiny" / "ppo.yaml"


def ppo_args(tiny_sft, tiny_data, out, *extra) -> list[str]:
    return [
        "--config", str(RECIPE),
        "--sft_model_path", str(tiny_sft),
        "--prompts_path", str(tiny_data / "prompts"),
        "--eval_prompts_path", str(tiny_data / "eval_prompts"),
        "--output_dir", str(out),
        "--reward_model_path", "null",
        "--reward_fn", "data_prep.task:labeler_scores",
        "--sample_every", "0",
        "--save_steps", "0",
        "--save_merged", "false",
        "--logging_steps", "10",
        *extra,
    ]  # fmt: skip


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# --- held-out evaluation with the labeler ---------------------------------------------------------------------


@torch.no_grad()
def labeler_eval(policy_dir: Path, sft_dir: Path, prompts: list[str], seed: int = 0) -> tuple[float, float]:
    """Mean labeler score of `policy_dir`'s samples on `prompts`, and its KL from the SFT policy (k1, summed)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_prep.task import labeler_scores
    from pipeline.common.models import adapter_base_path
    from pipeline.lm.logprobs import sequence_logprobs
    from pipeline.lm.sampling import first_eos_mask, tokenize_prompts

    def load(path):
        base = AutoModelForCausalLM.from_pretrained(adapter_base_path(path))
        return PeftModel.from_pretrained(base, str(path)).merge_and_unload().eval()

    tok = AutoTokenizer.from_pretrained(sft_dir)
    policy, sft = load(policy_dir), load(sft_dir)
    torch.manual_seed(seed)
    q = tokenize_prompts(tok, prompts, 512, "cpu")
    out = policy.generate(**q, do_sample=True, temperature=0.7, top_k=0, max_new_tokens=48,
                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    responses = out[:, q["input_ids"].shape[1] :]
    mask = first_eos_mask(responses, tok.eos_token_id)
    scores = labeler_scores(
        prompts, tok.batch_decode(responses * mask + tok.pad_token_id * ~mask, skip_special_tokens=True)
    )
    # The KL as evaluation computes it (k1 on the policy's samples, summed over response tokens).
    kl = sequence_logprobs(policy, q, responses, mask, 0.7) - sequence_logprobs(sft, q, responses, mask, 0.7)
    kl = kl.mean().item()
    return sum(scores) / len(scores), kl


@pytest.mark.slow
@pytest.mark.learning
def test_ppo_raises_labeler_score_over_sft(tiny_sft, tiny_data, tmp_path):
    from datasets import load_from_disk

    from pipeline.ppo import main

    out = tmp_path / "ppo"
    main(ppo_args(tiny_sft, tiny_data, out, "--seed", str(TEST_SEED)))
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == list(range(1, len(metrics) + 1))
    for key in ("objective/kl", "objective/scores", "objective/rlhf_reward", "policy/approxkl_avg",
                "policy/clipfrac_avg", "loss/policy_avg", "loss/value_avg", "val/ratio", "policy/entropy_avg",
                "response_length", "eps", "episode", "lr", "val/explained_variance"):  # fmt: skip
        assert key in metrics[-1]
    assert all(
        math.isfinite(m["val/explained_variance"]) and m["val/explained_variance"] <= 1 for m in metrics
    )
    assert (out / "adapter_config.json").is_file() and (out / "value_head.safetensors").is_file()

    prompts = list(load_from_disk(str(tiny_data / "eval_prompts"))["prompt"])
    sft_score, _ = labeler_eval(tiny_sft, tiny_sft, prompts)
    ppo_score, kl = labeler_eval(out, tiny_sft, prompts)
    print(f"held-out labeler score: SFT {sft_score:.3f} -> PPO {ppo_score:.3f}; KL(PPO || SFT) {kl:.2f} nats")
    record_learning("ppo (labeler reward): held-out labeler gain over SFT", ppo_score - sft_score, 0.75)
    record_learning("ppo (labeler reward): KL(PPO || SFT), nats", kl, 12.0, higher_is_better=False)
    # Kernel sets x seeds 0-2 (BENCHMARKS.md, PPO's default since issue 37): gain 1.62 +- 0.20, worst 1.29; KL 3.4
    # +- 0.9, worst 5.5 (target_kl 4). The old default's KL reached 9.7, so its bar was 30.
    assert ppo_score > sft_score + 0.75, (sft_score, ppo_score, kl)
    assert 0.0 < kl < 12.0


SMALL = ["--total_episodes", "32", "--per_device_train_batch_size", "4", "--num_mini_batches", "2",
         "--num_ppo_epochs", "1", "--response_length", "16", "--eval_prompts_path", "null"]  # fmt: skip


def run_and_resume(tiny_sft, tiny_data, tmp_path):
    """Run 4 steps with a checkpoint at 2, then resume a second run from it; returns both dirs and the trainer."""
    from pipeline.ppo import main

    small = SMALL
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    main(ppo_args(tiny_sft, tiny_data, full, *small, "--save_steps", "2", "--keep_checkpoints", "true"))
    checkpoints = full.with_name("full.checkpoints")
    ckpt = checkpoints / "checkpoint-2"
    assert (ckpt / "trainer_state.json").is_file() and not list(checkpoints.glob("*.tmp"))
    trainer = main(ppo_args(tiny_sft, tiny_data, resumed, *small, "--resume_from_checkpoint", str(ckpt)))
    assert [m["step"] for m in read_metrics(resumed)] == [3, 4]
    assert trainer.step == 4
    return full, resumed, ckpt, trainer


def assert_same_final_weights(full: Path, resumed: Path) -> None:
    """Same data, RNG, optimizer and schedule: the resumed run ends on the very same weights."""
    for name in ("adapter_model.safetensors", "value_head.safetensors"):
        a, b = load_file(full / name), load_file(resumed / name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{name}:{k}")
    full_m, res_m = read_metrics(full), read_metrics(resumed)
    assert res_m[-1]["objective/scores"] == pytest.approx(full_m[-1]["objective/scores"])


def assert_close_weights(a_dir: Path, b_dir: Path, names: tuple[str, ...], rtol: float, atol: float) -> None:
    """Two runs' saved weights agree to float precision, and training moved them (a LoRA B or the value head)."""
    for name in names:
        a, b = load_file(a_dir / name), load_file(b_dir / name)
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=rtol, atol=atol, msg=f"{name}:{k}")
        moved = [k for k in a if "lora_B" in k or "value_head" in name]
        assert moved and any(a[k].abs().sum() > 0 for k in moved), name


def test_resume_continues_step_and_optimizer(tiny_sft, tiny_data, tmp_path):
    full, resumed, ckpt, trainer = run_and_resume(tiny_sft, tiny_data, tmp_path)
    # Adam's step counter continued from the checkpoint (2 steps x 2 mini-batches) through 2 more steps.
    saved = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert next(iter(saved["state"].values()))["step"].item() == 4
    assert next(iter(trainer.optimizer.state_dict()["state"].values()))["step"].item() == 8
    assert_same_final_weights(full, resumed)


def test_sample_tables_leave_training_unchanged(tiny_sft, tiny_data, tmp_path):
    """Sample tables draw on a forked RNG: turning them on changes nothing in training, to the last bit."""
    from pipeline.ppo import main

    small = ["--total_episodes", "24", "--per_device_train_batch_size", "4", "--num_mini_batches", "2",
             "--num_ppo_epochs", "1", "--response_length", "16"]  # fmt: skip
    main(ppo_args(tiny_sft, tiny_data, tmp_path / "quiet", *small))
    main(ppo_args(tiny_sft, tiny_data, tmp_path / "tables", *small, "--sample_every", "2"))
    tables = [json.loads(x) for x in (tmp_path / "tables" / "samples.jsonl").read_text().splitlines()]
    assert sorted({row["step"] for row in tables}) == [2, 3]  # every 2 steps and the last (3 steps of 8)
    assert_same_final_weights(tmp_path / "quiet", tmp_path / "tables")


@pytest.mark.parametrize("packing", ["false", "true"])
def test_reused_rollout_forward_trains_as_a_fresh_forward(tiny_sft, tiny_data, tmp_path, packing):
    """The first micro-batch's forward, run in the rollout with grad and reused by the first PPO epoch, trains as
    a second forward would: the same samples (the RNG stream is unchanged), the same weights to float precision,
    and the reused rows' ratio exactly 1 (their old log-probs are that very forward's)."""
    from pipeline.ppo import main

    small = ["--total_episodes", "24", "--per_device_train_batch_size", "4", "--num_mini_batches", "2",
             "--num_ppo_epochs", "2", "--response_length", "16", "--packing", packing]  # fmt: skip
    main(ppo_args(tiny_sft, tiny_data, tmp_path / "fresh", *small, "--reuse_rollout_forward", "false"))
    assert main(ppo_args(tiny_sft, tiny_data, tmp_path / "reused", *small)).reuse_rollout_forward
    fresh, reused = read_metrics(tmp_path / "fresh"), read_metrics(tmp_path / "reused")
    assert [m["objective/scores"] for m in reused] == [m["objective/scores"] for m in fresh]
    for a, b in zip(fresh, reused):
        assert b["val/ratio"] == pytest.approx(a["val/ratio"], abs=1e-5)
        assert b["objective/kl"] == pytest.approx(a["objective/kl"], abs=1e-4)
    assert_close_weights(tmp_path / "fresh", tmp_path / "reused", ("adapter_model.safetensors", "value_head.safetensors"),
                         rtol=1e-4, atol=1e-5)  # fmt: skip

    # The reused rows' old log-probs and values are that forward's own: their first-epoch ratio is exactly 1.
    from pipeline.common.config import parse_config
    from pipeline.lm.logprobs import response_logprobs
    from pipeline.ppo import CONFIG_TYPES
    from pipeline.ppo.trainer import PPOTrainer

    trainer = PPOTrainer(
        *parse_config(CONFIG_TYPES, ppo_args(tiny_sft, tiny_data, tmp_path / "rollout", *small))
    )
    rollout = trainer.rollout(trainer.batch_prompts(0))
    rows, (logits, values) = rollout.first_epoch_order[:4], rollout.reused_forward
    assert logits.requires_grad
    new_logprobs = response_logprobs(logits, rollout.responses[rows], trainer.args.temperature).detach()
    assert torch.equal(new_logprobs, rollout.logprobs[rows])
    assert torch.equal(values.detach().float() * rollout.mask[rows], rollout.values[rows])


def test_resume_through_accelerate_state_as_under_fsdp_and_deepspeed(
    tiny_sft, tiny_data, tmp_path, monkeypatch
):
    """The sharded-engine path (Accelerate's save_state/load_state, gathered final save), run on one CPU process.

    Drives the same trainer code with the engine check forced on, in one process and without launching an engine
    (a fast test); the engines themselves run in test_sharded_engines.py.
    """
    from pipeline.ppo import distributed

    monkeypatch.setattr(distributed, "is_sharded", lambda accelerator: True)
    full, resumed, ckpt, trainer = run_and_resume(tiny_sft, tiny_data, tmp_path)
    assert trainer.sharded
    assert not (ckpt / "trainable.safetensors").exists() and list(
        ckpt.glob("*.safetensors")
    )  # Accelerate's files
    assert next(iter(trainer.optimizer.state_dict()["state"].values()))["step"].item() == 8
    assert_same_final_weights(full, resumed)

    from pipeline.common.config import UserError
    from pipeline.ppo import main

    monkeypatch.setattr(distributed, "is_sharded", lambda accelerator: False)
    with pytest.raises(UserError, match="written under FSDP/DeepSpeed"):
        main(ppo_args(tiny_sft, tiny_data, tmp_path / "again", *SMALL, "--resume_from_checkpoint", str(ckpt)))


def test_activation_checkpointing_trains_the_value_adapter_as_without_it(tiny_sft, tiny_data, tmp_path):
    """A checkpointed block recomputes its forward in backward, after the value pass's adapter was switched back
    to the policy's: unless it recomputes under the adapter it ran with, the value adapter gets the policy adapter's
    activations. Here both adapters have the same rank (a fresh value adapter), so nothing would flag it: the
    weights after training must equal those of the same run without checkpointing."""
    from pipeline.ppo import main

    small = [*SMALL, "--value_head", "adapter", "--num_ppo_epochs", "2"]
    main(ppo_args(tiny_sft, tiny_data, tmp_path / "plain", *small))
    trainer = main(
        ppo_args(tiny_sft, tiny_data, tmp_path / "ckpt", *small, "--activation_checkpointing", "true")
    )
    assert trainer.model.is_gradient_checkpointing
    names = ("adapter_model.safetensors", "value/adapter_model.safetensors", "value_head.safetensors")
    assert_close_weights(tmp_path / "plain", tmp_path / "ckpt", names, rtol=1e-4, atol=1e-6)


def wide_labeler_scores(prompts, responses):
    """The labeler on a wide scale, as a reward model trained another way might score: 25 x score - 40."""
    from data_prep.task import labeler_scores

    return [25.0 * score - 40.0 for score in labeler_scores(prompts, responses)]


def test_normalized_scores_make_ppo_blind_to_the_reward_scale(tiny_sft, tiny_data, tmp_path):
    """normalize_scores: the labeler and an affine copy of it on a 25x wider scale train the same policy (to float
    rounding), as the KL penalty then weighs the same against either; the first rollout's rewarded scores are
    standardised (mean 0 before the missing-EOS penalty); a resumed run keeps the statistics of its checkpoint."""
    from pipeline.ppo import main

    small = [*SMALL, "--normalize_scores", "true"]
    wide = ["--reward_fn", f"{__name__}:wide_labeler_scores"]
    unit_trainer = main(ppo_args(tiny_sft, tiny_data, tmp_path / "unit", *small, "--save_steps", "2",
                                 "--keep_checkpoints", "true"))  # fmt: skip
    main(ppo_args(tiny_sft, tiny_data, tmp_path / "wide", *small, *wide))
    unit, wide_m = read_metrics(tmp_path / "unit"), read_metrics(tmp_path / "wide")
    first = unit[0]  # step 1: KL 0, so the RLHF reward is the mean rewarded score: 0 less the EOS penalties
    assert first["objective/kl"] == 0.0
    batch = 8
    assert first["objective/rlhf_reward"] == pytest.approx(
        -(batch - first["val/num_eos_tokens"]) / batch, abs=1e-5
    )
    for a, b in zip(unit, wide_m):
        assert b["objective/rlhf_reward"] == pytest.approx(a["objective/rlhf_reward"], abs=1e-4)
        assert b["objective/kl"] == pytest.approx(a["objective/kl"], abs=1e-4)
    assert_close_weights(tmp_path / "unit", tmp_path / "wide", ("adapter_model.safetensors", "value_head.safetensors"),
                         rtol=1e-3, atol=1e-5)  # fmt: skip
    # Without normalisation the wide scale swamps the KL penalty: another policy.
    main(ppo_args(tiny_sft, tiny_data, tmp_path / "wide_raw", *SMALL, *wide, "--normalize_scores", "false"))
    raw = load_file(tmp_path / "wide_raw" / "adapter_model.safetensors")
    ours = load_file(tmp_path / "unit" / "adapter_model.safetensors")
    assert max((raw[k] - ours[k]).abs().max().item() for k in ours) > 1e-3

    ckpt = tmp_path / "unit.checkpoints" / "checkpoint-2"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["score_norm"] == pytest.approx(list(unit_trainer.score_norm))
    resumed = main(
        ppo_args(tiny_sft, tiny_data, tmp_path / "resumed", *small, "--resume_from_checkpoint", str(ckpt))
    )
    assert resumed.score_norm == pytest.approx(unit_trainer.score_norm)
    assert_same_final_weights(tmp_path / "unit", tmp_path / "resumed")


def nan_reward(prompts, responses):
    return [float("nan")] * len(prompts)


def test_nan_reward_stops_with_clear_error(tiny_sft, tiny_data, tmp_path):
    from pipeline.ppo import main
    from pipeline.ppo.trainer import NonFiniteError

    with pytest.raises(NonFiniteError, match="NaN/Inf in the reward at step 1"):
        main(ppo_args(tiny_sft, tiny_data, tmp_path / "nan", "--total_episodes", "8",
                      "--per_device_train_batch_size", "4", "--reward_fn", f"{__name__}:nan_reward"))  # fmt: skip


@pytest.mark.slow
def test_reward_model_and_value_adapter(tiny_sft, tiny_reward, tiny_data, tmp_path):
    """The reward-model path (decode, re-encode with its tokenizer) and the value adapter initialised from it."""
    from pipeline.ppo import main

    out = tmp_path / "rm"
    trainer = main(ppo_args(tiny_sft, tiny_data, out, "--reward_fn", "null", "--reward_model_path", str(tiny_reward),
                            "--value_head", "adapter", "--total_episodes", "16", "--per_device_train_batch_size", "4",
                            "--num_ppo_epochs", "1", "--save_merged", "true", "--sample_every", "2"))  # fmt: skip
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert set(model.lm.peft_config) == {"default", "ref", "value"}
    assert (out / "value" / "adapter_config.json").is_file() and (out / "merged" / "config.json").is_file()
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert rows and all(isinstance(r["score"], float) for r in rows)
    assert len(read_metrics(out)) == 2

    # Adapter switching (peft's set_adapter, which freezes every adapter but the active one) left each adapter
    # training or frozen as it should: the value adapter moved away from the reward-model weights it started from,
    # the policy away from the SFT adapter, and the reference adapter is the SFT adapter still.
    def lora(state: dict) -> dict:
        return {k[k.index("layers.") :]: v for k, v in state.items() if "lora_" in k and "layers." in k}

    started = lora(load_file(tiny_reward / "adapter" / "adapter_model.safetensors"))
    value = lora(load_file(out / "value" / "adapter_model.safetensors"))
    assert started.keys() == value.keys() and started
    moved = [k for k in value if not torch.equal(value[k], started[k])]
    assert len(moved) == len(value), (
        f"value adapter tensors that never trained: {sorted(set(value) - set(moved))}"
    )
    sft = lora(load_file(tiny_sft / "adapter_model.safetensors"))
    policy = lora(load_file(out / "adapter_model.safetensors"))
    assert all(not torch.equal(policy[k], sft[k]) for k in sft)
    ref = {
        k.replace(".ref.", "."): v for k, v in lora(dict(model.lm.named_parameters())).items() if ".ref." in k
    }
    assert ref.keys() == sft.keys() and all(torch.equal(ref[k].detach(), sft[k]) for k in sft)
    assert not any(p.requires_grad for n, p in model.lm.named_parameters() if ".ref." in n)


@pytest.mark.multiprocess
def test_two_processes_end_with_identical_weights(tiny_sft, tiny_data, tmp_path):
    script = tmp_path / "run_ppo.py"
    script.write_text(
        "import sys, torch\n"
        "from safetensors.torch import save_file\n"
        "from pipeline.ppo import main\n"
        "from pipeline.ppo.checkpoint import trainable_state\n"
        "t = main(sys.argv[1:-1])\n"
        "save_file(trainable_state(t.accelerator.unwrap_model(t.model)), sys.argv[-1] + f'.rank{t.accelerator.process_index}')\n"
        "sys.stdout.write(f'WORLD {t.accelerator.num_processes}\\n')  # one write: ranks share the pipe\n"
    )
    out = tmp_path / "ddp"
    args = ppo_args(tiny_sft, tiny_data, out, "--total_episodes", "16", "--per_device_train_batch_size", "2",
                    "--num_mini_batches", "2", "--num_ppo_epochs", "2", "--response_length", "16")  # fmt: skip
    dump = str(tmp_path / "weights")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script), *args, dump],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("WORLD 2") == 2
    w0, w1 = load_file(dump + ".rank0"), load_file(dump + ".rank1")
    for k in w0:
        torch.testing.assert_close(w0[k], w1[k], rtol=0, atol=0, msg=k)
    # Both ranks trained: the weights moved from the SFT adapter / zero value head.
    assert w0["value_head.weight"].abs().sum() > 0
    metrics = read_metrics(out)
    assert len(metrics) == 2 and metrics[-1]["episode"] == 16  # 2 ranks x 4 prompts x 2 steps


def test_qlora_4bit_base_trains_and_merges(tiny_sft, tiny_data, tmp_path):
    """A 4-bit NF4 base (bitsandbytes works on CPU) under the LoRA policy; merged/ is a plain model."""
    from transformers import AutoModelForCausalLM

    from pipeline.ppo import main

    out = tmp_path / "qlora"
    trainer = main(ppo_args(tiny_sft, tiny_data, out, "--total_episodes", "8", "--per_device_train_batch_size", "4",
                            "--num_ppo_epochs", "1", "--response_length", "16", "--load_in_4bit", "true",
                            "--save_merged", "true"))  # fmt: skip
    base = trainer.accelerator.unwrap_model(trainer.model).lm.get_base_model()
    assert getattr(base, "is_loaded_in_4bit", False)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_a_policy_started_from_an_earlier_one_keeps_the_sft_policy_as_reference(
    tiny_sft, tiny_data, tmp_path
):
    """init_policy_path (a round of `make rounds`): the trained adapter and the value head are the earlier policy's,
    the reference the SFT adapter; a missing folder, or a plain model where LoRA trains, is refused by name."""
    from peft import PeftModel
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    from trl import ModelConfig

    from pipeline.common.config import UserError
    from pipeline.common.models import adapter_base_path
    from pipeline.ppo.config import PPOConfig
    from pipeline.ppo.models import POLICY, REF, load_policy

    earlier = tmp_path / "earlier"
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(adapter_base_path(tiny_sft)), str(tiny_sft)
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(0.01)
    model.save_pretrained(earlier)
    head = {"weight": torch.full((1, model.config.hidden_size), 0.5), "bias": torch.tensor([1.5])}
    save_file(head, str(earlier / "value_head.safetensors"))  # the earlier policy's critic

    def build(init: str):
        args = PPOConfig(output_dir=str(tmp_path / "out"), sft_model_path=str(tiny_sft), init_policy_path=init,
                         prompts_path=str(tiny_data / "prompts"), reward_fn="data_prep.task:labeler_scores",
                         use_cpu=True, report_to="none")  # fmt: skip
        return load_policy(args, ModelConfig(use_peft=True))[0]

    policy = build(str(earlier))
    saved, sft = (
        load_file(str(earlier / "adapter_model.safetensors")),
        load_file(str(tiny_sft / "adapter_model.safetensors")),
    )
    state = policy.lm.state_dict()
    for key, value in saved.items():
        stem = key.removesuffix(".weight")
        assert torch.equal(state[f"{stem}.{POLICY}.weight"], value), key
        assert torch.equal(state[f"{stem}.{REF}.weight"], sft[key]), key
        assert not torch.equal(value, sft[key]) or "lora_A" in key
    assert torch.equal(policy.value_head.weight, head["weight"]) and torch.equal(
        policy.value_head.bias, head["bias"]
    )
    with pytest.raises(UserError, match="does not exist"):
        build(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="is a plain model, but this run trains LoRA"):
        build(str(tiny_sft / "merged"))
