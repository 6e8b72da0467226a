"""The evaluate stage: eval.json, report.md and plots from the real SFT, reward and (short) PPO outputs.

Checks that could fail on a real bug: the SFT policy evaluated against itself gives identical samples and a KL of
exactly zero (same seed, same model, correct log-prob alignment); labeler scores match a recomputation from the
saved answers; shards across two processes are gathered back complete and in order; plots are real PNGs.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.common.config import UserError

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "tiny"
REQUIRED = (
    "reward_model_accuracy", "sft_reward_model_score", "ppo_reward_model_score",
    "sft_labeler_score", "ppo_labeler_score", "kl_ppo_from_sft",
)  # fmt: skip
# eval.json's top-level figures that scripts read (README), each a copy of one field of one policy's record:
# key -> (policy, field). The last two only with a labeler.
CONTRACT = {
    "sft_reward_model_score": ("sft", "reward_model_score"),
    "ppo_reward_model_score": ("ppo", "reward_model_score"),
    "sft_labeler_score": ("sft", "labeler_score"),
    "ppo_labeler_score": ("ppo", "labeler_score"),
    "kl_ppo_from_sft": ("ppo", "kl_from_sft"),
    "ppo_labeler_win_rate": ("ppo", "labeler_win_rate_vs_sft"),
    "labeler_tie_rate": ("ppo", "labeler_tie_rate_vs_sft"),
}
# eval.json's top-level keys, in the order it has always written them.
TOP_LEVEL = [
    "reward_model_accuracy", "sft_reward_model_score", "ppo_reward_model_score", "sft_labeler_score",
    "ppo_labeler_score", "kl_ppo_from_sft", "policies", "ppo_labeler_win_rate", "labeler_tie_rate",
    "reward_model_margin_mean", "health", "warnings", "counts", "settings",
]  # fmt: skip


def eval_argv(
    run: Path, tiny_data: Path, tiny_sft: Path, tiny_reward: Path, ppo: Path, *extra: str
) -> list[str]:
    return [
        "--config", str(RECIPE / "eval.yaml"),
        "--run_dir", str(run),
        "--sft_model_path", str(tiny_sft),
        "--ppo_model_path", str(ppo),
        "--reward_model_path", str(tiny_reward),
        "--eval_prompts_path", str(tiny_data / "eval_prompts"),
        "--preference_path", str(tiny_data / "preference"),
        *extra,
    ]  # fmt: skip


def assert_top_level_copies_policies(result: dict) -> None:
    """Every top-level contract figure is its policy's record, to the last bit."""
    labeled = result["policies"]["sft"]["labeler_score"] is not None
    assert list(result) == [
        k for k in TOP_LEVEL if labeled or k not in ("ppo_labeler_win_rate", "labeler_tie_rate")
    ]
    for key, (name, field) in CONTRACT.items():
        if key in result:
            assert result[key] == result["policies"][name][field], key


def read_samples(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "eval_samples.jsonl").read_text().splitlines()]


def assert_valid_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 300, f"{path} is too small: {image.shape}"
    assert image[..., :3].std() > 0.05, f"{path} looks blank"


def test_missing_ppo_output_names_the_stage_to_run(tmp_path):
    from pipeline.evaluate import main

    for sub in ("data/eval_prompts", "data/preference", "sft", "reward", "ppo.checkpoints/checkpoint-2"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "sft" / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match=r"make reward"):
        main(["--config", str(RECIPE / "eval.yaml"), "--run_dir", str(tmp_path)])
    (tmp_path / "reward" / "config.json").write_text("{}")
    # A PPO run that was interrupted (checkpoints only) is not a finished PPO stage either.
    with pytest.raises(UserError, match=r"make ppo") as err:
        main(["--config", str(RECIPE / "eval.yaml"), "--run_dir", str(tmp_path)])
    assert str(tmp_path / "ppo") in str(err.value)


