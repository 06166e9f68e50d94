"""LoRA experts (`BASE+ADAPTER`): the written experts equal peft's own merge_and_unload(), attention comes from the
base bit for bit, a zero adapter gives back the base, and bad adapters are refused with one line before any work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
import yaml
from conftest import load_moe, logits
from hubstub import COMMIT, HubStub
from safetensors import safe_open
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from moemerge.merge import stream

peft = pytest.importorskip("peft")

IDS = [1, 17, 42, 99, 5, 250, 7, 64, 33, 120, 8, 2]
MLP = ("gate_proj", "up_proj", "down_proj")
hf_logging.disable_progress_bar()  # building adapters here must not print into the CLI's captured stderr


def all_tensors(folder):
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def make_adapter(base, folder, *, seed=0, zero=False, targets=(*MLP, "q_proj", "v_proj"), edit=None, **lora):
    """A peft LoRA adapter on `base`, saved as peft saves it; B random (non-zero) unless `zero`. `edit` changes
    adapter_config.json afterwards."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    config = peft.LoraConfig(target_modules=list(targets), init_lora_weights=zero, **{"r": 4, "lora_alpha": 8, **lora})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft.get_peft_model(model, config).save_pretrained(str(folder))
    if edit:
        file = folder / "adapter_config.json"
        file.write_text(json.dumps({**json.loads(file.read_text()), **edit}))
    return folder


def peft_merged(base, adapter) -> dict[str, torch.Tensor]:
    """What peft itself makes of the adapter: merge_and_unload() on the same model."""
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = peft.PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return {k: v.detach() for k, v in merged.state_dict().items()}


def merge(write_config, cli, out, base, experts, *args):
    config = write_config({"base_model": str(base), "gate_mode": "random",
                           "experts": [{"source_model": e} for e in experts]})  # fmt: skip
    code, _, err = cli(config, out, "--quiet", *args)
    assert code == 0, err
    return all_tensors(out)


