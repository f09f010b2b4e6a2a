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


def test_every_embedding_table_takes_the_embedding_rate_and_the_head_its_own():
    from omegaconf import OmegaConf

    from autolab.models import GPT, GPTConfig
    from autolab.optim import build_optimizers

    model = GPT(GPTConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, max_position_embeddings=16,
                          value_embeddings=True))
    cfg = OmegaConf.create(dict(name="muon", betas=[0.9, 0.95], eps=1e-8, weight_decay=0.1, embedding_lr_scale=300.0,
                                head_lr_scale=4.0, muon_lr_scale=20.0, muon_momentum=0.95))
    muon, adamw = build_optimizers(model, cfg, peak_lr=1e-3)
    rate = {id(p): g["lr_scale"] for g in adamw.param_groups for p in g["params"]}
    assert rate[id(model.wte.weight)] == rate[id(model.blocks[1].value_embedding.weight)] == 300.0
    assert rate[id(model.lm_head.weight)] == 4.0
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    assert id(model.blocks[1].value_embedding.weight) not in in_muon  # a table is no matrix for Muon
    assert id(model.blocks[1].value_gate.weight) in in_muon and id(model.blocks[0].qkv.weight) in in_muon
