"""PPO maths against values worked out by hand (the arithmetic is in the comments)."""

import math

import pytest
import torch

from pipeline.lm import sampling
from pipeline.ppo import core


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_first_eos_mask_and_truncation():
    eos, pad = 2, 0
    responses = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 9]])
    mask = sampling.first_eos_mask(responses, eos)
    # Row 0 ends at its first EOS (index 1), the second EOS is ignored; row 1 never ends; row 2 ends at once.
    assert mask.tolist() == [
        [True, True, False, False],
        [True, True, True, True],
        [True, False, False, False],
    ]
    assert sampling.truncate_after_eos(responses, eos, pad).tolist() == [
        [5, 2, 0, 0],
        [5, 6, 7, 8],
        [2, 0, 0, 0],
    ]
    assert core.last_token_index(mask).tolist() == [1, 3, 0]


def test_masked_mean_var_whiten():
    x = t([1.0, 2.0, 3.0, 4.0, 100.0])
    mask = torch.tensor([[True, True, True, True, False]])
    assert core.masked_mean(x, mask).item() == pytest.approx(2.5)
    # Unbiased: (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3; the masked 100 must not count.
    assert core.masked_var(x, mask).item() == pytest.approx(5 / 3)
    w = core.masked_whiten(x, mask)
    expected = [(v - 2.5) / math.sqrt(5 / 3) for v in (1, 2, 3, 4)]
    assert w[0, :4].tolist() == pytest.approx(expected, abs=1e-5)
    # shift_mean=False keeps the mean (used for rewards): whitened + 2.5.
    assert core.masked_whiten(x, mask, shift_mean=False)[0, :4].tolist() == pytest.approx(
        [e + 2.5 for e in expected], abs=1e-5
    )
    assert core.masked_mean(
        t([1.0, 3.0], [5.0, 7.0]), torch.ones(2, 2, dtype=torch.bool), dim=1
    ).tolist() == [
        2.0,
        6.0,
    ]


def test_kl_estimators():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # k1 = log p - log q = log 2; k3 = (q/p - 1) - log(q/p) = -0.5 + log 2.
    assert core.per_token_kl(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert core.per_token_kl(logp, ref, "k3").item() == pytest.approx(-0.5 + math.log(2))
    assert core.per_token_kl(ref, ref, "k3").item() == 0.0
    with pytest.raises(ValueError, match="k1"):
        core.per_token_kl(logp, ref, "k2")


def test_rewards_put_score_at_last_token_and_kl_penalty_everywhere():
    scores = torch.tensor([2.0, -1.0])
    kl = t([0.1, 0.2, 0.3], [0.4, 0.0, 0.2])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    rewards, non_score = core.compute_rewards(scores, kl, mask, kl_coef=0.5)
    # Row 0: -0.5 * [0.1, 0.2] then the score 2.0 at index 1; nothing past the EOS.
    assert rewards[0].tolist() == pytest.approx([-0.05, -0.1 + 2.0, 0.0])
    # Row 1 never ended: the score lands on the last token.
    assert rewards[1].tolist() == pytest.approx([-0.2, 0.0, -0.1 - 1.0])
    assert non_score[0].tolist() == pytest.approx([-0.05, -0.1, 0.0])


def test_gae_small_arrays():
    # gamma=1, lam=0.5, V=0.5 everywhere, reward 1 at the end:
    # A2 = 1 - 0.5 = 0.5; A1 = (0 + 0.5 - 0.5) + 0.5 * 0.5 = 0.25; A0 = 0 + 0.5 * 0.25 = 0.125.
    adv, ret = core.compute_gae(
        t([0.0, 0.0, 1.0]), t([0.5, 0.5, 0.5]), torch.ones(1, 3, dtype=torch.bool), 1.0, 0.5
    )
    assert adv[0].tolist() == pytest.approx([0.125, 0.25, 0.5])
    assert ret[0].tolist() == pytest.approx([0.625, 0.75, 1.0])
    # gamma=0.5, lam=1, V=0: A1 = 1; A0 = 1 + 0.5 * 1 = 1.5.
    adv, _ = core.compute_gae(t([1.0, 1.0]), t([0.0, 0.0]), torch.ones(1, 2, dtype=torch.bool), 0.5, 1.0)
    assert adv[0].tolist() == pytest.approx([1.5, 1.0])
    # Past the EOS, values and rewards are ignored (the 7 and 9 must not leak into earlier advantages):
    # A1 = 1 - 0.5 = 0.5; A0 = (0 + 0.5 - 0.5) + 0.5 * 0.5 = 0.25; A2 = 0.
    mask = torch.tensor([[True, True, False]])
    adv, ret = core.compute_gae(t([0.0, 1.0, 7.0]), t([0.5, 0.5, 9.0]), mask, 1.0, 0.5)
    assert adv[0].tolist() == pytest.approx([0.25, 0.5, 0.0])
    assert ret[0].tolist() == pytest.approx([0.75, 1.0, 0.0])


def test_clipped_policy_loss():
    logprobs = torch.log(t([1.5, 0.5, 0.5]))
    old = torch.zeros(1, 3)
    adv = t([1.0, 1.0, -1.0])
    loss, stats = core.policy_loss(logprobs, old, adv, torch.ones(1, 3, dtype=torch.bool), cliprange=0.2)
    # ratio [1.5, 0.5, 0.5]; -A*r = [-1.5, -0.5, 0.5]; -A*clip(r) = [-1.2, -0.8, 0.8];
    # max = [-1.2, -0.5, 0.8] -> mean -0.3; clipped term chosen at tokens 0 and 2.
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 0.8) / 3)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)
    assert stats["ratio"].item() == pytest.approx(2.5 / 3)
    assert stats["approxkl"].item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2) / 3)


