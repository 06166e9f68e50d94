"""The real-model tier (`pytest -m real`): SmolLM2-135M-Instruct and three MLP fine-tunes of it, merged for real."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import load_moe

from moemerge.cli import main
from moemerge.real import write_config
from moemerge.real.base import FRANCE, chat_answer

pytestmark = pytest.mark.real
QUESTIONS = [FRANCE, "How many days are there in a week?", "Name three primary colors."]
# mlp_input_avg gates with the other domains' prompts as negatives, top-1: each domain's held-out prompts pick their
# own expert (measured: code 93.7%, math 80.2%, prose 72.5% of tokens; chance is 33%; hidden_avg: 49.7/54.9/54.7%)
GATE_MODE, TOP_K = "mlp_input_avg", 1
HIT_RATE = 0.6


def _cli(*args) -> int:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code


def _load(folder):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def same_moe(real_assets, tmp_path_factory):
    """Every expert is the real base: a Mixtral whose every expert MLP is the base's."""
    folder = tmp_path_factory.mktemp("same")
    config = {"base_model": str(real_assets.base), "gate_mode": "random", "dtype": "float32", "experts_per_token": 2,
              "experts": [{"source_model": str(real_assets.base)}] * 3}  # fmt: skip
    (folder / "same.yaml").write_text(yaml.safe_dump(config))
    code = _cli(folder / "same.yaml", folder / "out", "-q", "--i-understand-this-is-not-useful-without-training")
    assert code == 0
    return folder / "out"


@pytest.fixture(scope="module")
def real_moe(real_assets, tmp_path_factory):
    """The three real experts with hidden-state gates."""
    folder = tmp_path_factory.mktemp("real")
    config = write_config(folder / "real.yaml", real_assets, gate_mode=GATE_MODE, experts_per_token=TOP_K)
    assert _cli(config, folder / "out", "-q") == 0
    return folder / "out"


def test_the_base_answers_like_smollm2(real_assets):
    model, tokenizer = _load(real_assets.base)
    assert "Paris" in chat_answer(model, tokenizer, FRANCE)


def test_identical_experts_give_the_base_logits_and_answers(real_assets, same_moe):
    import torch

    base, tokenizer = _load(real_assets.base)
    moe = load_moe(same_moe)
    assert moe.config.model_type == "mixtral" and moe.config.num_local_experts == 3
    text = tokenizer.apply_chat_template([{"role": "user", "content": QUESTIONS[1]}], tokenize=False)
    ids = tokenizer(text + "A week has seven days: Monday, Tuesday and so on.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected, got = base(ids).logits, moe(ids).logits
    assert expected.abs().max() > 10  # logits of order 30: the bound below is tight, not trivial
    assert (got - expected).abs().max().item() <= 1e-4
    for question in QUESTIONS:
        assert chat_answer(moe, tokenizer, question) == chat_answer(base, tokenizer, question)


def test_tokenizer_and_chat_template_are_the_base_ones(real_assets, same_moe):
    from transformers import AutoTokenizer

    names = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"}
    assert names <= {p.name for p in real_assets.base.iterdir()}
    for name in names:
        assert (same_moe / name).read_bytes() == (real_assets.base / name).read_bytes(), name
    base, out = AutoTokenizer.from_pretrained(str(real_assets.base)), AutoTokenizer.from_pretrained(str(same_moe))
    assert out.special_tokens_map == base.special_tokens_map and out.chat_template == base.chat_template
    chat = [{"role": "user", "content": FRANCE}]
    assert out.apply_chat_template(chat, tokenize=False) == base.apply_chat_template(chat, tokenize=False)


def test_verify_passes_on_the_real_moe(real_moe):
    assert _cli("verify", real_moe, "-q") == 0


def test_each_domain_reaches_its_own_expert(real_assets, real_moe, tmp_path):
    prompts = tmp_path / "held_out.yaml"
    prompts.write_text(yaml.safe_dump(real_assets.held_out_prompts))
    assert _cli("route", real_moe, "--prompts", prompts, "-q") == 0
    report = json.loads((real_moe / "routing.json").read_text())
    experts = list(real_assets.experts)
    rates = {s["name"]: s["hit_rate"] for s in report["prompt_sets"]}
    assert set(rates) == set(experts)
    for row in report["prompt_sets"]:
        own = experts.index(row["name"])
        assert row["expert"] == own and row["hit_rate"] >= HIT_RATE, rates
        assert max(range(len(experts)), key=row["share"].__getitem__) == own, (row["name"], row["share"])


def test_eval_compare_places_the_moe_between_the_base_and_each_expert(real_assets, real_moe):
    """Measured (loss over 256-token windows, base / own expert / MoE): code 2.673 / 2.547 / 2.576; math 1.445 /
    0.521 / 0.528; prose 3.008 / 2.445 / 2.495."""
    data = [f"--data={name}={path}" for name, path in real_assets.eval_files.items()]
    assert _cli("eval", real_moe, *data, "--compare", "-q") == 0
    result = json.loads((real_moe / "eval.json").read_text())
    names = {m["name"] for m in result["models"]}
    assert names == {"base", "MoE", *(f"{i}: {name}" for i, name in enumerate(real_assets.experts))}
    for i, row in enumerate(result["datasets"]):
        loss, own = row["loss"], f"{i}: {row['name']}"
        assert loss[own] <= loss["base"] - 0.08, row  # each expert beats the base on its own domain
        assert loss["MoE"] <= loss["base"] - 0.05, row  # so does the MoE, on every domain
        assert loss["MoE"] <= loss[own] + 0.2, row  # and stays near the domain's expert
        assert all(loss[own] < loss[f"{j}: {other}"] for j, other in enumerate(real_assets.experts) if j != i), row
