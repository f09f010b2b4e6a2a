"""StackedMuon against torch.optim.Muon: the same update, with same-shaped matrices batched; NorMuon,
Polar Express, momentum warmup and cautious weight decay on top; which parameter takes which rate."""

import pytest
import torch
from omegaconf import OmegaConf

from autolab.config import OptimConf
from autolab.optim import COEFFICIENTS, OLD_DEFAULTS, StackedMuon, build_optimizers, newton_schulz


def muon_conf(embedding_lr_scale: float = 1.0, head_lr_scale: float = 1.0, scalar_lr_scale: float = 1.0):
    """The muon optim group as the schema types it, with the given AdamW rates."""
    return OmegaConf.structured(OptimConf(
        name="muon", betas=[0.9, 0.95], eps=1e-8, weight_decay=0.1, muon_lr_scale=20.0, muon_momentum=0.95,
        embedding_lr_scale=embedding_lr_scale, head_lr_scale=head_lr_scale, scalar_lr_scale=scalar_lr_scale))


def test_stacked_muon_takes_torch_muons_steps():
    torch.manual_seed(0)
    shapes = [(48, 16), (48, 16), (16, 48), (32, 32), (64, 16)]  # tall, wide, square; two of one shape
    ours = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    before = [p.detach().clone() for p in ours]
    a = StackedMuon(ours, lr=0.02, momentum=0.95, weight_decay=0.1)
    b = torch.optim.Muon(theirs, lr=0.02, momentum=0.95, weight_decay=0.1)
    for _ in range(3):  # momentum buffers carry over between steps
        grads = [torch.randn(*s) for s in shapes]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        a.step()
        b.step()
    for p, q, p0 in zip(ours, theirs, before):
        moved = (q - p0).abs().max()
        assert moved > 0.02  # three steps of lr 0.02 on orthogonalised updates
        assert torch.equal(p, q)  # the same bf16 products, batched: bit-identical on the CPU


def test_every_embedding_table_takes_the_embedding_rate_and_the_head_its_own():
    from autolab.models import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, max_position_embeddings=16,
                          value_embeddings=True))
    muon, adamw = build_optimizers(model, muon_conf(embedding_lr_scale=300.0, head_lr_scale=4.0), peak_lr=1e-3)
    rate = {id(p): g["lr_scale"] for g in adamw.param_groups for p in g["params"]}
    assert rate[id(model.wte.weight)] == rate[id(model.blocks[1].value_embedding.weight)] == 300.0
    assert rate[id(model.lm_head.weight)] == 4.0
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    assert id(model.blocks[1].value_embedding.weight) not in in_muon  # a table is no matrix for Muon
    assert id(model.blocks[1].value_gate.weight) in in_muon and id(model.blocks[0].qkv.weight) in in_muon


def test_normuon_evens_each_neurons_step_and_keeps_muons_size():
    """NorMuon divides each row (each column of a wide matrix) of Muon's update by its running RMS and
    scales back: after one step every row moves as far as every other, and the whole by as much as Muon."""
    torch.manual_seed(0)
    shapes = [(48, 16), (48, 16), (16, 48)]
    start = [torch.randn(*s) for s in shapes]
    grads = [torch.randn(*s) * torch.linspace(0.1, 10, s[0])[:, None] for s in shapes]  # rows of very unequal size
    moves = {}
    for beta2 in (0.0, 0.95):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt = StackedMuon(params, lr=0.02, momentum=0.95, weight_decay=0.0, beta2=beta2)
        opt.step()
        moves[beta2] = [p.detach() - p0 for p, p0 in zip(params, start)]
        assert ("variance" in opt.state[params[0]]) == bool(beta2)
    for muon, normuon, shape in zip(moves[0.0], moves[0.95], shapes):
        per_neuron = normuon.norm(dim=1 if shape[0] >= shape[1] else 0)
        assert per_neuron.max() / per_neuron.min() < 1.05  # even (bf16 products)
        plain = muon.norm(dim=1 if shape[0] >= shape[1] else 0)
        assert plain.max() / plain.min() > 1.2  # Muon alone leaves them uneven: the test can tell
        assert abs(normuon.norm() / muon.norm() - 1) < 0.02


def test_the_x0_skips_scalars_take_the_scalar_rate_and_learn():
    from autolab.models import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, max_position_embeddings=16, x0_skip=True))
    assert model.resid_scalars.tolist() == [1.0, 1.0] and model.x0_scalars.tolist() == pytest.approx([0.1, 0.1])
    muon, adamw = build_optimizers(model, muon_conf(scalar_lr_scale=40.0), peak_lr=1e-3)
    rate = {id(p): g["lr_scale"] for g in adamw.param_groups for p in g["params"]}
    assert rate[id(model.x0_scalars)] == rate[id(model.resid_scalars)] == 40.0
    x = torch.randint(0, 64, (4, 16))
    for _ in range(3):
        for opt in (muon, adamw):
            for g in opt.param_groups:
                g["lr"] = 1e-3 * g["lr_scale"]
        model(input_ids=x, labels=x).loss.backward()
        muon.step(), adamw.step(), muon.zero_grad(), adamw.zero_grad()
    assert (model.x0_scalars - 0.1).abs().min() > 0.05  # Adam's steps of ~0.04 each: the scalars moved