def test_policy_against_itself_has_zero_kl_and_identical_answers(tmp_path, tiny_data, tiny_sft, tiny_reward):
    from data_prep.task import labeler_scores
    from pipeline.evaluate import main

    argv = eval_argv(
        tmp_path, tiny_data, tiny_sft, tiny_reward, tiny_sft, "--num_prompts", "24", "--num_pairs", "40"
    )
    # A run evaluated again after `make rounds` keeps the rounds' table: it describes rounds/, untouched here.
    (tmp_path / "eval.json").write_text(json.dumps({"rounds": [{"round": 1, "labeler_score": 0.5}]}))
    result = main(argv)

    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved.pop("rounds") == [{"round": 1, "labeler_score": 0.5}]
    for key in REQUIRED:
        assert isinstance(saved[key], float) and math.isfinite(saved[key]), key
    assert_top_level_copies_policies(saved)
    assert saved["counts"] == {"num_prompts": 24, "num_preference_pairs": 40}
    assert abs(saved["kl_ppo_from_sft"]) < 1e-4
    samples = read_samples(tmp_path)
    assert len(samples) == 24
    assert all(s["sft_response"] == s["ppo_response"] for s in samples)  # same seed, same sampling settings
    assert saved["sft_labeler_score"] == saved["ppo_labeler_score"]
    assert saved["sft_reward_model_score"] == pytest.approx(saved["ppo_reward_model_score"], abs=1e-5)
    assert saved["reward_model_accuracy"] > 0.5  # a trained reward model beats chance on held-out pairs
    # The same model sampled with the same seed: the same K answers per prompt, so the same pairs and accuracy.
    sft, ppo = saved["policies"]["sft"], saved["policies"]["ppo"]
    assert sft["own_sample_pairs"] == ppo["own_sample_pairs"] > 24  # 24 prompts x up to 6 pairs, less ties
    assert sft["rm_accuracy_on_own_samples"] == ppo["rm_accuracy_on_own_samples"] > 0.5
    # The labeler graded the answers that were saved, on the prompts they were sampled for.
    prompts = [s["prompt"] for s in samples]
    assert [s["sft_labeler_score"] for s in samples] == labeler_scores(
        prompts, [s["sft_response"] for s in samples]
    )
    # Responses are decoded text: no special tokens or padding leak into what is scored.
    assert not any("<pad>" in s["sft_response"] or "</s>" in s["sft_response"] for s in samples)


@pytest.mark.slow
def test_evaluate_a_short_ppo_run_writes_report_and_plots(tmp_path, tiny_data, tiny_sft, tiny_reward):
    from pipeline.evaluate import main
    from pipeline.ppo import main as ppo_main

    ppo = tmp_path / "ppo"
    ppo_main([
        "--config", str(RECIPE / "ppo.yaml"),
        "--sft_model_path", str(tiny_sft), "--reward_model_path", str(tiny_reward),
        "--prompts_path", str(tiny_data / "prompts"), "--eval_prompts_path", str(tiny_data / "eval_prompts"),
        "--output_dir", str(ppo), "--total_episodes", "96", "--logging_steps", "1", "--save_steps", "0",
        "--disable_tqdm", "true",
    ])  # fmt: skip
    result = main(eval_argv(tmp_path, tiny_data, tiny_sft, tiny_reward, ppo, "--num_prompts", "32"))

    assert result["counts"]["num_prompts"] == 32
    assert result["kl_ppo_from_sft"] > 0  # PPO moved the policy
    samples = read_samples(tmp_path)
    assert any(s["sft_response"] != s["ppo_response"] for s in samples)
    assert all(s["ppo_log_ratio"] is not None for s in samples)

    plots = tmp_path / "plots"
    for name in ("ppo_training.png", "reward_distributions.png"):
        assert_valid_png(plots / name)
    report = (tmp_path / "report.md").read_text()
    assert "](plots/ppo_training.png)" in report and "](plots/reward_distributions.png)" in report
    assert "| labeler score (mean) |" in report
    assert samples[0]["sft_response"].strip().split()[0] in report  # the side-by-side table shows answers
    assert report.count("\n| ") >= 8 + 2  # header + separator + 8 sample rows at least


