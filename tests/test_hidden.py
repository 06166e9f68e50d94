"""The hidden-state pass: routing that must hold by construction, quantised and offloaded loading, GPU paths."""

from __future__ import annotations

import pytest
import torch
from conftest import load_moe
from safetensors.torch import load_file, save_file
from test_merge_mixtral import all_tensors

from moemerge.config.schema import ExpertConfig
from moemerge.forward.loading import LoadOptions
from moemerge.gates import GateContext, compute_routers
from moemerge.sources.folder import open_source

PROMPTS = ["def add(a, b): return a + b", "Once upon a time there was a dragon", "What is 12 times 7?"]
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _rewrite(folder, edit):
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def routable(tmp_path_factory, models):
    """A base whose attention adds nothing (o_proj = 0) and whose norms are 1, so each MoE block's router sees a
    positive multiple of hidden_states[l]; experts differ from the base only in the last layer's MLP, so the
    residual stream entering every layer is the same in the base and in the merge."""
    base = models.base("llama", num_hidden_layers=3)
    root = tmp_path_factory.mktemp("routable")

    def flatten(tensors):
        for name in tensors:
            if name.endswith("o_proj.weight"):
                tensors[name].zero_()
            if name.endswith("layernorm.weight"):
                tensors[name].fill_(1.0)

    import shutil

    shutil.copytree(base, root / "base")
    _rewrite(root / "base", flatten)
    experts = []
    for i in range(3):
        shutil.copytree(root / "base", root / f"e{i}")
        generator = torch.Generator().manual_seed(i)

        def last_mlp(tensors, generator=generator):
            for name in tensors:
                if name.startswith("model.layers.2.mlp."):
                    tensors[name] = torch.randn(tensors[name].shape, generator=generator) * 0.2

        _rewrite(root / f"e{i}", last_mlp)
        experts.append(root / f"e{i}")
    return root / "base", experts


def test_each_prompt_routes_to_its_own_expert(routable, write_config, cli, tmp_path):
    from transformers import AutoTokenizer

    base, experts = routable
    config = write_config({"base_model": str(base), "gate_mode": "hidden", "experts_per_token": 1, "experts": [
        {"source_model": str(e), "positive_prompts": [p]} for e, p in zip(experts, PROMPTS)]})  # fmt: skip
    code, _, err = cli(config, tmp_path / "out", "--quiet")
    assert code == 0, err
    model = load_moe(tmp_path / "out")
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    for e, prompt in enumerate(PROMPTS):
        ids = tokenizer("<s>" + prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            router_logits = model(ids, output_router_logits=True).router_logits
        picks = [layer[-1].argmax().item() for layer in router_logits]  # the prompt's last token, per layer
        assert picks == [e] * 3, (prompt, picks)


def _routers(base, load: LoadOptions, mode="hidden"):
    experts = [ExpertConfig(source_model="x", positive_prompts=[p, p + " again"]) for p in PROMPTS]
    experts[0] = ExpertConfig(source_model="x", positive_prompts=[PROMPTS[0]], negative_prompts=[PROMPTS[2]])
    source = open_source(str(base), base_dir=base.parent, wanted=lambda _: True, side_files=True)
    context = GateContext(
        source, experts, source.config["num_hidden_layers"], source.config["hidden_size"], 0, load=load
    )
    return torch.from_numpy(compute_routers(mode, context))


def _cosines(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def _realistic(models):
    """Real checkpoints' init scale (0.02): the residual stream dominates each layer's update. At the tiny models'
    usual 0.2 every layer amplifies the 4-bit rounding error and no quantised pass could stay close."""
    return models.base("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=3, initializer_range=0.02)


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_quantised_routers_close_to_float32(models, bits):
    pytest.importorskip("bitsandbytes")
    base = _realistic(models)
    exact = _routers(base, LoadOptions())
    quantised = _routers(base, LoadOptions(quantize=bits))
    assert _cosines(exact, quantised).min() >= 0.98


@pytest.mark.parametrize("mode", ["hidden", "hidden_avg"])
def test_disk_offload_gives_the_same_routers(models, mode, monkeypatch):
    base = models.base("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=3)
    exact = _routers(base, LoadOptions(), mode)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    placed = {}
    import transformers

    original = transformers.AutoModel.from_pretrained

    def spy(*args, **kwargs):
        model = original(*args, **kwargs)
        placed.update(getattr(model, "hf_device_map", {}))
        return model

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", spy)
    offloaded = _routers(base, LoadOptions(device="auto", max_memory={"cpu": 60_000}), mode)
    assert "disk" in placed.values(), placed  # the budget really forced layers onto disk
    torch.testing.assert_close(offloaded, exact, atol=1e-5, rtol=0)


@needs_gpu
@pytest.mark.parametrize("quantize", [None, "4bit", "8bit"])
def test_gpu_routers_close_to_cpu(models, quantize):
    base = _realistic(models)
    exact = _routers(base, LoadOptions())
    gpu = _routers(base, LoadOptions(device="cuda", quantize=quantize))
    assert _cosines(exact, gpu).min() >= 0.98


@needs_gpu
def test_merge_on_gpu_matches_cpu_merge(models, write_config, cli, tmp_path):
    base = models.base("llama")
    config = write_config({"base_model": str(base), "experts": [
        {"source_model": str(models.expert(base, i + 1)), "positive_prompts": [p]} for i, p in enumerate(PROMPTS)]})  # fmt: skip
    for device in ("cpu", "cuda"):
        code, _, err = cli(config, tmp_path / device, "--device", device, "--quiet")
        assert code == 0, err
    cpu, gpu = all_tensors(tmp_path / "cpu"), all_tensors(tmp_path / "cuda")
    for name, tensor in cpu.items():
        if name.endswith("gate.weight"):
            assert _cosines(tensor, gpu[name]).min() >= 0.99, name
        else:
            assert torch.equal(tensor, gpu[name]), name
