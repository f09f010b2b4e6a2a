"""StackedMuon against torch.optim.Muon: the same update, with same-shaped matrices batched."""

import torch

from autolab.optim import StackedMuon


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