def test_clipped_value_loss():
    values, old, returns = t([0.5, -0.1]), torch.zeros(1, 2), t([1.0, 1.0])
    loss, stats = core.value_loss(
        values, old, returns, torch.ones(1, 2, dtype=torch.bool), cliprange_value=0.2
    )
    # clipped V = [0.2, -0.1]; unclipped (V-R)^2 = [0.25, 1.21]; clipped = [0.64, 1.21]; 0.5 * mean(max) = 0.4625.
    assert loss.item() == pytest.approx(0.4625)
    assert stats["clipfrac"].item() == pytest.approx(0.5)


def test_explained_variance_over_response_tokens_and_summed_across_processes():
    torch.manual_seed(0)
    returns = torch.randn(6, 5)
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[0, 3:] = mask[4, 1:] = False  # padding past the first EOS counts for nothing
    noisy = returns + 0.5 * torch.randn(6, 5)
    kept_r, kept_e = returns[mask].double(), (returns - noisy)[mask].double()
    expected = 1 - kept_e.var(unbiased=False) / kept_r.var(unbiased=False)
    assert core.explained_variance(core.variance_moments(noisy, returns, mask)) == pytest.approx(
        expected.item()
    )
    assert core.explained_variance(core.variance_moments(returns, returns, mask)) == pytest.approx(1.0)
    mean_only = torch.full_like(returns, kept_r.mean().item())
    assert core.explained_variance(core.variance_moments(mean_only, returns, mask)) == pytest.approx(
        0.0, abs=1e-6
    )
    assert core.explained_variance(core.variance_moments(-returns, returns, mask)) < 0
    # two processes' halves, summed, give the whole batch's figure (what the trainer's gather does)
    halves = core.variance_moments(noisy[:3], returns[:3], mask[:3]) + core.variance_moments(
        noisy[3:], returns[3:], mask[3:]
    )
    assert core.explained_variance(halves) == pytest.approx(expected.item())
    assert math.isnan(core.explained_variance(core.variance_moments(returns, torch.ones(6, 5), mask)))


def test_score_normalizer_standardises_and_leaves_constant_scores_unscaled():
    mean, std = core.score_normalizer(torch.tensor([1.0, 3.0, 5.0, 7.0]))
    assert mean == 4.0 and std == pytest.approx(math.sqrt(20 / 3))  # the sample std, as torch.std
    # An affine change of the scores moves the statistics with it: (25 x - 40 - m') / s' == (x - m) / s.
    wide_mean, wide_std = core.score_normalizer(torch.tensor([1.0, 3.0, 5.0, 7.0]) * 25 - 40)
    assert (wide_mean, wide_std) == pytest.approx((25 * mean - 40, 25 * std))
    # All answers scored alike: nothing to scale by, so the scores are only centred.
    assert core.score_normalizer(torch.full((8,), 2.5)) == (2.5, 1.0)


def test_kl_controllers():
    fixed = core.FixedKLController(0.1)
    fixed.update(100.0, 64)
    assert fixed.value == 0.1
    adaptive = core.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    adaptive.update(12.0, 64)  # error 1.0 clipped to 0.2: 0.1 * (1 + 0.2 * 64 / 10000)
    assert adaptive.value == pytest.approx(0.1 * 1.00128)
    adaptive.update(5.4, 10000)  # error -0.1: times 0.9
    assert adaptive.value == pytest.approx(0.1 * 1.00128 * 0.9)


def test_batch_sizes_and_steps_as_in_old_trl(tmp_path):
    from pipeline.ppo.config import PPOConfig

    args = PPOConfig(output_dir=str(tmp_path), sft_model_path="sft", prompts_path="prompts", reward_fn="m:f",
                     use_cpu=True, per_device_train_batch_size=4, gradient_accumulation_steps=2, num_mini_batches=3,
                     total_episodes=100)  # fmt: skip
    assert args.local_batch_size == 4 * 2 * 3 and args.local_mini_batch_size == 4 * 2
    assert args.batch_size(num_processes=2) == 48
    assert args.num_steps(num_processes=2, num_prompts=1000) == 3  # ceil(100 / 48)
    args.total_episodes = None  # num_train_epochs (3) passes over the prompts: ceil(3 * 100 / 48)
    assert args.num_steps(num_processes=2, num_prompts=100) == 7
    args.max_steps = 5  # wins over the episode budget
    assert args.num_steps(num_processes=2, num_prompts=100) == 5
    args.save_steps = 0.5  # a fraction of the run
    assert args.checkpoint_interval(5) == 3
    args.save_steps = 2
    assert args.checkpoint_interval(5) == 2
