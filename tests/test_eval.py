"""`moemerge eval`: losses against transformers' own, --compare columns, eval.json, the chart and the card section."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import yaml
from conftest import load_moe
from test_archs import merge_same
from transformers import AutoModelForCausalLM, AutoTokenizer

from moemerge import tiny
from moemerge.forward import evaluate
from moemerge.publish import charts

PROMPTS = {
    "code": ["def add(a, b): return a + b", "import numpy as np", "for i in range(10): print(i)"],
    "story": ["Once upon a time there was a dragon who lived in a castle.", "The knight rode."],
}
LONG_TEXT = " ".join(tiny.CORPUS * 12)  # several 256-token windows and a shorter last one


@pytest.fixture
def merged(models, write_config, cli, tmp_path):
    base = models.base("llama")
    experts = [{"source_model": str(models.expert(base, i + 1)), "positive_prompts": p}
               for i, p in enumerate(PROMPTS.values())]  # fmt: skip
    config = write_config({"base_model": str(base), "gate_mode": "hidden", "experts": experts})
    code, _, err = cli(config, tmp_path / "out", "--quiet")
    assert code == 0, err
    (tmp_path / "long.txt").write_text(LONG_TEXT)
    return tmp_path / "out", base, [models.expert(base, 1), models.expert(base, 2)]


def reference_loss(model_dir, tokenizer, documents, *, cap=None):
    """transformers' own loss, one window at a time (no padding anywhere), weighted by scored tokens."""
    model = (
        model_dir
        if isinstance(model_dir, torch.nn.Module)
        else AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    )
    total, count = 0.0, 0
    for text in documents:
        body = tokenizer(text, add_special_tokens=False)["input_ids"][:cap]
        for start in range(0, len(body), 256):
            ids = torch.tensor([body[start : start + 256]])
            if ids.shape[1] < 2:
                continue
            with torch.no_grad():
                loss = model(ids, labels=ids).loss
            total, count = total + float(loss) * (ids.shape[1] - 1), count + ids.shape[1] - 1
    return total / count, count


