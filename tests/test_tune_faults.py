"""`moemerge tune` does what it reports: every data file is trained on, held-out figures are the plain next-token
loss, a symlinked OUT gets its routers where the link points, impossible settings are refused before loading, and
tune and eval cut text into windows by one rule."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
import torch
import tunekit
import yaml

from moemerge.forward import evaluate
from moemerge.forward.loading import LoadOptions, load_tokenizer
from moemerge.training import data as textdata
from moemerge.training import loop as tune

FAST = ("--steps", "4", "--seq-len", "32", "--batch-tokens", "128")  # 4 windows a step, 16 in a run


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return tunekit.build(tmp_path_factory.mktemp("tune"))


@pytest.fixture
def ok(cli):
    def run(*args):
        code, out, err = cli(*args)
        assert code == 0, err
        return out, err

    return run


def _files(root, count: int) -> dict[str, str]:
    """`count` data files, alternating domains, each with text of its own."""
    files = {}
    for i in range(count):
        path = root / f"d{i}.txt"
        path.write_text(tunekit.text("ab"[i % 2], 1200, 10 + i))
        files[f"d{i}"] = str(path)
    return files


@pytest.mark.parametrize("count", [5, 8])
def test_every_data_file_is_trained_on(task, tmp_path, ok, count):
    """Changing any one file's text changes the trained routers (the last file was never read before)."""
    moe, _ = task
    files = _files(tmp_path, count)
    specs = [a for name, path in files.items() for a in ("--data", f"{name}={path}")]
    first = tunekit.copy(moe, tmp_path / "first")
    ok("tune", str(first), *specs, *FAST)
    for changed in (f"d{count - 1}", "d1"):
        path = tmp_path / f"{changed}.txt"
        original = path.read_text()
        path.write_text(tunekit.text("ab"[int(changed[1:]) % 2], 1200, 999))
        again = tunekit.copy(moe, tmp_path / f"again-{changed}")
        ok("tune", str(again), *specs, *FAST)
        path.write_text(original)
        one, two = tunekit.routers(first), tunekit.routers(again)
        assert not all(torch.equal(one[k], two[k]) for k in one), f"{changed} did not change the routers"


def test_schedule_shares_windows_equally():
    for files, rows, steps in [(3, 4, 6), (5, 4, 5), (8, 4, 2), (2, 4, 7), (1, 4, 3)]:
        counts = Counter(f for step in range(1, steps + 1) for f in tune.schedule(files, rows, step))
        assert set(counts) == set(range(files)) and max(counts.values()) - min(counts.values()) <= 1


def test_steps_that_cannot_reach_every_file_are_refused(task, tmp_path, cli):
    moe, _ = task
    files = _files(tmp_path, 5)
    out = tunekit.copy(moe, tmp_path / "out")
    before = tunekit.state(out)
    specs = [a for name, path in files.items() for a in ("--data", f"{name}={path}")]
    code, _, err = cli("tune", str(out), *specs, "--steps", "1", "--seq-len", "32", "--batch-tokens", "128")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert "--steps 1 x 4 windows per step reach only 4 of the 5 data files" in lines[0]
    assert tunekit.state(out) == before


def test_held_out_loss_is_the_plain_next_token_loss(task, tmp_path, ok):
    """A folder whose config.json asks for router logits (saved after fine-tuning, say) reports the same figures."""
    moe, data = task
    plain, flagged = tunekit.copy(moe, tmp_path / "plain"), tunekit.copy(moe, tmp_path / "flagged")
    config = json.loads((flagged / "config.json").read_text())
    (flagged / "config.json").write_text(json.dumps({**config, "output_router_logits": True}))
    args = ("--data", f"a={data['a']}", "--data", f"b={data['b']}", *FAST, "--aux-loss-coef", "0.5")
    for out in (plain, flagged):
        ok("tune", str(out), *args)
    one, two = (json.loads((out / "tune.json").read_text()) for out in (plain, flagged))
    assert one["held_out_loss_before"] == two["held_out_loss_before"]
    assert one["held_out_loss_after"] == two["held_out_loss_after"]
    # and it is the loss of the windows themselves, computed here without moemerge
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(moe, LoadOptions())
    _, held_out, _ = textdata.windows({"a": data["a"]}, tokenizer, 32)
    model = AutoModelForCausalLM.from_pretrained(str(moe), dtype=torch.float32).eval()
    with torch.no_grad():
        expected = model(input_ids=held_out["a"], labels=held_out["a"]).loss.item()
    assert abs(one["held_out_loss_before"]["a"] - expected) < 1e-5


