"""Checkpoints that leave autolab: loaded with remote code where autolab is not installed, the KV cache.

The clean environment is a child `python -I -S` whose sys.path holds the standard library and a folder of
links to torch, transformers and the packages they need at run time, nothing else: no autolab, no
prepare.py, no site-packages. Building it costs links, not installs; the child's imports take seconds.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

import prepare
from autolab.checkpoint import save_checkpoint
from autolab.models import GPT, GPTConfig


def _closure(roots: tuple[str, ...]) -> dict:
    """Every installed distribution `roots` need at run time (no extras), by normalised name."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    found, todo = {}, list(roots)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in found:
            continue
        try:
            found[name] = dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # an optional platform package that is not installed here
        for line in dist.requires or []:
            req = Requirement(line)
            if not req.marker or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def clean_site(folder: Path, roots: tuple[str, ...] = ("torch", "transformers")) -> Path:
    """A folder of links to `roots`, what they need, and their metadata (transformers checks versions)."""
    folder.mkdir(parents=True, exist_ok=True)
    for dist in _closure(roots).values():
        base = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            if (base / top).exists() and not (folder / top).exists() and not top.endswith(".pth"):
                (folder / top).symlink_to(base / top)
    return folder


CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
try:
    import autolab  # noqa: F401
    sys.exit("autolab is importable in the clean environment")
except ImportError:
    pass
try:
    import prepare  # noqa: F401
    sys.exit("prepare.py is importable in the clean environment")
except ImportError:
    pass
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

out = {}
for name, folder in json.loads(sys.argv[2]).items():
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)  # no remote code: transformers asks (stdin closed: no) and reads tokenizer.json
    want = load_file(folder + "/../expected.safetensors")
    with torch.no_grad():
        logits = model(input_ids=want["ids"]).logits
        greedy = model.generate(want["ids"][:1, :8], max_new_tokens=8, do_sample=False, pad_token_id=0)
    out[name] = {"module": type(model).__module__, "diff": (logits - want["logits"]).abs().max().item(),
                 "greedy": greedy[0, 8:].tolist(), "ids": tok("def f(x):\n    return x", add_special_tokens=False)["input_ids"]}
    # the same folder as the start of a reward model (auto_map names both heads): its backbone, a fresh score
    scorer = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True, num_labels=1,
                                                                pad_token_id=0, dtype=torch.float32).eval()
    with torch.no_grad():
        scores = scorer(input_ids=want["ids"]).logits
    out[name]["scorer"] = [type(scorer).__module__, type(scorer).__name__, list(scores.shape), bool(scores.isfinite().all())]