LEADERBOARD_KEYS = ("reward_model_score", "labeler_score", "kl_from_sft", "response_length_mean")


def test_leaderboard_puts_every_policy_on_the_same_prompts(
    tmp_path, tiny_data, tiny_sft, tiny_reward, tiny_grpo
):
    """PPO, GRPO and an untrained DPO (learning rate 0: its adapter is a no-op, so it IS the SFT policy) in one
    run dir, and an RLOO whose run record names another SFT model. The untrained policy must give SFT's answers
    and a KL of exactly zero (same prompts, sampling and seed for every policy); the stranger is flagged."""
    import shutil

    from pipeline.dpo import main as dpo_main
    from pipeline.evaluate import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "grpo").symlink_to(tiny_grpo, target_is_directory=True)
    dpo_main(["--config", str(RECIPE / "dpo.yaml"), "--model_name_or_path", str(tiny_sft),
              "--dataset_path", str(tiny_data / "preference"), "--output_dir", str(run / "dpo"),
              "--learning_rate", "0", "--max_steps", "1", "--eval_strategy", "no", "--save_strategy", "no",
              "--disable_tqdm", "true"])  # fmt: skip
    shutil.copytree(tiny_grpo, run / "rloo")
    record = json.loads((run / "rloo" / "run.json").read_text())
    record["config"]["model_name_or_path"] = str(tmp_path / "another-sft")
    (run / "rloo" / "run.json").write_text(json.dumps(record))

    result = main(eval_argv(run, tiny_data, tiny_sft, tiny_reward, tiny_grpo, "--num_prompts", "24",
                            "--num_pairs", "40"))  # fmt: skip
    board = result["policies"]
    assert list(board) == ["sft", "ppo", "grpo", "rloo", "dpo"]
    for name, policy in board.items():
        for key in LEADERBOARD_KEYS:
            assert isinstance(policy[key], float) and math.isfinite(policy[key]), (name, key)
        if name != "sft":
            assert 0.0 <= policy["labeler_win_rate_vs_sft"] <= 1.0
    samples = read_samples(run)
    assert all(s["dpo_response"] == s["sft_response"] for s in samples)
    assert abs(board["dpo"]["kl_from_sft"]) < 1e-4
    assert board["dpo"]["labeler_score"] == board["sft"]["labeler_score"]
    # PPO's slot holds the same GRPO policy: same answers, same figures, whichever slot it sits in.
    assert all(s["ppo_response"] == s["grpo_response"] for s in samples)
    assert board["grpo"]["kl_from_sft"] == pytest.approx(board["ppo"]["kl_from_sft"])
    assert any(s["grpo_response"] != s["sft_response"] for s in samples)  # 8 GRPO steps moved the policy
    assert board["grpo"]["started_from_this_sft"] is True and board["dpo"]["started_from_this_sft"] is True
    assert board["rloo"]["started_from_this_sft"] is False
    assert any(w.startswith("RLOO did not start from this SFT model") for w in result["warnings"])
    assert set(result["health"]) == {"ppo", "grpo", "rloo", "dpo"}

    report = (run / "report.md").read_text()
    assert "## Leaderboard" in report and "| RLOO |" in report and "**no**" in report
    assert_valid_png(run / "plots" / "leaderboard.png")
    # --alternatives picks who joins: only GRPO now.
    result = main(eval_argv(run, tiny_data, tiny_sft, tiny_reward, tiny_grpo, "--num_prompts", "8",
                            "--num_pairs", "8", "--alternatives", "grpo"))  # fmt: skip
    assert list(result["policies"]) == ["sft", "ppo", "grpo"]
    # A damaged alternative is named before anything samples.
    weights = run / "rloo" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserError, match="adapter_model.safetensors"):
        main(eval_argv(run, tiny_data, tiny_sft, tiny_reward, tiny_grpo, "--num_prompts", "8"))


