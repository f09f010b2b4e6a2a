"""The autolab GPT: a small decoder-only transformer as a Hugging Face `PreTrainedModel`.

RMSNorm (Zhang & Sennrich 2019) before each sublayer and on queries/keys (QK-norm, Dehghani et al.
2023), rotary position embeddings (Su et al. 2021), causal attention through transformers' attention
interface (`sdpa` by default; `eager`, flash-attention and serving backends plug in there), a ReLU² MLP
(So et al. 2021, "Primer"), untied input and output embeddings. Optional, as in karpathy/autoresearch:
value embeddings (ResFormer, Zhou et al. 2024) on every other layer, the last included: a token's own
embedding added to its attention values through a gate per head, capacity that costs memory and no
matmul; a tanh soft cap on the logits (Gemma 2); and an x0 skip (modded-nanogpt): each block's input
is a_i * x + b_i * x0, with x0 the normed token embedding and a_i, b_i learned scalars (1 and 0.1 at
the start).

Two heads on one backbone: `GPT` (the language model) and `GPTForSequenceClassification` (a score read
at the last non-pad token: the reward model), whose weights share their names, so either loads a
checkpoint of the other (the head it lacks starts fresh).

This file imports only torch and transformers: `save_pretrained` copies it beside the weights and names
both heads in config.json's `auto_map`, so a checkpoint loads anywhere with
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` (or
`AutoModelForSequenceClassification`); autolab itself registers the classes (`autolab.models`) and loads
its folders without remote code.
`generate` keeps keys and values in transformers' cache (`use_cache`, a `DynamicCache`): each new token
costs one token's forward pass. Training rows are packed documents: attention is causal only. An
`attention_mask` with zeros (left padding, as batched `generate` makes) also hides the padded keys;
rotary attention depends only on relative positions, so a left-padded prompt gives what it gives alone.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import CausalLMOutputWithPast, SequenceClassifierOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


class GPTConfig(PretrainedConfig):
    model_type = "autolab_gpt"
    _auto_class = "AutoConfig"  # save_pretrained copies this file beside the weights and names it in auto_map
    attribute_map = {"num_hidden_layers": "n_layer", "num_attention_heads": "n_head", "hidden_size": "n_embd"}

    def __init__(
        self,
        vocab_size: int = 8192,
        n_layer: int = 8,
        n_head: int = 8,
        n_embd: int = 512,
        max_position_embeddings: int = 2048,
        rope_theta: float = 10000.0,
        value_embeddings: bool = False,
        logit_softcap: float = 0.0,
        x0_skip: bool = False,
        head_init_std: float = 0.02,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        if n_embd % n_head or (n_embd // n_head) % 2:
            raise ValueError(f"n_embd={n_embd} must split into {n_head} heads of even size")
        self.vocab_size = vocab_size
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_embd = n_embd
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.value_embeddings = value_embeddings
        self.logit_softcap = logit_softcap  # 0: off
        self.x0_skip = x0_skip
        self.head_init_std = head_init_std  # the output head's N(0, std) at the start; 0: zeros
        self.pad_token_id = pad_token_id  # GPTForSequenceClassification reads each sequence's last token before it
        super().__init__(**kwargs)


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def soft_cap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(logits / cap) in float32 (Gemma 2's soft cap); cap 0: the logits as they are."""
    return cap * torch.tanh(logits.float() / cap) if cap else logits