def test_loss_equals_transformers_loss(merged, cli, tmp_path):
    out, _, _ = merged
    code, stdout, err = cli("eval", out, "--data", f"long={tmp_path / 'long.txt'}")
    assert code == 0, err
    result = json.loads((out / "eval.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    loss, count = reference_loss(out, tokenizer, [LONG_TEXT])
    (row,) = result["datasets"]
    assert row["windows"] > 2 and row["tokens"] == count
    assert abs(row["loss"]["MoE"] - loss) < 1e-5
    # and as one right-padded batch with labels -100 on the padding: transformers averages over the real targets
    body = tokenizer(LONG_TEXT, add_special_tokens=False)["input_ids"]
    windows = [body[i : i + 256] for i in range(0, len(body), 256)]
    width = max(len(w) for w in windows)
    ids = torch.tensor([w + [3] * (width - len(w)) for w in windows])
    mask = torch.tensor([[1] * len(w) + [0] * (width - len(w)) for w in windows])
    with torch.no_grad():
        batched = load_moe(out)(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
    assert len({len(w) for w in windows}) == 2 and abs(row["loss"]["MoE"] - float(batched)) < 1e-5
    assert f"{loss:.3f}" in stdout and "wrote" in stdout and err == ""


def test_default_datasets_are_the_experts_prompts(merged, cli):
    """Prompts of different lengths share batches: left padding must not change any loss."""
    out, _, _ = merged
    code, _, err = cli("eval", out)
    assert code == 0
    assert err.count("\n") == 1 and "no --data given" in err and "positive prompts" in err
    result = json.loads((out / "eval.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    names = ["0: llama-base--expert1", "1: llama-base--expert2"]
    assert [d["name"] for d in result["datasets"]] == names
    for row, prompts in zip(result["datasets"], PROMPTS.values()):
        loss, count = reference_loss(out, tokenizer, prompts)
        assert row["tokens"] == count and row["windows"] == len(prompts)
        assert abs(row["loss"]["MoE"] - loss) < 1e-5


def test_compare_columns_are_each_models_own_loss(merged, cli, tmp_path):
    out, base, experts = merged
    code, stdout, err = cli("eval", out, "--compare", "--data", f"long={tmp_path / 'long.txt'}",
                            "--data", f"code={tmp_path / 'long.txt'}", "--max-tokens", "300")  # fmt: skip
    assert code == 0, err
    result = json.loads((out / "eval.json").read_text())
    names = ["base", "0: llama-base--expert1", "1: llama-base--expert2", "MoE"]
    assert [m["name"] for m in result["models"]] == names
    assert [m["path"] for m in result["models"][:3]] == [str(p.resolve()) for p in (base, *experts)]
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    for name, folder in zip(names, (base, *experts, out)):
        loss, count = reference_loss(folder, tokenizer, [LONG_TEXT], cap=300)
        for row in result["datasets"]:
            assert row["tokens"] == count == 298  # 300 tokens: windows of 256 and 44, each scoring all but one
            assert abs(row["loss"][name] - loss) < 1e-5
    for row in result["datasets"]:
        assert set(row) == {"name", "source", "windows", "tokens", "loss", "perplexity", "best"}
        assert list(row["loss"]) == list(row["perplexity"]) == names
        assert row["best"] == min(row["loss"], key=row["loss"].get)
        assert all(row["perplexity"][n] == pytest.approx(math.exp(row["loss"][n])) for n in names)
    assert result["window"] == 256 and result["max_tokens"] == 300
    header = stdout.splitlines()[0].split()
    assert header[0] == "dataset" and header[-2:] == ["MoE", "tokens"] and stdout.count(")*") == 2


def test_identical_experts_match_the_base(models, write_config, cli, tmp_path):
    base, out = merge_same(models, write_config, cli, tmp_path, "llama", n=3, k=2)
    (tmp_path / "text.txt").write_text(LONG_TEXT)
    code, _, err = cli("eval", out, "--compare", "--data", f"text={tmp_path / 'text.txt'}", "-q")
    assert code == 0, err
    result = json.loads((out / "eval.json").read_text())
    (row,) = result["datasets"]
    assert abs(row["loss"]["MoE"] - row["loss"]["base"]) < 1e-5
    experts = [m["name"] for m in result["models"][1:-1]]
    assert len(experts) == 3 and all(row["loss"][e] == row["loss"]["base"] for e in experts)  # scored once


def test_compare_finds_relative_models(models, write_config, cli, tmp_path, monkeypatch):
    """Models recorded relative to OUT, or relative to where the merge ran (then found through the provenance)."""
    base = models.base("llama")
    monkeypatch.chdir(base.parent)
    config = write_config({"base_model": base.name, "gate_mode": "random", "experts": [
        {"source_model": models.expert(base, i + 1).name} for i in range(2)]})  # fmt: skip
    assert cli(config, tmp_path / "out", "-q")[0] == 0
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.txt").write_text(LONG_TEXT)
    assert cli("eval", out, "--compare", "--data", "t=t.txt", "--max-tokens", "64", "-q")[0] == 0
    first = json.loads((out / "eval.json").read_text())
    resolved = yaml.safe_load((out / "moemerge.yml").read_text())
    resolved["base_model"] = os.path.relpath(base, out)
    for i, expert in enumerate(resolved["experts"]):
        expert["source_model"] = os.path.relpath(models.expert(base, i + 1), out)
    (out / "moemerge.yml").write_text(yaml.safe_dump(resolved))  # no provenance block now
    assert cli("eval", out, "--compare", "--data", "t=t.txt", "--max-tokens", "64", "-q")[0] == 0
    second = json.loads((out / "eval.json").read_text())
    assert [m["path"] for m in second["models"]] == [m["path"] for m in first["models"]]
    assert second["datasets"][0]["loss"] == first["datasets"][0]["loss"]
    resolved["experts"][1]["source_model"] = "nowhere/at-all-x"
    (out / "moemerge.yml").write_text(yaml.safe_dump(resolved))
    code, _, err = cli("eval", out, "--compare", "--data", "t=t.txt")
    assert code == 2 and err.count("\n") == 1 and "experts[1].source_model" in err


def test_card_section_once_after_two_evals(merged, cli, tmp_path):
    out, _, _ = merged
    card = (out / "README.md").read_text()
    for _ in range(2):
        assert cli("eval", out, "--data", f"long={tmp_path / 'long.txt'}", "--max-tokens", "100", "-q")[0] == 0
    text = (out / "README.md").read_text()
    assert text.count("## Evaluation") == 1 and text.count("<!-- moemerge:eval -->") == 1
    assert "| long | 99 |" in text and "![eval chart](eval.png)" in text
    start, end = text.index("<!-- moemerge:eval -->"), text.index("<!-- /moemerge:eval -->\n")
    assert text[:start] + text[end + len("<!-- /moemerge:eval -->\n") :] == card  # nothing else changed
    assert text.index("## Evaluation") < text.index("## Usage")
    assert "pypi.org" not in text and "built with moemerge from" in text.replace("\n", " ")


def test_chart_labels_inside_the_image(merged, cli, tmp_path):
    out, _, _ = merged
    names = [f"held-out {w} text with a long name" for w in ("python", "arithmetic", "chat")]
    for name in names:
        (tmp_path / f"{name}.txt").write_text(LONG_TEXT)
    data = [a for n in names for a in ("--data", f"{n}={tmp_path / f'{n}.txt'}")]
    assert cli("eval", out, "--compare", *data, "--max-tokens", "40", "-q")[0] == 0
    figure = charts.eval_figure(json.loads((out / "eval.json").read_text()))
    assert_labels_inside(figure, expected=[*names, "MoE", "0: llama-base--expert1", "mean next-token loss"])


def assert_labels_inside(figure, expected):
    """Every expected label is drawn, and everything drawn (labels, ticks, legend) lies inside the saved image."""
    from matplotlib.text import Text

    figure.canvas.draw()
    shown = " ".join(t.get_text() for t in figure.findobj(Text) if t.get_visible())
    assert all(label in shown for label in expected)
    drawn, page = figure.get_tightbbox(figure.canvas.get_renderer()), figure.bbox_inches  # inches
    assert drawn.x0 >= page.x0 - 0.01 and drawn.y0 >= page.y0 - 0.01, (drawn, page)
    assert drawn.x1 <= page.x1 + 0.01 and drawn.y1 <= page.y1 + 0.01, (drawn, page)


@pytest.mark.parametrize("spec,message", [
    ("nofile", "expected NAME=FILE"),
    ("=x.txt", "expected NAME=FILE"),
    ("a={missing}", "not found"),
    ("a={empty}", "is empty"),
    ("a={folder}", "not a regular file"),
    ("dup", "given twice"),
])  # fmt: skip
def test_bad_data_is_one_line(merged, cli, tmp_path, spec, message):
    out, _, _ = merged
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "folder").mkdir()
    before = sorted(p.name for p in out.iterdir()), (out / "README.md").read_text()
    args = [
        "--data",
        spec.format(missing=tmp_path / "nope.txt", empty=tmp_path / "empty.txt", folder=tmp_path / "folder"),
    ]
    if spec == "dup":
        args = ["--data", f"a={tmp_path / 'long.txt'}", "--data", f"a={tmp_path / 'long.txt'}"]
    code, stdout, err = cli("eval", out, *args)
    assert code == 2 and err.count("\n") == 1 and message in err and stdout == ""
    assert (sorted(p.name for p in out.iterdir()), (out / "README.md").read_text()) == before


def test_other_errors_are_one_line(merged, cli, tmp_path):
    out, _, _ = merged
    code, _, err = cli("eval", tmp_path / "nowhere", "--data", f"a={tmp_path / 'long.txt'}")
    assert code == 2 and err.count("\n") == 1 and "not a merged model" in err
    (out / "moemerge.yml").unlink()
    code, _, err = cli("eval", out)
    assert code == 2 and err.count("\n") == 1 and "pass --data NAME=FILE" in err
    code, _, err = cli("eval", out, "--compare", "--data", f"a={tmp_path / 'long.txt'}")
    assert code == 2 and err.count("\n") == 1 and "--compare needs it" in err
    (tmp_path / "one.txt").write_text("d")
    code, _, err = cli("eval", out, "--data", f"one={tmp_path / 'one.txt'}")
    assert code == 2 and err.count("\n") == 1 and "too short" in err
    assert not (out / "eval.json").exists()


def test_windows_start_like_a_text_and_respect_the_cap(tmp_path):
    from tokenizers import processors

    tokenizer = tiny.make_tokenizer(tmp_path)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id
    body = tokenizer(LONG_TEXT, add_special_tokens=False)["input_ids"]
    found = evaluate.windows(tokenizer, [LONG_TEXT], window=64, max_tokens=None)
    assert all(w[0] == tokenizer.bos_token_id and len(w) <= 64 for w in found)
    assert [t for w in found for t in w[1:]] == body
    capped = evaluate.windows(tokenizer, [LONG_TEXT, LONG_TEXT], window=64, max_tokens=150)
    assert [len(w) for w in capped] == [64, 64, 22]


def test_a_card_moemerge_did_not_write_is_left_alone(merged, cli, tmp_path, monkeypatch):
    out, _, _ = merged
    (out / "README.md").write_text("# My own notes\n\n## Usage\n")
    assert cli("eval", out, "--data", f"long={tmp_path / 'long.txt'}", "--max-tokens", "40", "-q")[0] == 0
    assert (out / "README.md").read_text() == "# My own notes\n\n## Usage\n" and (out / "eval.json").is_file()
    monkeypatch.setattr(evaluate.charts, "save", lambda fig, path: (_ for _ in ()).throw(PermissionError(13, "denied")))
    code, _, err = cli("eval", out, "--data", f"long={tmp_path / 'long.txt'}", "--max-tokens", "40")
    assert code == 2 and err.count("\n") == 1 and "cannot write the results (denied)" in err


def test_compare_a_lora_expert(models, write_config, cli, tmp_path):
    """A LoRA expert's column is its model with the adapter applied by peft (attention included), as fine-tuned."""
    import warnings

    peft = pytest.importorskip("peft")
    from test_lora import make_adapter

    base = models.base("llama")
    adapter = make_adapter(base, tmp_path / "adapter", seed=3)
    config = write_config({"base_model": str(base), "gate_mode": "random", "experts": [
        {"source_model": f"{base}+{adapter}"}, {"source_model": str(models.expert(base, 1))}]})  # fmt: skip
    assert cli(config, tmp_path / "out", "-q")[0] == 0
    (tmp_path / "t.txt").write_text(LONG_TEXT)
    code, _, err = cli(
        "eval", tmp_path / "out", "--compare", "--data", f"t={tmp_path / 't.txt'}", "--max-tokens", "300"
    )
    assert code == 0, err
    result = json.loads((tmp_path / "out" / "eval.json").read_text())
    lora = result["models"][1]
    assert lora["name"] == "0: adapter" and lora["adapter"] == str(adapter.resolve())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        tuned = peft.PeftModel.from_pretrained(model, str(adapter)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    loss, _ = reference_loss(tuned, tokenizer, [LONG_TEXT], cap=300)
    (row,) = result["datasets"]
    assert abs(row["loss"]["0: adapter"] - loss) < 1e-5 and abs(row["loss"]["0: adapter"] - row["loss"]["base"]) > 1e-3


def test_a_capped_long_text_gives_the_full_texts_tokens(tmp_path):
    tokenizer = tiny.make_tokenizer(tmp_path)
    text = LONG_TEXT * 40
    full = tokenizer(text, add_special_tokens=False)["input_ids"]
    for cap in (100, 1000):
        found = evaluate.windows(tokenizer, [text], window=256, max_tokens=cap)
        assert [t for w in found for t in w] == full[:cap]


def test_non_utf8_data_says_so_as_tune_does(tmp_path):
    from moemerge.errors import ConfigError
    from moemerge.forward.evaluate import parse_data

    (tmp_path / "nonutf.txt").write_bytes(b"\xff\xfe\x00 not text")
    with pytest.raises(ConfigError) as exc:
        parse_data([f"n={tmp_path / 'nonutf.txt'}"])
    assert str(exc.value) == f"--data n: {tmp_path / 'nonutf.txt'} is not UTF-8 text"