def test_normuon_resumes_exactly_from_its_state_dict(tmp_path):
    """The running mean squares are optimiser state: saved and loaded (weights_only), the next step
    is the one an uninterrupted run takes."""
    torch.manual_seed(0)
    shapes = [(24, 8), (8, 24)]
    grads = [[torch.randn(*s) for s in shapes] for _ in range(3)]

    def run(params, opt, steps):
        for g in steps:
            for p, gi in zip(params, g):
                p.grad = gi.clone()
            opt.step()

    straight = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in straight]
    run(straight, StackedMuon(straight, lr=0.02, beta2=0.95), grads)
    first = StackedMuon(resumed, lr=0.02, beta2=0.95)
    run(resumed, first, grads[:2])
    torch.save(first.state_dict(), tmp_path / "optim.pt")
    second = StackedMuon(resumed, lr=0.02, beta2=0.95)
    second.load_state_dict(torch.load(tmp_path / "optim.pt", weights_only=True))
    run(resumed, second, grads[2:])
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed))
    assert second.state[resumed[0]]["variance"].shape == (24, 1) and second.state[resumed[1]]["variance"].shape == (1, 24)


def test_a_snapshot_from_before_normuon_resumes_as_plain_muon():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(8, 4))]
    params[0].grad = torch.randn(8, 4)
    old = StackedMuon(params, lr=0.02).state_dict()
    for key in OLD_DEFAULTS:  # what StackedMuon saved before it had NorMuon and the options after it
        del old["param_groups"][0][key]
    resumed = StackedMuon(params, lr=0.02, beta2=0.95, coefficients="polar_express", momentum_start=0.5,
                          momentum_warmup=10, cautious_wd=True)
    resumed.load_state_dict(old)
    resumed.step()
    assert resumed.param_groups[0]["beta2"] == 0.0 and "variance" not in resumed.state[params[0]]
    assert resumed.param_groups[0]["coefficients"] == "jordan" and not resumed.param_groups[0]["cautious_wd"]
    assert StackedMuon.momentum_at(resumed.param_groups[0]) == 0.95


def test_polar_express_orthogonalises_closer_than_the_fixed_quintic():
    """Five steps of either polynomial push every singular value toward 1; Polar Express's tuned
    steps end closer on average and at worst (in bf16, as the optimiser runs)."""
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(4, 64, 64))
    v, _ = torch.linalg.qr(torch.randn(4, 32, 32))
    for decades in (1, 3):  # singular values spread over one and over three decades
        g = u[:, :, :32] @ torch.diag_embed(torch.logspace(-decades, 0, 32).expand(4, 32)) @ v.mT  # tall
        off = {}
        for name in COEFFICIENTS:
            off[name] = (torch.linalg.svdvals(newton_schulz(g, 5, coefficients=name).float()) - 1).abs()
            assert newton_schulz(g.mT, 5, coefficients=name).shape == (4, 32, 64)  # wide stacks too
        assert off["polar_express"].mean() < 0.65 * off["jordan"].mean(), decades
        assert off["polar_express"].max() < 0.7 * off["jordan"].max(), decades


def test_momentum_warms_up_and_resumes_mid_warmup(tmp_path):
    """From momentum_start to momentum over momentum_warmup steps; the step count is saved with the
    optimiser, so a run resumed in the middle of the warmup takes the uninterrupted run's steps."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(8, 4))
    opt = StackedMuon([p], lr=0.02, momentum=0.95, momentum_start=0.85, momentum_warmup=4, weight_decay=0.0)
    seen = []
    for _ in range(6):
        seen.append(StackedMuon.momentum_at(opt.param_groups[0]))
        p.grad = torch.ones(8, 4)
        opt.step()
    assert seen == pytest.approx([0.85, 0.875, 0.9, 0.925, 0.95, 0.95])
    assert torch.allclose(opt.state[p]["momentum_buffer"][0, 0], torch.tensor(1 - 0.85 * 0.875 * 0.9 * 0.925 * 0.95 * 0.95))

    grads = [torch.randn(8, 4) for _ in range(4)]
    straight, resumed = (torch.nn.Parameter(torch.ones(8, 4)) for _ in range(2))
    kw = dict(lr=0.02, momentum_start=0.5, momentum_warmup=3, weight_decay=0.0)
    whole = StackedMuon([straight], **kw)
    for g in grads:
        straight.grad = g.clone()
        whole.step()
    first = StackedMuon([resumed], **kw)
    for g in grads[:2]:
        resumed.grad = g.clone()
        first.step()
    torch.save(first.state_dict(), tmp_path / "optim.pt")
    second = StackedMuon([resumed], **kw)
    second.load_state_dict(torch.load(tmp_path / "optim.pt", weights_only=True))
    for g in grads[2:]:
        resumed.grad = g.clone()
        second.step()
    assert torch.equal(straight, resumed)


def test_cautious_weight_decay_decays_only_where_the_update_agrees():
    """Against plain decay on the same gradients: the weights left undecayed are exactly those the
    update would grow, and both kinds occur."""
    torch.manual_seed(0)
    start = torch.randn(32, 16)
    grad = torch.randn(32, 16)
    lr, wd = 0.02, 0.5
    moved = {}
    for cautious in (False, True):
        p = torch.nn.Parameter(start.clone())
        p.grad = grad.clone()
        StackedMuon([p], lr=lr, momentum=0.0, weight_decay=wd, cautious_wd=cautious).step()
        moved[cautious] = p.detach()
    update = (moved[False] - start * (1 - lr * wd)) / -lr  # Muon's step (sqrt(32/16) scale included)
    spared = (moved[True] - moved[False]) / (lr * wd * start)  # 1 where not decayed, 0 where decayed
    assert torch.allclose(spared, (update * start < 0).float(), atol=1e-3)
    assert 0.2 < spared.mean() < 0.8