@pytest.mark.multiprocess
def test_two_processes_shard_and_gather_every_prompt_once(tmp_path, tiny_data, tiny_sft, tiny_reward):
    from datasets import load_from_disk

    # 9 prompts and 7 pairs over 2 ranks: the last shard is padded, and the padding must not be counted.
    argv = eval_argv(
        tmp_path, tiny_data, tiny_sft, tiny_reward, tiny_sft, "--num_prompts", "9", "--num_pairs", "7"
    )
    with socket.socket() as probe:  # a free port: a fixed one can still be held by an earlier run's socket
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           "-m", "pipeline.evaluate", *argv]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("Report: ") == 1  # only the main process writes and reports

    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["counts"] == {"num_prompts": 9, "num_preference_pairs": 7}
    assert saved["settings"]["num_processes"] == 2
    assert abs(saved["kl_ppo_from_sft"]) < 1e-4
    expected = load_from_disk(str(tiny_data / "eval_prompts"))["prompt"][:9]
    assert [s["prompt"] for s in read_samples(tmp_path)] == expected


def test_batched_logprobs_match_one_sequence_at_a_time(tiny_sft, tiny_data):
    """Left padding, position ids and the logits slice must give each answer the same log-prob as scoring it
    alone without padding (what the KL is built from)."""
    import torch
    from datasets import load_from_disk
    from trl import ModelConfig

    from pipeline.common.models import load_tokenizer
    from pipeline.evaluate import EvalArguments, load_policy_for_inference, sample
    from pipeline.lm.logprobs import sequence_logprobs
    from pipeline.lm.sampling import first_eos_mask

    args = EvalArguments(run_dir="unused", batch_size=4, max_new_tokens=12, temperature=0.7)
    tokenizer = load_tokenizer(str(tiny_sft))
    model = load_policy_for_inference(str(tiny_sft), ModelConfig(), torch.device("cpu"))
    prompts = load_from_disk(str(tiny_data / "eval_prompts"))["prompt"][:4]
    prompts[1] = "\n\nHuman: Hi! Please, I really want to learn a lot about cats and dogs.\n\nAssistant:"
    (query,), (responses,) = sample(model, tokenizer, prompts, args, seed=0)
    assert query["attention_mask"].min() == 0  # prompts of different lengths: left padding is exercised
    mask = first_eos_mask(responses, tokenizer.eos_token_id)
    batched = sequence_logprobs(model, query, responses, mask, 0.7)
    for i in range(len(prompts)):
        prompt_ids = query["input_ids"][i][query["attention_mask"][i].bool()]
        answer = responses[i][mask[i]]
        ids = torch.cat([prompt_ids, answer])[None]
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1] / 0.7
        alone = torch.log_softmax(logits.float(), -1).gather(1, answer[:, None]).sum()
        assert batched[i].item() == pytest.approx(alone.item(), abs=1e-3)


def test_a_reward_function_replaces_the_reward_model_and_both_is_an_error(tmp_path):
    from pipeline.common.config import UserError
    from pipeline.evaluate import EvalArguments

    args = EvalArguments(
        run_dir=str(tmp_path), reward_fn="data_prep.task:labeler_scores", reward_model_path="null"
    )
    assert args.reward_model_path is None and args.reward_fn == "data_prep.task:labeler_scores"
    assert EvalArguments(run_dir=str(tmp_path)).reward_model_path == str(tmp_path / "reward")
    with pytest.raises(UserError, match="not both"):
        EvalArguments(
            run_dir=str(tmp_path), reward_fn="data_prep.task:labeler_scores", reward_model_path="rm"
        )


def test_a_wrong_reward_fn_fails_before_any_policy_samples(tmp_path, tiny_data, tiny_sft, monkeypatch):
    import pipeline.evaluate as evaluate

    def no_sampling(*args, **kwargs):
        raise AssertionError("the policies sampled before the reward function was checked")

    monkeypatch.setattr(evaluate, "evaluate_policies", no_sampling)
    argv = eval_argv(tmp_path, tiny_data, tiny_sft, tiny_sft, tiny_sft, "--reward_model_path", "null",
                     "--reward_fn", "data_prep.task:no_such_function")  # fmt: skip
    with pytest.raises(UserError, match="no_such_function"):
        evaluate.main(argv)


