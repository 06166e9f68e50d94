"""A tiny task whose right routing is known, for the `moemerge tune` tests: two experts fine-tuned on disjoint token
sets (words a0..a19 and b0..b19, each set with its own next-word rule), merged top-1 with small random routers."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from moemerge import tiny
from moemerge.cli import main

WORDS = [f"{d}{i}" for d in "ab" for i in range(20)]
RULE = {"a": 3, "b": 7}  # next word i -> (RULE * i + 1) % 20, nine times in ten


def make_tokenizer(folder: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "<pad>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")  # fmt: skip
    fast.save_pretrained(str(folder))
    return fast


def text(domain: str, words: int, seed: int) -> str:
    rng = random.Random(seed)
    i, out = rng.randrange(20), []
    for _ in range(words):
        out.append(f"{domain}{i}")
        i = (RULE[domain] * i + 1) % 20 if rng.random() < 0.9 else rng.randrange(20)
    return " ".join(out)


def fine_tune(base: Path, folder: Path, domain: str, tokenizer, *, steps: int = 60) -> None:
    """The base with only its MLP weights trained on `domain`'s text."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    trained = [p for n, p in model.named_parameters() if ".mlp." in n]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(trained, lr=2e-2)
    ids = torch.tensor(tokenizer(text(domain, 20000, 1), add_special_tokens=False)["input_ids"])
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(len(ids) - 32, (8,), generator=generator)
        batch = torch.stack([ids[s : s + 32] for s in starts])
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(str(folder))
    make_tokenizer(folder)


def build(root: Path, **config) -> tuple[Path, dict[str, Path]]:
    """The merged MoE (in several shards) and its training files {a: ..., b: ...}."""
    base = tiny.make_model(root / "base", tokenizer=False, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    tokenizer = make_tokenizer(base)
    experts = []
    for domain in "ab":
        fine_tune(base, root / f"expert_{domain}", domain, tokenizer)
        experts.append({"source_model": str(root / f"expert_{domain}")})
    data = {domain: root / f"{domain}.txt" for domain in "ab"}
    for domain, path in data.items():
        path.write_text(text(domain, 4000, 2))
    spec = {"base_model": str(base), "gate_mode": "uniform_random", "experts_per_token": 1, "dtype": "float32",
            "experts": experts, **config}  # fmt: skip
    (root / "config.yaml").write_text(yaml.safe_dump(spec))
    try:
        main([str(root / "config.yaml"), str(root / "moe"), "--out-shard-size", "100k", "--quiet"])
    except SystemExit as exc:
        assert exc.code == 0
    return root / "moe", data


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`moemerge ARGS` in a process of its own (for the kill and launcher tests)."""
    done = subprocess.run([sys.executable, "-m", "moemerge", *args], capture_output=True, text=True, check=False)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def copy(moe: Path, folder: Path) -> Path:
    shutil.copytree(moe, folder)
    return folder


def state(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def routers(folder: Path, prefix: str = "model.layers.") -> dict:
    """Every router-like tensor (`...gate.weight`, not the experts' gate_proj) of a checkpoint."""
    from safetensors import safe_open

    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix) and k.endswith("gate.weight")
                        and ".experts." not in k})  # fmt: skip
    return out
