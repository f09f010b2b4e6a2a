"""The logit lens (nostalgebraist, "interpreting GPT: the logit lens", 2020): read each layer's residual
stream out through the model's own final norm and unembedding, to see at which layer a prediction forms.

    python -m autolab.lens init_from=outputs/.../checkpoint [domain=prose] [text="def main():"]

Per readout (the embeddings, then every layer; the last one is the model itself), this prints and
writes into the run's output dir:
- bits per byte on the domain's fixed validation text, by `prepare.evaluate_bpb` (its definition:
  every token but the first of a document scored, divided by the text's UTF-8 bytes);
- the top-k next-token guesses at chosen positions of `text`;
- `lens.json`, `lens.md` and `lens.png` (bpb per layer; a layers x positions heatmap of the
  probability each layer gives the token that really comes next, each cell labelled with its guess).

Works on our checkpoints and on any Hugging Face decoder-only causal LM (autolab.hooks.decoder).
Python: `readouts(model, ids)` gives every readout's logits in one forward pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Optional

import torch
import torch.nn as nn
from omegaconf import MISSING

import prepare
from autolab.cli import device, hydra_tool, load_model, output_dir
from autolab.errors import UserError
from autolab.hooks import decoder, record


@dataclass
class LensConf:
    init_from: str = MISSING
    domain: str = MISSING
    max_bytes: int = MISSING
    text: Optional[str] = None
    positions: Any = MISSING  # an int (the text's first N positions) or a list of token positions
    top_k: int = MISSING
    batch_size: int = MISSING
    device: str = MISSING


@torch.no_grad()
def readouts(model: nn.Module, input_ids: torch.Tensor) -> tuple[list[str], list[torch.Tensor], torch.Tensor]:
    """(names, logits of each readout, the model's own logits): the embeddings and every layer's output
    through the final norm and the unembedding, from one forward pass."""
    dec = decoder(model)
    names = [dec.embed, *dec.layers]
    with record(model, names) as hidden:
        final = model(input_ids=input_ids).logits
    return names, [dec.logits(hidden[n]) for n in names], final


class Readout(nn.Module):
    """The model read out after one named module, as a model: what `prepare.evaluate_bpb` scores."""

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        self.model, self.name, self.dec = model, name, decoder(model)

    def forward(self, input_ids: torch.Tensor, **kwargs) -> SimpleNamespace:
        with record(self.model, [self.name]) as hidden:
            self.model(input_ids=input_ids)
        return SimpleNamespace(logits=self.dec.logits(hidden[self.name]))


def layer_bpb(model, tokenizer, texts: list[str], seq_len: int, batch_size: int, dev) -> dict[str, float]:
    """Bits per byte of every readout on `texts`, by prepare.evaluate_bpb (one pass per readout)."""
    from tqdm.auto import tqdm

    dec = decoder(model)
    names = [dec.embed, *dec.layers]
    return {name: prepare.evaluate_bpb(Readout(model, name), tokenizer, texts, seq_len=seq_len,
                                       batch_size=batch_size, device=dev)
            for name in tqdm(names, desc="logit lens bpb", unit="layer", leave=False)}


def guesses(model, tokenizer, text: str, positions, top_k: int, dev) -> dict:
    """At each chosen position of `text`: the token there, the one that really comes next, and each
    readout's top-k guesses with their probabilities, plus the probability it gives the real one."""
    from autolab.data.preference import _encoder

    encode, _, bos = _encoder(tokenizer)
    ids = [bos] + encode(text)
    if len(ids) < 2:
        raise UserError("text= has no tokens to look at: give a longer text")
    limit = len(ids) - 1  # the last token has no next one to compare with
    chosen = list(range(min(int(positions), limit))) if isinstance(positions, int) else [int(p) for p in positions]
    if not chosen or not all(0 <= p < limit for p in chosen):
        raise UserError(f"positions={positions}: give positions between 0 and {limit - 1} (the text has {len(ids)} tokens with BOS)")
    names, logits, _ = readouts(model, torch.tensor([ids], device=dev))
    show = lambda i: tokenizer.decode([i])  # noqa: E731
    table = {"tokens": [show(ids[p]) for p in chosen], "next": [show(ids[p + 1]) for p in chosen],
             "positions": chosen, "layers": names, "top": [], "p_next": []}
    for layer_logits in logits:
        probs = layer_logits[0, chosen].float().softmax(-1)
        p, idx = probs.topk(top_k, dim=-1)
        table["top"].append([[(show(i), round(q, 4)) for i, q in zip(ii.tolist(), pp.tolist())] for ii, pp in zip(idx, p)])
        table["p_next"].append([probs[j, ids[pos + 1]].item() for j, pos in enumerate(chosen)])
    return table


def markdown(bpb: dict[str, float], table: dict) -> str:
    """The bpb per layer, and each layer's top guess (its probability) at each position: "token → next"."""
    cell = lambda s: repr(s)[1:-1].replace("|", "\\|")[:12]  # noqa: E731
    lines = ["| layer | val bpb | " + " | ".join(f"{cell(t)} → {cell(n)}" for t, n in zip(table["tokens"], table["next"])) + " |",
             "|" + " --- |" * (2 + len(table["positions"]))]
    for name, top in zip(table["layers"], table["top"]):
        guesses_ = " | ".join(f"{cell(t[0][0])} ({t[0][1]:.2f})" for t in top)
        lines.append(f"| {name} | {bpb[name]:.4f} | {guesses_} |")
    return "\n".join(lines)


def plot(bpb: dict[str, float], table: dict, path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(bpb)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.45 * len(names) + 3), dpi=110,
                                      gridspec_kw={"width_ratios": [1, 2.2]})
    left.plot(list(bpb.values()), range(len(names)), "o-", color="tab:blue")
    left.set_yticks(range(len(names)), names)
    left.invert_yaxis()
    left.set_xlabel("val bits per byte (lower is better)")
    left.set_title("logit lens: bpb by layer")
    left.grid(alpha=0.3)
    heat = torch.tensor(table["p_next"]).numpy()
    image = right.imshow(heat, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(image, ax=right, fraction=0.03, label="P(next token)")
    right.set_yticks(range(len(names)), names)
    right.set_xticks(range(len(table["positions"])), [repr(n)[1:-1][:8] for n in table["next"]], rotation=60, fontsize=8)
    right.set_xlabel("the token that comes next")
    right.set_title("P(next token) by layer; label: that layer's top guess")
    for i, top in enumerate(table["top"]):
        for j, guess in enumerate(top):
            right.text(j, i, repr(guess[0][0])[1:-1][:6], ha="center", va="center", fontsize=7,
                       color="white" if heat[i, j] < 0.5 else "black")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def lens(cfg) -> dict:
    dev = device(cfg.device)
    model, tokenizer = load_model(cfg.init_from, "init_from", dev)
    decoder(model)  # a model the lens cannot read is refused before any work
    texts = prepare.val_documents(cfg.domain, cfg.max_bytes)
    seq_len = min(prepare.MAX_SEQ_LEN, getattr(model.config, "max_position_embeddings", None) or prepare.MAX_SEQ_LEN)
    text = cfg.text if cfg.text is not None else texts[0][:400]
    table = guesses(model, tokenizer, text, cfg.positions, cfg.top_k, dev)
    bpb = layer_bpb(model, tokenizer, texts, seq_len, cfg.batch_size, dev)
    out = output_dir()
    (out / "lens.json").write_text(json.dumps({"init_from": str(cfg.init_from), "domain": cfg.domain,
                                               "bpb": bpb, **table}, indent=1) + "\n")
    md = markdown(bpb, table)
    (out / "lens.md").write_text(md + "\n")
    plot(bpb, table, out / "lens.png", f"{cfg.init_from} on {cfg.domain}")
    print(md)
    print(f"---\nfinal_bpb: {list(bpb.values())[-1]:.6f}\nlayers: {len(bpb) - 1}\noutput_dir: {out}")
    return bpb


if __name__ == "__main__":
    hydra_tool("lens", lens, LensConf)