class Rotary(nn.Module):
    """cos and sin of the rotary angles of every position, computed once into buffers that are not
    saved (transformers re-creates them through `_init_weights` on loading). Computing them inside
    the compiled step let inductor fuse the transcendentals into every q and k element of every
    layer, forward and backward: 27% of the default model's step on an H100 (benchmarks/profile_step.py)."""

    def __init__(self, head_dim: int, max_len: int, theta: float):
        super().__init__()
        self.head_dim, self.max_len, self.theta = head_dim, max_len, theta
        self.register_buffer("cos", torch.empty(max_len, head_dim // 2), persistent=False)
        self.register_buffer("sin", torch.empty(max_len, head_dim // 2), persistent=False)
        self.reset()

    @torch.no_grad()
    def reset(self) -> None:
        device = self.cos.device
        inv_freq = self.theta ** (-torch.arange(0, self.head_dim, 2, device=device).float() / self.head_dim)
        angles = torch.outer(torch.arange(self.max_len, device=device).float(), inv_freq)
        self.cos.copy_(angles.cos())
        self.sin.copy_(angles.sin())

    def tables(self, T: int, past: int, position_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) for T new tokens after `past` cached ones: [T, D/2], or [B, 1, T, D/2] by `position_ids`."""
        if position_ids is not None:
            return self.cos[position_ids].unsqueeze(1), self.sin[position_ids].unsqueeze(1)
        if past + T > self.max_len:
            raise ValueError(f"sequence of {past + T} tokens > max_position_embeddings={self.max_len}")
        return self.cos[past : past + T], self.sin[past : past + T]


class RMSNorm(nn.Module):
    """The final norm as a module without weights, so hooks and the logit lens can find it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x1, x2) of each head by position-dependent angles; x [B, H, T, D]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def eager_attention(module: nn.Module, query, key, value, attention_mask, scaling: float, dropout: float = 0.0, **kwargs):
    """Attention written out (`attn_implementation="eager"`): softmax(q k^T * scaling + mask) v, [B, T, H, D]."""
    scores = (query @ key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return (weights @ value).transpose(1, 2).contiguous(), weights


GATE_CHANNELS = 32  # the value-embedding gate reads this many channels of the normed input


class Block(nn.Module):
    is_causal = True  # read by transformers' attention functions

    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        d = cfg.n_embd
        self.config, self.layer_idx = cfg, layer
        self.n_head = cfg.n_head
        self.scaling = (d // cfg.n_head) ** -0.5
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.mlp_in = nn.Linear(d, 4 * d, bias=False)
        self.mlp_out = nn.Linear(4 * d, d, bias=False)
        self.value_embedding = self.value_gate = None
        if cfg.value_embeddings and layer % 2 == (cfg.n_layer - 1) % 2:
            self.value_embedding = nn.Embedding(cfg.vocab_size, d)
            self.value_embedding.init_std = 0.02  # small beside the values at the start
            self.value_gate = nn.Linear(min(GATE_CHANNELS, d), cfg.n_head, bias=False)
            self.value_gate.init_std = 0.0  # gates start at 1

    def forward(self, x: torch.Tensor, ids: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None, cache: Cache | None = None, **kwargs) -> torch.Tensor:
        B, T, C = x.shape
        h = rms_norm(x)
        q, k, v = self.qkv(h).view(B, T, 3, self.n_head, C // self.n_head).unbind(2)
        if self.value_embedding is not None:  # v + gate * ve, the gate in (0, 2) per head, 1 at the start
            gate = 2 * torch.sigmoid(self.value_gate(h[..., : self.value_gate.in_features]))
            v = v + gate.unsqueeze(-1) * self.value_embedding(ids).view_as(v)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
        q, k = rotary(rms_norm(q), cos, sin), rotary(rms_norm(k), cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        impl = self.config._attn_implementation
        if impl == "sdpa" and mask is None and cache is None:  # training (packed rows): the kernel call the GPU
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)  # figures were measured with
        else:
            attention = eager_attention if impl in (None, "eager") else ALL_ATTENTION_FUNCTIONS[impl]
            y, _ = attention(self, q, k, v, mask, scaling=self.scaling, dropout=0.0, **kwargs)  # [B, T, H, D]
        x = x + self.attn_out(y.reshape(B, T, C))
        return x + self.mlp_out(F.relu(self.mlp_in(rms_norm(x))).square())


# transformers 5.x names the cache `cache` (its output field too); 4.x named it `past_key_values`
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
_MASK_TAKES_CACHE = "cache" in inspect.signature(create_causal_mask).parameters


_HERE = __name__.rsplit(".", 1)[-1]  # this file's module name, as `auto_map` names it ("gpt")


class GPTPreTrainedModel(PreTrainedModel):
    """What both heads share: the embedding, the blocks and the final norm (the backbone, whose weights keep
    the same names under either head, so a causal-LM checkpoint loads into the classifier as it is)."""

    config_class = GPTConfig
    base_model_prefix = "gpt"
    _no_split_modules = ["Block"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    supports_gradient_checkpointing = True  # gradient_checkpointing_enable() recomputes each block

    def _backbone(self, config: GPTConfig) -> None:
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = RMSNorm()
        self.rotary = Rotary(config.n_embd // config.n_head, config.max_position_embeddings, config.rope_theta)
        self.resid_scalars = self.x0_scalars = None
        if config.x0_skip:  # 1-D: the optimiser runs them with AdamW at optim.scalar_lr_scale; set in _init_weights
            self.resid_scalars = nn.Parameter(torch.empty(config.n_layer))
            self.x0_scalars = nn.Parameter(torch.empty(config.n_layer))
        self.gradient_checkpointing = False

    def save_pretrained(self, *args, **kwargs):
        # both heads in config.json's auto_map, so with trust_remote_code any of our folders loads as
        # either one (a supervised checkpoint as the start of a reward model, as TRL's RewardTrainer loads it)
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}),
                                "AutoModelForCausalLM": f"{_HERE}.GPT",
                                "AutoModelForSequenceClassification": f"{_HERE}.GPTForSequenceClassification"}
        return super().save_pretrained(*args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        # Linears N(0, 0.02), the input embedding N(0, 1); a layer's own `init_std` wins (Block sets it:
        # transformers calls this on modules with weights of their own only, never on a Block). The
        # residual projections stay N(0, 0.02): zeroing them (each block the identity at the start)
        # measured worse: the CPU demo's val_bpb 2.209 against 2.177 and 2.142 (fresh-clone CI runs), the
        # H100's same-text bpb 0.519 against 0.517 (docs/gpu-results.md).
        if isinstance(module, (nn.Embedding, nn.Linear)):
            std = getattr(module, "init_std", 1.0 if isinstance(module, nn.Embedding) else 0.02)
            if std:
                nn.init.normal_(module.weight, std=std)
            else:
                nn.init.zeros_(module.weight)
        if isinstance(module, Rotary):
            module.reset()
        if isinstance(module, GPTPreTrainedModel) and module.x0_scalars is not None:
            with torch.no_grad():
                module.resid_scalars.fill_(1.0)
                module.x0_scalars.fill_(0.1)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def _mask(self, x: torch.Tensor, attention_mask: torch.Tensor | None, past: int, cache, position_ids):
        """None where causal attention alone is right (training: packed rows, no padding, no cache; or one new
        token without padding); otherwise transformers' mask for the attention implementation in use."""
        T = x.size(1)
        if attention_mask is not None and attention_mask.dim() == 4:
            return attention_mask
        padded = attention_mask is not None and not bool(attention_mask.all())
        if not padded and (past == 0 or T == 1):
            return None
        if _MASK_TAKES_CACHE:
            return create_causal_mask(config=self.config, inputs_embeds=x, attention_mask=attention_mask,
                                      cache=cache, position_ids=position_ids)
        return create_causal_mask(config=self.config, input_embeds=x, attention_mask=attention_mask,  # transformers 4.x
                                  cache_position=torch.arange(past, past + T, device=x.device),
                                  past_key_values=cache, position_ids=position_ids)

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None, cache: Cache | None = None, **kwargs) -> torch.Tensor:
        """The final normed hidden states [B, T, C], what the output head reads (a fused
        head-and-loss kernel takes these and the head's weight instead of the logits)."""
        T = input_ids.size(1)
        past = cache.get_seq_length() if cache is not None else 0
        cos, sin = self.rotary.tables(T, past, position_ids)
        x = x0 = self.wte(input_ids)
        mask = self._mask(x, attention_mask, past, cache, position_ids)
        if self.x0_scalars is not None:
            x = x0 = rms_norm(x0)
        for i, block in enumerate(self.blocks):
            if self.x0_scalars is not None:
                x = self.resid_scalars[i] * x + self.x0_scalars[i] * x0
            if self.gradient_checkpointing and self.training:  # activations recomputed in backward
                x = self._gradient_checkpointing_func(block.__call__, x, input_ids, cos, sin, mask)
            else:
                x = block(x, input_ids, cos, sin, mask, cache, **kwargs)
        return self.norm(x)


class GPT(GPTPreTrainedModel, GenerationMixin):
    _auto_class = "AutoModelForCausalLM"  # as GPTConfig's: transformers' custom-model convention

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self._backbone(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.init_std = config.head_init_std
        self.post_init()


    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Cache | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits for every position (the last `logits_to_keep` only, if > 0); with `labels` (HF
        convention: labels = input_ids, -100 ignored), the mean next-token loss; with `use_cache`, the
        keys and values of these tokens appended to `cache` (a new `DynamicCache` if none)."""
        cache = cache if cache is not None else past_key_values
        kwargs.pop("return_dict", None)  # generate's; the rest goes on to the attention function (serving backends' metadata)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        x = self.hidden(input_ids, attention_mask, position_ids=position_ids, cache=cache, **kwargs)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = soft_cap(self.lm_head(x), self.config.logit_softcap)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1))
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache if use_cache else None})


class GPTForSequenceClassification(GPTPreTrainedModel):
    """The backbone and a linear `score` head (no bias) read at each sequence's last token that is not
    `config.pad_token_id`, as transformers' LlamaForSequenceClassification does (left or right padding);
    with `num_labels=1` it is a reward model. A causal-LM checkpoint loads into it as it is: its
    `lm_head` is left out and `score` starts at N(0, 0.02)."""

    _auto_class = "AutoModelForSequenceClassification"
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self._backbone(config)
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        """Scores [B, num_labels] of the last non-pad token of each sequence; with `labels`, transformers'
        loss for the config's problem type (num_labels=1: mean squared error)."""
        kwargs.pop("return_dict", None)
        x = self.hidden(input_ids, attention_mask, position_ids=position_ids, **kwargs)
        B, pad = input_ids.size(0), self.config.pad_token_id
        if pad is None and B != 1:
            raise ValueError("Cannot handle batch sizes > 1 if no padding token is defined.")
        if pad is None:
            last = torch.full((B,), input_ids.size(1) - 1, device=x.device)
        else:  # the rightmost token that is not padding
            positions = torch.arange(input_ids.size(1), device=x.device, dtype=torch.int32)
            last = (positions * (input_ids != pad).to(x.device, torch.int32)).argmax(-1)
        logits = self.score(x[torch.arange(B, device=x.device), last])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, pooled_logits=logits, config=self.config)
        return SequenceClassifierOutputWithPast(loss=loss, logits=logits)
