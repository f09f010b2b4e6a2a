"""The GPT as a Hugging Face model: checkpoint round trip through the Auto classes, generate."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import prepare
from autolab.checkpoint import save_checkpoint
from autolab.models import GPT, GPTConfig


def tiny_gpt(vocab: int = 8192) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, n_layer=2, n_head=2, n_embd=32, max_position_embeddings=64))


def test_checkpoint_loads_back_through_auto_classes(tmp_path, cache):
    model, tok = tiny_gpt(), prepare.Tokenizer.load()
    folder = save_checkpoint(model, tok, tmp_path / "checkpoint")
    assert (folder / "model.safetensors").exists() and not (tmp_path / "checkpoint.tmp").exists()
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert isinstance(loaded, GPT)
    x = torch.randint(0, 8192, (2, 16))
    assert torch.equal(model(input_ids=x).logits, loaded(input_ids=x).logits)

    hf_tok = AutoTokenizer.from_pretrained(folder)
    text = "def f(x):\n    return x  # café 🙂"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    assert hf_tok.bos_token_id == tok.bos_id
    assert prepare.Tokenizer.load(folder).encode(text) == tok.encode(text)


def trained_like_gpt(vocab: int = 100) -> GPT:
    """Every weight large and random: a fresh GPT's small residual updates leave its output mostly a
    function of the last token, and a generate that dropped the prefix could pass unseen."""
    model = tiny_gpt(vocab)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def test_generate_matches_greedy_decoding():
    model = trained_like_gpt()
    x = torch.randint(0, 100, (1, 5))
    out = model.generate(x, max_new_tokens=6, do_sample=False)
    seq = x
    for _ in range(6):
        seq = torch.cat([seq, model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


def test_a_left_padded_prompt_gives_what_it_gives_alone():
    model = trained_like_gpt()
    x = torch.randint(1, 100, (1, 7))
    alone = model(input_ids=x).logits
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), x], 1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 7, dtype=torch.long)], 1)
    logits = model(input_ids=padded, attention_mask=mask).logits
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits[:, 4:], alone, rtol=1e-4, atol=1e-4)  # rotary: relative positions only
    first = model.generate(x, max_new_tokens=5, do_sample=False)[:, 7:]
    assert torch.equal(model.generate(padded, attention_mask=mask, max_new_tokens=5, do_sample=False)[:, 11:], first)


def test_hf_labels_loss_matches_shifted_cross_entropy():
    model = tiny_gpt(vocab=100)
    x = torch.randint(0, 100, (2, 10))
    out = model(input_ids=x, labels=x)
    manual = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 100), x[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, manual)


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    model = tiny_gpt(vocab=100)
    x = torch.randint(0, 100, (2, 16))
    model(input_ids=x, labels=x).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    model(input_ids=x, labels=x).loss.backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(plain, model.parameters()))


def test_rotary_tables_are_the_rope_angles_and_survive_loading(tmp_path, cache):
    """Position p, pair i rotates by p * theta^(-2i/d); the tables are buffers rebuilt on loading."""
    import math

    model = tiny_gpt()  # head size 16: pairs i = 0..7, theta 10000
    cos, sin = model.rotary.cos, model.rotary.sin
    assert cos.shape == (64, 8) and cos[0].eq(1).all() and sin[0].eq(0).all()
    assert cos[3, 0].item() == torch.tensor(math.cos(3.0)).item() and sin[5, 0].item() == torch.tensor(math.sin(5.0)).item()
    assert sin[7, 7].item() == pytest.approx(math.sin(7 * 10000 ** (-14 / 16)), rel=1e-6)  # float32
    loaded = AutoModelForCausalLM.from_pretrained(save_checkpoint(model, prepare.Tokenizer.load(), tmp_path / "c"))
    assert torch.equal(loaded.rotary.cos, cos) and torch.equal(loaded.rotary.sin, sin)


def test_a_fresh_gpt_takes_the_init_it_states():
    """transformers initialises only modules with weights of their own, so what a Block wants for its
    layers is marked on them (`init_std`): the value gates must really start at zero (gate 1)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, n_layer=3, n_head=2, n_embd=64, max_position_embeddings=64,
                          value_embeddings=True))
    for block in model.blocks:
        for layer in (block.qkv, block.attn_out, block.mlp_in, block.mlp_out):
            assert 0.015 < layer.weight.std() < 0.025
    assert 0.9 < model.wte.weight.std() < 1.1
    ves = [i for i, b in enumerate(model.blocks) if b.value_embedding is not None]
    assert ves == [0, 2]  # every other layer, the last included
    for i in ves:
        assert 0.015 < model.blocks[i].value_embedding.weight.std() < 0.025
        assert not model.blocks[i].value_gate.weight.any()
    assert 0.015 < model.lm_head.weight.std() < 0.025
    small = GPT(GPTConfig(vocab_size=512, n_layer=1, n_head=2, n_embd=64, max_position_embeddings=64, head_init_std=1e-3))
    assert 0.8e-3 < small.lm_head.weight.std() < 1.2e-3 and 0.015 < small.blocks[0].qkv.weight.std() < 0.025
    assert not GPT(GPTConfig(vocab_size=512, n_layer=1, n_head=2, n_embd=64, head_init_std=0.0)).lm_head.weight.any()


def test_value_embeddings_and_soft_cap_train_and_load_back(tmp_path, cache):
    from autolab.models import flops_per_token

    cfg = dict(vocab_size=8192, n_layer=2, n_head=2, n_embd=32, max_position_embeddings=64)
    plain = GPT(GPTConfig(**cfg))
    model = GPT(GPTConfig(**cfg, value_embeddings=True, logit_softcap=2.0))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    x = torch.randint(0, 8192, (2, 16))
    out = model(input_ids=x, labels=x)
    assert out.logits.abs().max() < 2.0  # capped: without the cap these weights give logits far above 2
    out.loss.backward()
    block = model.blocks[1]
    assert block.value_embedding.weight.grad.abs().sum() > 0 and block.value_gate.weight.grad.abs().sum() > 0
    # a table lookup is no matmul: only the gate's weights add to the FLOPs
    assert flops_per_token(model, 16) - flops_per_token(plain, 16) == 6 * block.value_gate.weight.numel()

    folder = save_checkpoint(model, prepare.Tokenizer.load(), tmp_path / "checkpoint")
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert loaded.config.value_embeddings and loaded.config.logit_softcap == 2.0
    assert torch.equal(model(input_ids=x).logits, loaded(input_ids=x).logits)


def test_the_x0_skip_mixes_the_embedding_in_and_its_scalars_load_back(tmp_path, cache):
    cfg = dict(vocab_size=8192, n_layer=2, n_head=2, n_embd=32, max_position_embeddings=64)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**cfg, x0_skip=True))
    x = torch.randint(0, 8192, (2, 16))
    before = model(input_ids=x).logits
    with torch.no_grad():
        model.x0_scalars.copy_(torch.tensor([0.7, -0.3]))  # as if trained: no init value
        model.resid_scalars.copy_(torch.tensor([0.5, 1.5]))
    after = model(input_ids=x).logits
    assert not torch.allclose(before, after)  # the scalars are in the forward pass
    folder = save_checkpoint(model, prepare.Tokenizer.load(), tmp_path / "checkpoint")
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert loaded.config.x0_skip and loaded.x0_scalars.tolist() == pytest.approx([0.7, -0.3])
    assert torch.equal(after, loaded(input_ids=x).logits)  # loading keeps them, never re-initialises
