"""`mlp_input` / `mlp_input_avg` gates against the MLP input computed here another way: one prompt at a time (no
padding), read as the output of `post_attention_layernorm` rather than as the MLP's input."""

from __future__ import annotations

import pytest
import torch
from test_gates import PROMPTS, merge
from test_merge_mixtral import all_tensors
from transformers import AutoModelForCausalLM, AutoTokenizer


def _expected(base, mode: str) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    dense = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    norms = [layer.post_attention_layernorm for layer in dense.model.layers]
    seen: list[torch.Tensor] = []
    handles = [n.register_forward_hook(lambda m, args, out: seen.append(out[0])) for n in norms]

    def mean_input(prompts):
        rows = []
        for p in prompts:
            seen.clear()
            with torch.no_grad():
                dense(torch.tensor([tokenizer("<s>" + p, add_special_tokens=False)["input_ids"]]))
            rows.append(torch.stack([s[-1] if mode == "mlp_input" else s.mean(0) for s in seen]))
        return torch.stack(rows).mean(0)  # (layers, hidden)

    out = []
    for pos, neg in PROMPTS.values():
        row = mean_input(pos) - (mean_input(neg) if neg else 0)
        out.append(row / row.norm(dim=-1, keepdim=True))
    for handle in handles:
        handle.remove()
    return torch.stack(out, dim=1)  # (layers, experts, hidden)


@pytest.mark.parametrize("mode", ["mlp_input", "mlp_input_avg"])
def test_mlp_input_gates_match_an_independent_computation(models, write_config, cli, tmp_path, mode):
    base, routers = merge(models, write_config, cli, tmp_path, mode)
    torch.testing.assert_close(routers, _expected(base, mode), atol=1e-5, rtol=0)


def test_mlp_input_is_not_the_residual_stream(models, write_config, cli, tmp_path):
    """The MLP input (after attention and its norm) is another vector than `hidden`'s stream entering the layer."""
    _, ours = merge(models, write_config, cli, tmp_path / "a", "mlp_input")
    _, hidden = merge(models, write_config, cli, tmp_path / "b", "hidden")
    cosine = torch.nn.functional.cosine_similarity(ours, hidden, dim=-1)  # (layers, experts)
    assert cosine.max() < 0.99


def test_mlp_input_gates_on_a_qwen2_base(models, write_config, cli, tmp_path):
    base = models.base("qwen2")
    experts = [{"source_model": str(models.expert(base, i + 1)), "positive_prompts": pos}
               for i, (pos, _) in enumerate(PROMPTS.values())]  # fmt: skip
    config = write_config({"base_model": str(base), "gate_mode": "mlp_input_avg", "experts": experts})
    code, _, err = cli(config, tmp_path / "out", "--quiet")
    assert code == 0, err
    routers = all_tensors(tmp_path / "out")["model.layers.1.mlp.gate.weight"]
    assert routers.shape == (3, 32) and torch.allclose(routers.norm(dim=-1), torch.ones(3))