print("\nRESULT " + json.dumps(out))
"""


def all_options_gpt() -> GPT:
    """Value embeddings, soft cap and x0 skip on, every weight large and random."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=8192, n_layer=3, n_head=2, n_embd=32, max_position_embeddings=64,
                          value_embeddings=True, logit_softcap=15.0, x0_skip=True))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def test_a_checkpoint_loads_where_autolab_is_not_installed(tmp_path, cache, trained_run):
    """torch + transformers only: the trained checkpoint and one with every model option load with
    trust_remote_code, give autolab's logits to 1e-5 (fp32, CPU), generate, and tokenize as autolab does."""
    import shutil

    folders = {"trained": tmp_path / "trained" / "checkpoint", "options": tmp_path / "options" / "checkpoint"}
    shutil.copytree(trained_run / "checkpoint", folders["trained"])
    save_checkpoint(all_options_gpt(), prepare.Tokenizer.load(), folders["options"])
    tok, expect = prepare.Tokenizer.load(), {}
    for name, folder in folders.items():
        assert (folder / "gpt.py").exists() and json.loads((folder / "config.json").read_text())["auto_map"] == {
            "AutoConfig": "gpt.GPTConfig", "AutoModelForCausalLM": "gpt.GPT",
            "AutoModelForSequenceClassification": "gpt.GPTForSequenceClassification"}
        model = AutoModelForCausalLM.from_pretrained(folder).eval()  # autolab: no remote code
        assert type(model) is GPT
        ids = torch.randint(0, 8192, (2, 16), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            logits = model(input_ids=ids).logits
            greedy = model.generate(ids[:1, :8], max_new_tokens=8, do_sample=False, pad_token_id=0)
        save_file({"ids": ids, "logits": logits.contiguous()}, str(folder.parent / "expected.safetensors"))
        expect[name] = greedy[0, 8:].tolist()
    site = clean_site(tmp_path / "site")
    env = {"PATH": os.environ.get("PATH", ""), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "TRANSFORMERS_VERBOSITY": "error"}
    r = subprocess.run([sys.executable, "-I", "-S", "-c", CHILD, str(site), json.dumps({k: str(v) for k, v in folders.items()})],
                       env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.rsplit("RESULT ", 1)[1])
    for name in folders:
        assert got[name]["module"].startswith("transformers_modules.")  # the folder's own code, not autolab's
        assert got[name]["diff"] <= 1e-5, (name, got[name]["diff"])
        assert got[name]["greedy"] == expect[name]
        assert got[name]["ids"] == tok.encode("def f(x):\n    return x")
        module, cls, shape, finite = got[name]["scorer"]
        assert module.startswith("transformers_modules.") and cls == "GPTForSequenceClassification"
        assert shape == [2, 1] and finite


def test_checkpoints_without_code_inside_still_load_in_autolab(tmp_path, cache):
    """A folder written before checkpoints carried their code: no gpt.py, no auto_map."""
    model = all_options_gpt()
    folder = save_checkpoint(model, prepare.Tokenizer.load(), tmp_path / "checkpoint")
    (folder / "gpt.py").unlink()
    config = json.loads((folder / "config.json").read_text())
    del config["auto_map"]
    (folder / "config.json").write_text(json.dumps(config))
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert type(loaded) is GPT
    x = torch.randint(0, 8192, (2, 16))
    assert torch.equal(model(input_ids=x).logits, loaded(input_ids=x).logits)


def test_the_code_in_a_checkpoint_imports_only_torch_and_transformers():
    import ast

    source = Path(sys.modules[GPT.__module__].__file__)
    roots = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    assert roots <= {"__future__", "inspect", "torch", "transformers"}, roots


def test_greedy_generation_is_the_same_with_and_without_the_kv_cache():
    """Random weights, every option on, a left-padded batch of three prompts of different lengths."""
    model = all_options_gpt()
    lengths, width = (9, 5, 2), 9
    ids = torch.randint(1, 8192, (3, width), generator=torch.Generator().manual_seed(2))
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, : width - n] = 0
        mask[row, width - n :] = 1
    kw = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    widths = []
    hook = model.wte.register_forward_hook(lambda module, args, out: widths.append(args[0].size(1)))
    cached = model.generate(ids, use_cache=True, **kw)
    hook.remove()
    assert widths == [width] + [1] * 11  # the prompt once, then one token's work per new token
    assert torch.equal(cached, model.generate(ids, use_cache=False, **kw))
    for row, n in enumerate(lengths):  # each prompt alone, unpadded: the same continuation
        alone = model.generate(ids[row : row + 1, width - n :], max_new_tokens=12, do_sample=False, pad_token_id=0)
        assert torch.equal(alone[0, n:], cached[row, width:])


def test_a_cached_forward_gives_the_logits_of_the_whole_sequence():
    """Prefill 6 tokens, then 3 tokens at once, then one at a time: the full forward's logits to 1e-5."""
    model = all_options_gpt()
    x = torch.randint(0, 8192, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(input_ids=x).logits
        out = model(input_ids=x[:, :6], use_cache=True)
        pieces, cache = [out.logits], out.cache
        for a, b in ((6, 9), (9, 10), (10, 11), (11, 12)):
            out = model(input_ids=x[:, a:b], cache=cache, use_cache=True)
            pieces.append(out.logits)
    assert cache.get_seq_length() == 12
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=0, atol=1e-5)


