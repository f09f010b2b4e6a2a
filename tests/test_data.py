"""Packed rows and the replay mixture: exact shares, determinism, resumable positions."""

import pytest
import torch

from autolab.data import PackedRows, ReplayMixture
from autolab.errors import UserError

NEW = torch.arange(0, 4000, dtype=torch.int32)  # new-domain tokens are < 10000 ...
OLD = torch.arange(10000, 12000, dtype=torch.int32)  # ... replay tokens are >= 10000


def batches(dataset, n):
    it = iter(dataset)
    return [next(it) for _ in range(n)]


def mixture(ratio, seed=0, batch=16):
    return ReplayMixture(PackedRows(NEW, 9, batch, seed), PackedRows(OLD, 9, 1, seed + 1), ratio)


def test_packed_rows_are_windows_in_a_deterministic_order():
    first = batches(PackedRows(NEW, 9, 4, seed=3), 300)  # > 2 epochs of 111 batches
    again = batches(PackedRows(NEW, 9, 4, seed=3), 300)
    assert all(torch.equal(a["tokens"], b["tokens"]) for a, b in zip(first, again))
    row = first[0]["tokens"][0]
    assert torch.equal(row, torch.arange(int(row[0]), int(row[0]) + 10, dtype=torch.int32))
    other = batches(PackedRows(NEW, 9, 4, seed=4), 1)[0]["tokens"]
    assert not torch.equal(first[0]["tokens"], other)
    epoch = torch.cat([b["tokens"][:, 0] for b in first[:111]])  # every row once per epoch
    assert sorted(epoch.tolist()) == list(range(0, 444 * 9, 9))


@pytest.mark.parametrize("ratio", [0.05, 0.3, 0.5, 0.0])
def test_replay_share_per_step_is_within_one_row_and_exact_over_the_run(ratio):
    steps, B = 400, 16
    out = batches(mixture(ratio, batch=B), steps)
    for b in out:
        tokens = b["tokens"]
        assert tokens.shape == (B, 10)  # replay replaces rows: the tokens per step stay the same
        replayed = int((tokens >= 10000).all(dim=1).sum())
        assert replayed == b["replay_rows"]  # the reported count is what the batch holds
        assert abs(replayed / B - ratio) <= 1 / B  # within one packed row at every step
        assert int((tokens < 10000).all(dim=1).sum()) == B - replayed  # rows are never mixed
    total = sum(b["replay_rows"] for b in out)
    assert total == round(ratio * B * steps)  # exact share in tokens over the run


def test_mixture_is_deterministic_given_the_seed_and_resumes_from_its_state():
    run = batches(mixture(0.3, seed=7), 120)
    again = batches(mixture(0.3, seed=7), 120)
    assert all(torch.equal(a["tokens"], b["tokens"]) for a, b in zip(run, again))
    assert not all(torch.equal(a["tokens"], b["tokens"]) for a, b in zip(run, batches(mixture(0.3, seed=8), 120)))
    resumed = mixture(0.3, seed=7)
    resumed.load_state_dict(run[49]["state"])  # the state travels with the batch it follows
    rest = batches(resumed, 70)
    assert all(torch.equal(a["tokens"], b["tokens"]) for a, b in zip(run[50:], rest))


def test_ratio_outside_zero_one_and_too_little_data_are_clear_errors():
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(UserError, match=r"outside \[0, 1\)"):
            mixture(bad)
    with pytest.raises(UserError, match="fewer than one batch"):
        PackedRows(torch.arange(50, dtype=torch.int32), 16, 8)
