"""Gate formulas against computations written independently here (not the code under test)."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors import safe_open
from test_merge_mixtral import all_tensors
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = {
    "code": (["def add(a, b): return a + b", "import numpy as np"], []),
    "story": (["Once upon a time there was a dragon who lived in a castle."], ["What is 12 times 7?"]),
    "math": (["Solve for x: 2x + 3 = 7.", "What is 12 times 7? And then, what is the integral of x squared?"], []),
}


def merge(models, write_config, cli, tmp_path, mode, **extra):
    base = models.base("llama")
    experts = [
        {"source_model": str(models.expert(base, i + 1)), "positive_prompts": pos, **({"negative_prompts": neg} if neg else {})}
        for i, (pos, neg) in enumerate(PROMPTS.values())
    ]  # fmt: skip
    config = write_config({"base_model": str(base), "gate_mode": mode, "experts": experts, **extra})
    code, _, err = cli(config, tmp_path / "out", "--quiet")
    assert code == 0, err
    out = all_tensors(tmp_path / "out")
    return base, torch.stack([out[f"model.layers.{l}.block_sparse_moe.gate.weight"] for l in range(2)])


def unit(v):
    return v / v.norm()


def test_cheap_embed_matches_independent_computation(models, write_config, cli, tmp_path):
    base, routers = merge(models, write_config, cli, tmp_path, "cheap_embed")
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    with safe_open(str(base / "model.safetensors"), "pt") as f:
        embed = f.get_tensor("model.embed_tokens.weight")

    def summed(prompts):
        ids = [tokenizer("<s>" + p, add_special_tokens=False)["input_ids"] for p in prompts]
        return sum(embed[i].sum(0) for i in ids)

    for e, (pos, neg) in enumerate(PROMPTS.values()):
        expected = unit(summed(pos)) if not neg else unit(unit(summed(pos)) - unit(summed(neg)))
        for layer in range(2):
            torch.testing.assert_close(routers[layer, e], expected, atol=1e-6, rtol=0)


def test_random_gate_is_seeded_randn(models, write_config, cli, tmp_path):
    _, routers = merge(models, write_config, cli, tmp_path, "random", seed=1234)
    torch.manual_seed(1234)
    torch.testing.assert_close(routers, torch.randn(2, 3, 32), atol=0, rtol=0)


def test_uniform_random_gate_bounds_and_seed(models, write_config, cli, tmp_path):
    _, routers = merge(models, write_config, cli, tmp_path, "uniform_random", seed=7)
    bound = 1 / math.sqrt(32)
    assert routers.abs().max() <= bound and routers.abs().max() > 0.9 * bound
    import numpy as np

    expected = np.random.default_rng(7).uniform(-bound, bound, (2, 3, 32)).astype(np.float32)
    torch.testing.assert_close(routers, torch.from_numpy(expected), atol=0, rtol=0)


@pytest.mark.parametrize("mode", ["hidden", "hidden_avg"])
def test_hidden_gates_match_unbatched_forward(models, write_config, cli, tmp_path, mode):
    base, routers = merge(models, write_config, cli, tmp_path, mode)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    dense = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()

    def mean_state(prompts):  # one prompt at a time: no padding at all
        rows = []
        for p in prompts:
            ids = torch.tensor([tokenizer("<s>" + p, add_special_tokens=False)["input_ids"]])
            with torch.no_grad():
                states = dense(ids, output_hidden_states=True).hidden_states
            rows.append(torch.stack([s[0, -1] if mode == "hidden" else s[0].mean(0) for s in states[:2]]))
        return torch.stack(rows).mean(0)  # (layers, hidden)

    for e, (pos, neg) in enumerate(PROMPTS.values()):
        row = mean_state(pos) - (mean_state(neg) if neg else 0)
        expected = row / row.norm(dim=-1, keepdim=True)
        torch.testing.assert_close(routers[:, e], expected, atol=1e-5, rtol=0)


def test_degenerate_routers_are_named():
    import logging

    from moemerge.gates import warn_degenerate

    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("moemerge.gates")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)  # earlier CLI runs may have set the package to --quiet

    routers = torch.zeros(3, 3, 8)
    routers[:, :, :3] = torch.eye(3)  # orthonormal rows: condition number 1
    routers[1, 2] = routers[1, 1] + 1e-3 * torch.randn(8)  # layer 1: two experts almost the same
    try:
        assert warn_degenerate(routers) == [1]
        assert warn_degenerate(routers[[0, 2]]) == []
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    assert len(records) == 1 and "layer(s) 1 " in records[0] and "prompts are too similar" in records[0]


def test_similar_prompts_warn_during_a_merge(models, write_config, cli, tmp_path):
    base = models.base("llama")
    long = "the quick brown fox jumps over the lazy dog " * 5
    experts = [{"source_model": str(models.expert(base, i + 1)), "positive_prompts": [long + end]}
               for i, end in enumerate(["cat", "dog", "fox"])]  # fmt: skip
    config = write_config({"base_model": str(base), "gate_mode": "cheap_embed", "experts": experts})
    code, _, err = cli(config, tmp_path / "o")
    assert code == 0 and "near-degenerate in all 2 layers" in err
