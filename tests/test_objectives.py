"""The DPO loss family and sequence log-probs against numbers worked out by hand."""

import math

import pytest
import torch

from autolab.objectives import dpo_loss, preference_metrics, sequence_logps

# One pair: policy logps (-1, -3), reference (-2, -2): log-ratios +1 and -1, margin h = 2.
PC, PR, RC, RR = (torch.tensor([x]) for x in (-1.0, -3.0, -2.0, -2.0))


def loss(loss_type, **kw):
    return dpo_loss(PC, PR, RC, RR, loss_type=loss_type, **kw)[0].item()


def test_sigmoid_is_minus_log_sigmoid_of_beta_h():
    # beta h = 0.5 * 2 = 1 -> -log s(1) = log(1 + e^-1) = 0.3132617
    assert loss("sigmoid", beta=0.5) == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    assert loss("sigmoid", beta=0.5) == pytest.approx(0.3132617, abs=1e-6)


def test_cdpo_label_smoothing_mixes_the_flipped_label():
    # 0.9 * 0.3132617 + 0.1 * (-log s(-1) = 1.3132617) = 0.2819355 + 0.1313262 = 0.4132617
    assert loss("sigmoid", beta=0.5, label_smoothing=0.1) == pytest.approx(0.4132617, abs=1e-6)


def test_robust():
    # (0.9 * 0.3132617 - 0.1 * 1.3132617) / 0.8 = (0.2819355 - 0.1313262) / 0.8 = 0.1882617
    assert loss("robust", beta=0.5, label_smoothing=0.1) == pytest.approx(0.1882617, abs=1e-6)
    assert loss("robust", beta=0.5) == pytest.approx(loss("sigmoid", beta=0.5))  # e = 0: plain DPO


def test_hinge():
    assert loss("hinge", beta=0.25) == pytest.approx(0.5)  # max(0, 1 - 0.25 * 2)
    assert loss("hinge", beta=1.0) == 0.0


def test_ipo_uses_per_token_log_ratios():
    # chosen ratio +1 over 2 tokens -> 0.5; rejected -1 over 4 tokens -> -0.25; h' = 0.75
    # beta 0.5: (0.75 - 1) ^ 2 = 0.0625
    out = dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="ipo",
                   chosen_lengths=torch.tensor([2.0]), rejected_lengths=torch.tensor([4.0]))[0]
    assert out.item() == pytest.approx(0.0625)
    with pytest.raises(ValueError, match="lengths"):
        loss("ipo", beta=0.5)
    with pytest.raises(ValueError, match="unknown"):
        loss("kto")


def test_rewards_and_metrics():
    _, rc, rr = dpo_loss(PC, PR, RC, RR, beta=0.1)
    assert rc.item() == pytest.approx(0.1) and rr.item() == pytest.approx(-0.1)
    m = preference_metrics(rc, rr, PC, PR)
    assert m["rewards/margins"].item() == pytest.approx(0.2) and m["rewards/accuracies"].item() == 1.0
    assert m["logps/chosen"].item() == -1.0 and m["logps/rejected"].item() == -3.0


def test_reference_free_is_zero_reference():
    a = dpo_loss(PC, PR, torch.zeros(1), torch.zeros(1), beta=0.5)[0]
    assert a.item() == pytest.approx(math.log(1 + math.exp(-0.5 * 2)))  # h = -1 - (-3) = 2


def test_sequence_logps_scores_only_the_response():
    # vocab 2, logits favour token 1 with p = e/(1+e) everywhere
    logits = torch.tensor([[[0.0, 1.0]] * 4])
    ids = torch.tensor([[0, 0, 1, 0]])  # prompt: first two tokens; response: tokens 2 and 3
    mask = torch.tensor([[0, 0, 1, 1]])
    p1 = math.log(math.e / (1 + math.e))
    p0 = math.log(1 / (1 + math.e))
    assert sequence_logps(logits, ids, mask).item() == pytest.approx(p1 + p0, abs=1e-6)


def test_reward_loss_is_bradley_terry_with_margin_and_centring():
    from autolab.objectives import reward_loss, reward_metrics

    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.5, 1.0])
    # pair 1: d = 1.5; pair 2: d = -1 -> -log s(1.5) = log(1 + e^-1.5) = 0.2014133, -log s(-1) = 1.3132617
    assert reward_loss(chosen, rejected).tolist() == pytest.approx([0.2014133, 1.3132617], abs=1e-6)
    # margins 0.5 and -2: d - m = 1 and 1 -> 0.3132617 each
    assert reward_loss(chosen, rejected, torch.tensor([0.5, -2.0])).tolist() == pytest.approx([0.3132617] * 2, abs=1e-6)
    # + 0.01 (r_c + r_r)^2: 0.01 * 6.25 = 0.0625, 0.01 * 1 = 0.01
    centred = reward_loss(chosen, rejected, center_rewards_coefficient=0.01)
    assert centred.tolist() == pytest.approx([0.2639133, 1.3232617], abs=1e-6)
    m = {k: v.item() for k, v in reward_metrics(chosen, rejected).items()}
    assert m == pytest.approx({"accuracy": 0.5, "margin": 0.25, "min_reward": 0.0, "mean_reward": 0.875, "max_reward": 2.0})