CASES = {
    "plain": {},
    "rslora": {"use_rslora": True, "lora_alpha": 16},
    "fan_in_fan_out": {"edit": {"fan_in_fan_out": True}},  # peft turns it off for nn.Linear: so must we
    "gate only": {"targets": ("gate_proj", "q_proj")},  # up and down come from the model side unchanged
    "patterns": {"rank_pattern": {"layers.1.mlp.down_proj": 2, "up_proj": 6},
                 "alpha_pattern": {"gate_proj": 3, "model.layers.0.mlp.down_proj": 5}},
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_experts_equal_peft_merge(models, write_config, cli, tmp_path, monkeypatch, case):
    base = models.base("llama")
    adapter = make_adapter(base, tmp_path / "adapter", **CASES[case])
    monkeypatch.setattr(stream, "CHUNK_BYTES", 1024)  # many row chunks per MLP tensor (64 x 32 float32 = 8 KB)
    out = merge(write_config, cli, tmp_path / "out", base, [f"{base}+{adapter}", str(models.expert(base, 1))])
    want, src = peft_merged(base, adapter), all_tensors(base)
    for layer in range(2):
        mlp, expert = f"model.layers.{layer}.mlp", f"model.layers.{layer}.block_sparse_moe.experts.0"
        for proj, w in (("gate_proj", "w1"), ("down_proj", "w2"), ("up_proj", "w3")):
            targeted = proj in CASES[case].get("targets", MLP)
            assert torch.equal(want[f"{mlp}.{proj}.weight"], src[f"{mlp}.{proj}.weight"]) != targeted  # a real delta
            assert torch.equal(out[f"{expert}.{w}.weight"], want[f"{mlp}.{proj}.weight"])
    for name, tensor in src.items():  # the adapter also changed q_proj and v_proj: the base's are used
        if ".mlp." not in name:
            assert torch.equal(out[name], tensor), name
    if case == "patterns":
        assert torch.equal(out["model.layers.1.block_sparse_moe.experts.1.w1.weight"],
                           all_tensors(models.expert(base, 1))["model.layers.1.mlp.gate_proj.weight"])  # fmt: skip


def test_phi3_fused_gate_up(models, write_config, cli, tmp_path):
    base = models.base("phi3")
    adapter = make_adapter(base, tmp_path / "adapter", targets=("gate_up_proj", "down_proj", "qkv_proj"))
    out = merge(write_config, cli, tmp_path / "out", base, [f"{base}+{adapter}", str(models.expert(base, 1))])
    want, size = peft_merged(base, adapter), 64
    for layer in range(2):
        fused, expert = want[f"model.layers.{layer}.mlp.gate_up_proj.weight"], f"model.layers.{layer}.block_sparse_moe"
        assert torch.equal(out[f"{expert}.experts.0.w1.weight"], fused[:size])
        assert torch.equal(out[f"{expert}.experts.0.w3.weight"], fused[size:])
        down = want[f"model.layers.{layer}.mlp.down_proj.weight"]
        assert torch.equal(out[f"{expert}.experts.0.w2.weight"], down)


def test_zero_adapter_moe_equals_base(models, write_config, cli, tmp_path):
    base = models.base("llama")
    adapters = [make_adapter(base, tmp_path / f"zero{i}", seed=i, zero=True) for i in range(2)]
    merge(write_config, cli, tmp_path / "out", base, [f"{base}+{a}" for a in adapters])
    moe = load_moe(tmp_path / "out")
    dense = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    torch.testing.assert_close(logits(moe, IDS), logits(dense, IDS), atol=1e-5, rtol=0)


def test_records_both_references_and_warns(models, write_config, cli, tmp_path):
    base = models.base("llama")
    adapter = make_adapter(base, tmp_path / "adapter", edit={"base_model_name_or_path": "someone/other-model"})
    config = write_config({"base_model": str(base), "gate_mode": "random",
                           "experts": [{"source_model": f"{base}+{adapter}"}, {"source_model": str(base)}]})  # fmt: skip
    code, _, err = cli(config, tmp_path / "out")
    assert code == 0, err
    assert "ignored" in err and "self_attn.q_proj, self_attn.v_proj" in err  # one line names the unused deltas
    assert "someone/other-model" in err  # trained on another base: a warning, not a refusal
    provenance = yaml.safe_load("\n".join(line[2:] for line in (tmp_path / "out" / "moemerge.yml").read_text()
                                          .split("# Provenance\n")[1].splitlines()))  # fmt: skip
    lora = next(s for s in provenance["sources"] if "lora_on" in s)
    assert lora["model"] == str(adapter) and lora["lora_on"] == str(base) and lora["ranks"] == [4]
    assert lora["targets"] == ["down_proj", "gate_proj", "up_proj"]
    assert [s["model"] for s in provenance["sources"]].count(str(base)) == 1
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"`{adapter}` on `{base}`" in card and "rank 4" in card


def test_plan_shows_adapter_experts(models, write_config, cli, tmp_path):
    base = models.base("llama")
    adapter = make_adapter(base, tmp_path / "adapter", rank_pattern={"down_proj": 2})
    config = write_config({"base_model": str(base), "gate_mode": "random",
                           "experts": [{"source_model": f"{base}+{adapter}"}, {"source_model": str(base)}]})  # fmt: skip
    code, out, err = cli("plan", config)
    assert code == 0, err
    assert f"LoRA adapter {adapter} (rank 2-4; down_proj, gate_proj, up_proj), 7.68 KB more to read" in out
    code, out, err = cli("plan", config, "--json")
    assert code == 0, err
    lora = json.loads(out)["experts"][0]["adapter"]
    # per layer: gate and up (rank 4: A 4x32, B 64x4) and down (rank 2: A 2x64, B 32x2), float32, two layers
    assert lora["read_bytes"] == 2 * 4 * (2 * (4 * 32 + 64 * 4) + (2 * 64 + 32 * 2)) == 7680
    assert lora["ranks"] == [2, 4] and lora["ignored"] == ["self_attn.q_proj", "self_attn.v_proj"]


def _bad(models, tmp_path, case):
    base = models.base("llama")
    folder = tmp_path / "bad"
    match case:
        case "missing adapter_config.json":
            make_adapter(base, folder)
            (folder / "adapter_config.json").unlink()
        case "DoRA":
            make_adapter(base, folder, edit={"use_dora": True})
        case "LoHa":
            make_adapter(base, folder, edit={"peft_type": "LOHA"})
        case "PiSSA":
            make_adapter(base, folder, edit={"init_lora_weights": "pissa"})
        case "rank mismatch":
            make_adapter(base, folder, edit={"r": 8})
        case "another model":
            make_adapter(models.base("llama", intermediate_size=48), folder)
        case "no MLP target":
            make_adapter(base, folder, targets=("q_proj", "v_proj"))
        case "another family":
            make_adapter(models.base("phi3"), folder, targets=("gate_up_proj",))
    return base, folder


BAD = {
    "missing adapter_config.json": "no adapter_config.json",
    "DoRA": "DoRA (use_dora) is not supported",
    "LoHa": "adapter type 'LOHA' is not supported",
    "PiSSA": "init_lora_weights 'pissa' changes the base weights too",
    "rank mismatch": "adapter_config.json gives rank 8, its weights have rank 4",
    "another model": "the adapter was made for another model",
    "no MLP target": "it changes no MLP weight (it changes self_attn.q_proj, self_attn.v_proj)",
    "another family": "which the model has no weight for",
}


@pytest.mark.parametrize("case", BAD)
def test_bad_adapters_one_line_each(models, write_config, cli, tmp_path, capsys, case):
    base, adapter = _bad(models, tmp_path, case)
    capsys.readouterr()  # building models may print progress bars (other tests turn them on): not the CLI's output
    config = write_config({"base_model": str(base), "gate_mode": "random",
                           "experts": [{"source_model": f"{base}+{adapter}"}, {"source_model": str(base)}]})  # fmt: skip
    code, _, err = cli(config, tmp_path / "out", "--quiet")
    assert code == 2 and BAD[case] in err, err
    assert err.count("\n") == 1 and err.startswith("error: experts[0]: ") and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_lora_base_model_is_refused(models, write_config, cli, tmp_path, capsys):
    base = models.base("llama")
    adapter = make_adapter(base, tmp_path / "adapter")
    capsys.readouterr()
    config = write_config({"base_model": f"{base}+{adapter}", "gate_mode": "random",
                           "experts": [{"source_model": str(base)}]})  # fmt: skip
    code, _, err = cli(config, tmp_path / "out", "--quiet")
    assert code == 2 and "can be an expert, not the base" in err and err.count("\n") == 1


def test_one_adapter_on_two_models_is_two_experts(models, write_config, cli, tmp_path):
    """The same adapter folder over different model sides gives different experts (not 'every expert is the same
    model'); the same adapter over the same model twice is refused like any repeated model."""
    base = models.base("llama")
    adapter = make_adapter(base, tmp_path / "adapter")
    other = models.expert(base, 1)
    prompts = [["def f(x): return x"], ["Once upon a time"]]

    def run(sides, out):
        experts = [{"source_model": f"{side}+{adapter}", "positive_prompts": p} for side, p in zip(sides, prompts)]
        return cli(write_config({"base_model": str(base), "gate_mode": "cheap_embed", "experts": experts}), out, "-q")

    code, _, err = run([base, other], tmp_path / "two")
    assert code == 0, err
    code, _, err = run([base, base], tmp_path / "same")
    assert code == 2 and "every expert is the same model" in err


def test_folder_with_plus_in_its_name_is_a_model(models, write_config, cli, tmp_path):
    base = models.base("llama")
    plus = tmp_path / "my+model"
    shutil.copytree(models.expert(base, 1), plus)
    out = merge(write_config, cli, tmp_path / "out", base, [str(plus), str(base)])
    assert torch.equal(out["model.layers.0.block_sparse_moe.experts.0.w1.weight"],
                       all_tensors(plus)["model.layers.0.mlp.gate_proj.weight"])  # fmt: skip


def hub_run(args, *, endpoint, home, offline=False):
    """`python -m moemerge ARGS` in a child process against the Hub stand-in (huggingface_hub reads HF_ENDPOINT at
    import)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1" if offline else "0", HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1",
               HF_ENDPOINT=endpoint)  # fmt: skip
    return subprocess.run([sys.executable, "-m", "moemerge", *map(str, args)], env=env, capture_output=True,
                          text=True, check=False)  # fmt: skip


def test_hub_adapter_downloads_only_adapter_files(models, tmp_path):
    base = models.base("llama")
    adapter = make_adapter(base, tmp_path / "served-adapter")
    (adapter / "training_args.bin").write_bytes(b"not needed" * 100)
    (adapter / "tokenizer.json").write_text("{}")
    config = tmp_path / "hub.yaml"
    config.write_text(yaml.safe_dump({"base_model": str(base), "gate_mode": "random", "experts": [
        {"source_model": "org/base+org/adapter@v1"}, {"source_model": str(models.expert(base, 1))}]}))  # fmt: skip
    with HubStub() as hub:
        hub.served.update({"org/base": base, "org/adapter": adapter})
        planned = hub_run(["plan", config], endpoint=hub.url, home=tmp_path / "hf")
        assert planned.returncode == 0, planned.stderr
        assert "LoRA adapter org/adapter@v1 (rank 4; down_proj, gate_proj, up_proj)" in planned.stdout
        assert hub.downloaded("org/adapter") == {"adapter_config.json"}  # a dry run reads the header remotely
        result = hub_run([config, tmp_path / "out", "-q"], endpoint=hub.url, home=tmp_path / "hf")
        assert result.returncode == 0, result.stderr
        assert hub.downloaded("org/adapter") == {"adapter_config.json", "adapter_model.safetensors"}
        assert not any(name.startswith("tokenizer") for name in hub.downloaded("org/base"))
        count = len(hub.requests)  # a rerun offline takes both sides from the user's cache
        again = hub_run([config, tmp_path / "again", "-q"], endpoint=hub.url, home=tmp_path / "hf", offline=True)
        assert again.returncode == 0, again.stderr
        assert len(hub.requests) == count
    resolved = (tmp_path / "out" / "moemerge.yml").read_text()
    assert "model: org/adapter@v1" in resolved and "lora_on: org/base" in resolved
    assert resolved.count(f"revision: {COMMIT}") == 2  # the model side and the adapter, each with its commit
    out, want = all_tensors(tmp_path / "out"), peft_merged(base, adapter)
    assert torch.equal(out["model.layers.1.block_sparse_moe.experts.0.w2.weight"],
                       want["model.layers.1.mlp.down_proj.weight"])  # fmt: skip


class Hostile:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_bin_adapter_read_with_weights_only(models, write_config, cli, tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file

    monkeypatch.chdir(tmp_path)  # where the hostile pickle would leave its mark

    base = models.base("llama")
    adapter = make_adapter(base, tmp_path / "adapter")
    torch.save(load_file(str(adapter / "adapter_model.safetensors")), adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()
    out = merge(write_config, cli, tmp_path / "out", base, [f"{base}+{adapter}", str(base)])
    want = peft_merged(base, adapter)
    assert torch.equal(out["model.layers.0.block_sparse_moe.experts.0.w3.weight"],
                       want["model.layers.0.mlp.up_proj.weight"])  # fmt: skip
    torch.save({"x": Hostile()}, adapter / "adapter_model.bin")  # a pickle that would run code
    capsys.readouterr()
    config = write_config({"base_model": str(base), "gate_mode": "random",
                           "experts": [{"source_model": f"{base}+{adapter}"}, {"source_model": str(base)}]})  # fmt: skip
    code, _, err = cli(config, tmp_path / "out2", "--quiet")
    assert code == 2 and "cannot read this .bin file safely" in err and err.count("\n") == 1
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out2").exists()


def test_shared_expert_and_scales_apply_after_the_delta(models, write_config, cli, tmp_path):
    from moemerge.archs import ARCHITECTURES

    base = models.base("llama")
    adapter = make_adapter(base, tmp_path / "adapter")
    ref = f"{base}+{adapter}"
    config = write_config({"base_model": str(base), "gate_mode": "random", "architecture": "qwen2_moe",
                           "experts": [{"source_model": ref, "residual_scale": 0.5},
                                       {"source_model": str(models.expert(base, 1))}],
                           "shared_experts": [{"source_model": ref}]})  # fmt: skip
    code, _, err = cli(config, tmp_path / "out", "--quiet")
    assert code == 0, err
    out, want, arch = all_tensors(tmp_path / "out"), peft_merged(base, adapter), ARCHITECTURES["qwen2_moe"]
    down, gate = want["model.layers.1.mlp.down_proj.weight"], want["model.layers.1.mlp.gate_proj.weight"]
    assert torch.equal(out[arch.experts["down"].format(layer=1, expert=0)], down * 0.5)
    assert torch.equal(out[arch.shared_expert["down"].format(layer=1)], down)
    assert torch.equal(out[arch.shared_expert["gate"].format(layer=1)], gate)


def test_overwrite_never_replaces_the_model_side(models, write_config, cli, tmp_path):
    base = models.base("llama")
    model_side = tmp_path / "model-side"
    shutil.copytree(models.expert(base, 1), model_side)
    adapter = make_adapter(base, tmp_path / "adapter")
    config = write_config({"base_model": str(base), "gate_mode": "random",
                           "experts": [{"source_model": f"{model_side}+{adapter}"}, {"source_model": str(base)}]})  # fmt: skip
    for out in (model_side, adapter):
        code, _, err = cli(config, out, "--overwrite", "--quiet")
        assert code == 2 and "holds the source model" in err, err
    assert (model_side / "model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