def test_eager_attention_gives_what_sdpa_gives():
    model = all_options_gpt()
    x = torch.randint(0, 8192, (2, 10))
    mask = torch.ones_like(x)
    mask[0, :4] = 0
    with torch.no_grad():
        sdpa = model(input_ids=x, attention_mask=mask).logits
        model.set_attn_implementation("eager")
        eager = model(input_ids=x, attention_mask=mask).logits
    torch.testing.assert_close(eager[0, 4:], sdpa[0, 4:], rtol=0, atol=1e-4)
    torch.testing.assert_close(eager[1], sdpa[1], rtol=0, atol=1e-4)


def test_lm_eval_scores_a_trained_checkpoint_as_autolab_does(tmp_path, cache, trained_run):
    """lm-eval 0.4's own `hf` model class (trust_remote_code) on the offline preference task: its
    accuracies and per-answer log-likelihoods equal ones computed here with autolab's model and tokenizer."""
    from omegaconf import OmegaConf

    from autolab import lmeval

    n = 24
    cfg = OmegaConf.create({"init_from": str(trained_run / "checkpoint"), "tasks": lmeval.PREFERENCE_TASK,
                            "include": None, "limit": n, "num_fewshot": None, "batch_size": 8, "dtype": "float32",
                            "trust_remote_code": True, "device": "cpu", "seed": 0})
    res = lmeval.evaluate(cfg, tmp_path)
    got = lmeval.metrics(res)
    samples = [json.loads(line) for line in (tmp_path / f"samples_{lmeval.PREFERENCE_TASK}.jsonl").read_text().splitlines()]
    assert (tmp_path / "results.json").exists() and len(samples) == n

    model = AutoModelForCausalLM.from_pretrained(trained_run / "checkpoint").eval()
    tok = prepare.Tokenizer.load(trained_run / "checkpoint")

    def loglik(context: str, answer: str) -> float:
        # lm-eval's split: the context's trailing whitespace (the prompt's newline) moves to the answer, and
        # the answer's tokens are the whole text's after as many as the context has on its own
        stripped = context.rstrip()
        ctx, whole = tok.encode(stripped), tok.encode(stripped + context[len(stripped):] + answer)
        seq = ctx + whole[len(ctx) :]
        with torch.no_grad():
            logps = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0, :-1].float(), -1)
        return sum(logps[i - 1, seq[i]].item() for i in range(len(ctx), len(seq)))

    acc = acc_norm = 0
    for row, sample in zip(prepare.load_preferences("val")[:n], samples):
        chosen, rejected = loglik(row["prompt"], row["chosen"]), loglik(row["prompt"], row["rejected"])
        assert [r[0][0] for r in sample["resps"]] == pytest.approx([chosen, rejected], abs=1e-3)
        acc += chosen >= rejected
        acc_norm += chosen / len(row["chosen"]) >= rejected / len(row["rejected"])
    assert got[f"{lmeval.PREFERENCE_TASK}/acc"] == acc / n
    assert got[f"{lmeval.PREFERENCE_TASK}/acc_norm"] == acc_norm / n
    block = lmeval.summary(res, cfg, tmp_path)
    assert f"{lmeval.PREFERENCE_TASK}/acc_norm: {acc_norm / n:.6f}" in block.splitlines()


def test_lm_eval_config_and_its_bad_input(tmp_path):
    """conf/lmeval.yaml holds the schema's keys; an unknown task or include folder is one UserError line."""
    from dataclasses import fields

    from omegaconf import OmegaConf

    from autolab import lmeval
    from autolab.errors import UserError

    conf = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "lmeval.yaml")
    assert {f.name for f in fields(lmeval.LmEvalConf)} == set(conf) - {"defaults", "hydra"}
    cfg = OmegaConf.merge(conf, {"init_from": str(tmp_path / "nowhere"), "tasks": "no_such_task_here"})
    with pytest.raises(UserError, match="tasks=no_such_task_here: not an lm-eval task"):
        lmeval.evaluate(cfg, tmp_path)
    cfg.include = str(tmp_path / "missing")
    with pytest.raises(UserError, match="no such folder of task YAML files"):
        lmeval.evaluate(cfg, tmp_path)