def test_group_advantages_subtract_the_group_mean_and_scale_by_its_std():
    from autolab.objectives import group_advantages

    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])  # two groups of 4
    # group 1: mean 0.5, unbiased std sqrt(4 x 0.25 / 3) = 0.5773503 -> +-0.5 / 0.5774503 = +-0.8658758;
    # group 2: all equal -> 0 (the 1e-4 keeps it finite)
    expected = torch.tensor([1, -1, -1, 1, 0, 0, 0, 0]) * 0.8658758
    assert torch.allclose(group_advantages(rewards, 4, "group"), expected, atol=1e-6)
    assert torch.allclose(group_advantages(rewards, 4, "none"), torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    # batch: the group's mean, the batch's std: sqrt(5.5 / 7) = 0.8864053 -> 0.5 / 0.8865053 = 0.5640127
    expected = torch.tensor([1, -1, -1, 1, 0, 0, 0, 0]) * 0.5640127
    assert torch.allclose(group_advantages(rewards, 4, "batch"), expected, atol=1e-6)


def test_token_logps_and_entropy_at_a_temperature():
    from autolab.objectives import token_logps_and_entropy

    # logits (2, 0) at temperature 2 -> (1, 0): p = (0.7310586, 0.2689414)
    logps, entropy = token_logps_and_entropy(torch.tensor([[[2.0, 0.0]]]), torch.tensor([[0]]), temperature=2.0)
    assert logps.item() == pytest.approx(math.log(0.7310586), abs=1e-6)  # -0.3132617
    # -(0.7310586 ln 0.7310586 + 0.2689414 ln 0.2689414) = 0.2290162 + 0.3531865 = 0.5822027
    assert entropy.item() == pytest.approx(0.5822027, abs=1e-6)


def test_grpo_loss_clips_the_ratio_and_adds_the_kl():
    from autolab.objectives import grpo_loss

    # one sequence of two tokens; the first token's ratio e^0.5 = 1.6487213, the second's 1
    logps, old, mask = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -2.0]]), torch.ones(1, 2)
    up, m = grpo_loss(logps, old, None, torch.tensor([1.0]), mask, epsilon_low=0.2, epsilon_high=0.2)
    assert up.item() == pytest.approx(-(1.2 + 1.0) / 2)  # A > 0: the ratio is clipped at 1.2
    assert m["clip_ratio/high_mean"].item() == 0.5 and m["clip_ratio/low_mean"].item() == 0.0
    down, m = grpo_loss(logps, old, None, torch.tensor([-1.0]), mask, epsilon_low=0.2, epsilon_high=0.2)
    assert down.item() == pytest.approx((1.6487213 + 1.0) / 2, abs=1e-6)  # A < 0: min keeps the unclipped 1.65
    assert m["clip_ratio/region_mean"].item() == 0.0
    dr, _ = grpo_loss(logps, old, None, torch.tensor([1.0]), mask, loss_type="dr_grpo", max_completion_length=4)
    assert dr.item() == pytest.approx(-(1.2 + 1.0) / 4)  # the sum over tokens / (1 sequence x 4)
    # KL alone (A = 0, on-policy): reference (-1, -1): k3 per token 0 and e^1 - 1 - 1 = 0.7182818; mean 0.3591409
    kl_loss, m = grpo_loss(logps, None, torch.tensor([[-1.0, -1.0]]), torch.tensor([0.0]), mask, beta=0.5)
    assert m["kl"].item() == pytest.approx(0.3591409, abs=1e-6) and kl_loss.item() == pytest.approx(0.1795705, abs=1e-6)
    # bnpo: the mean over every token of the batch (a second sequence of one token, A = 2, ratio 1: -2)
    two = grpo_loss(torch.tensor([[-1.0, -2.0], [-1.0, 0.0]]), torch.tensor([[-1.5, -2.0], [-1.0, 0.0]]), None,
                    torch.tensor([1.0, 2.0]), torch.tensor([[1.0, 1.0], [1.0, 0.0]]), loss_type="bnpo")[0]
    assert two.item() == pytest.approx((-1.2 - 1.0 - 2.0) / 3)