def test_every_top_level_figure_is_its_policy_record(tmp_path):
    """eval.json keeps the top-level keys user scripts read, each equal to its `policies` record and to the mean
    over the saved answers it always was; with and without a labeler, with alternatives beside PPO."""
    import statistics

    from pipeline.analysis.summary import summarize
    from pipeline.evaluate import EvalArguments
    from tests.analysis.test_health import CHOSEN_SCORES, SFT_ANSWERS, records_of

    records = records_of(SFT_ANSWERS, SFT_ANSWERS[::-1], [0.25 * i for i in range(60)], 1.5, -1.0)
    for i, record in enumerate(records):
        record.update({"ppo_labeler_score": float(i % 3 - 1), "grpo_response": "Sure.", "grpo_ended": False,
                       "grpo_length": 3, "grpo_log_ratio": 0.5 * i, "grpo_reward_model_score": -0.5 * i,
                       "grpo_labeler_score": 1.0})  # fmt: skip
    policies = {"ppo": str(tmp_path / "ppo"), "grpo": str(tmp_path / "grpo")}
    unlabeled = [{k: None if k.endswith("_labeler_score") else v for k, v in r.items()} for r in records]
    for labeler, answers in (("data_prep.task:labeler_scores", records), (None, unlabeled)):
        args = EvalArguments(run_dir=str(tmp_path), labeler=labeler)
        result = summarize(answers, [0.5, -0.1, 0.3], args, 1, chosen=CHOSEN_SCORES, policies=policies)
        assert_top_level_copies_policies(result)
        mean_score = statistics.fmean(r["ppo_reward_model_score"] for r in answers)
        assert result["ppo_reward_model_score"] == mean_score
        assert result["kl_ppo_from_sft"] == 1.5 and result["policies"]["grpo"]["kl_from_sft"] == 14.75
        if labeler:
            assert result["ppo_labeler_score"] == 0.0 and result["sft_labeler_score"] == 0.0
            assert result["ppo_labeler_win_rate"] == 20 / 60 and result["labeler_tie_rate"] == 20 / 60
        else:
            assert result["ppo_labeler_score"] is None and "ppo_labeler_win_rate" not in result


def test_eval_settings_hold_no_token(tmp_path, monkeypatch):
    """eval.json goes up with a pushed model (rlhf_eval.json): a setting that holds the environment's token is left
    out of it (pipeline.common.redact), the others kept."""
    from pipeline.analysis.summary import settings
    from pipeline.evaluate import EvalArguments

    token = "hf_FAKEtokenForTests0123456789abcdefXYZ"
    monkeypatch.setenv("HF_TOKEN", token)
    args = EvalArguments(run_dir=str(tmp_path), eval_prompts_path=f"https://user:{token}@example.com/prompts")
    saved = settings(args, 1)
    assert token not in json.dumps(saved) and "eval_prompts_path" not in saved
    assert saved["preference_path"] == f"{tmp_path / 'data' / 'preference'}[test]" and saved["seed"] == 0


def miscounting_labeler(prompts, responses):
    return [1.0] * (len(responses) - 1)


def test_a_labeler_that_miscounts_stops_evaluation_in_one_line(
    tmp_path, tiny_data, tiny_sft, tiny_reward, capsys
):
    from pipeline.common.config import run_main
    from pipeline.evaluate import main

    argv = eval_argv(tmp_path, tiny_data, tiny_sft, tiny_reward, tiny_sft, "--num_prompts", "4", "--num_pairs", "4",
                     "--labeler", f"{__name__}:miscounting_labeler")  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        run_main(main, argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert f"error: labeler {__name__}:miscounting_labeler returned 3 scores for 4 responses" in err
    assert not (tmp_path / "eval.json").exists()