def test_a_symlinked_out_is_updated_where_it_points(task, tmp_path, ok):
    moe, data = task
    real = tunekit.copy(moe, tmp_path / "store" / "real")
    (tmp_path / "links").mkdir()
    link = tmp_path / "links" / "out"
    link.symlink_to(real)
    before = tunekit.routers(real)
    ok("tune", str(link), "--data", f"a={data['a']}", "--data", f"b={data['b']}", *FAST)
    after = tunekit.routers(real)
    assert link.is_symlink() and os.path.realpath(link) == str(real)
    assert not any(torch.equal(before[k], after[k]) for k in before)
    assert (real / "tune.json").is_file()
    assert sorted(p.name for p in (tmp_path / "links").iterdir()) == ["out"]
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["real"]


def test_a_merge_into_a_symlinked_out_writes_where_it_points(task, tmp_path, ok):
    moe, _ = task
    real = tmp_path / "store" / "real"
    real.mkdir(parents=True)
    (real / "old.txt").write_text("an earlier output")
    link = tmp_path / "out"
    link.symlink_to(real)
    ok(str(moe.parent / "config.yaml"), str(link), "--overwrite", "--quiet")
    assert link.is_symlink() and (real / "config.json").is_file() and not (real / "old.txt").exists()
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["real"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "store"]


def test_train_top_k_beyond_the_experts_is_refused_before_loading(task, tmp_path, cli, monkeypatch):
    moe, data = task
    out = tunekit.copy(moe, tmp_path / "out")
    before = tunekit.state(out)

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("moemerge.training.run.loaded_model", no_loading)
    code, _, err = cli("tune", str(out), "--data", str(data["a"]), "--train-top-k", "5", "--steps", "1")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--train-top-k 5: the model has only 2 experts" in lines[0], lines
    assert tunekit.state(out) == before
    spec = yaml.safe_load((moe.parent / "config.yaml").read_text())
    spec["router_training"] = {"data": str(data["a"]), "train_top_k": 3, "steps": 1}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(spec))
    code, _, err = cli(str(tmp_path / "c.yaml"), str(tmp_path / "merged"))
    assert code == 2 and "router_training: --train-top-k 3: the model has only 2 experts" in err
    assert not (tmp_path / "merged").exists()


def test_long_data_files_raise_no_false_alarm(task, tmp_path):
    """The tokenizer's model_max_length is shorter than the file: the text is cut into windows, so no warning (run
    in a process of its own: transformers' log handler writes to the real stderr)."""
    moe, data = task
    out = tunekit.copy(moe, tmp_path / "out")
    config = json.loads((out / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 64}))
    tuned = tunekit.run("tune", str(out), "--data", f"a={data['a']}", "--data", f"b={data['b']}", *FAST)
    scored = tunekit.run("eval", str(out), "--data", f"a={data['a']}", "--max-tokens", "512")
    assert "Token indices sequence length" not in tuned.stderr + scored.stderr


@pytest.mark.parametrize("adds_bos", [False, True])
def test_tune_and_eval_start_windows_alike(task, tmp_path, adds_bos):
    """BOS opens each window exactly when the tokenizer adds one to a text, in tune's windows and eval's alike."""
    moe, data = task
    tokenizer = load_tokenizer(moe, LoadOptions())
    if adds_bos:
        from tokenizers import processors

        tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", 1)]
        )
    bos = tokenizer.bos_token_id
    assert (tokenizer("a1")["input_ids"][0] == bos) is adds_bos
    train, held_out, _ = textdata.windows({"a": data["a"]}, tokenizer, 32)
    scored = evaluate.windows(tokenizer, [data["a"].read_text()], window=32, max_tokens=None)
    assert all((row[0].item() == bos) is adds_bos for row in torch.cat([train["a"], held_out["a"]]))
    assert all((row[0] == bos) is adds_bos for row in scored)
    assert [list(map(int, row)) for row in train["a"][:3]] == scored[:3]  # the same cut, window for window
