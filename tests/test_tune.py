"""`moemerge tune`: only router bytes change, seeded runs repeat, a task with a known right routing is learned, bad
inputs change nothing, `router_training:` in a config, and --device auto offload."""

from __future__ import annotations

import json

import pytest
import torch
import tunekit
import yaml

from moemerge.config.schema import load_config
from moemerge.merge.rewrite import locate

FAST = ("--steps", "4", "--seq-len", "32", "--batch-tokens", "128")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return tunekit.build(tmp_path_factory.mktemp("tune"))


def _data(data) -> list[str]:
    return ["--data", f"a={data['a']}", "--data", f"b={data['b']}"]


@pytest.fixture
def ok(cli):
    """Run `moemerge ARGS` in this process and insist that it succeeds."""

    def run(*args):
        code, out, err = cli(*args)
        assert code == 0, err
        return out

    return run


def test_only_router_bytes_change(task, tmp_path, ok):
    moe, data = task
    out = tunekit.copy(moe, tmp_path / "out")
    before = tunekit.state(out)
    assert sum(name.endswith(".safetensors") for name in before) > 2  # routers in several shards
    ok("tune", str(out), *_data(data), *FAST)
    ok("tune", str(out), *_data(data), *FAST, "--seed", "1")  # a second run, recorded after the first
    after = tunekit.state(out)
    spans = {}
    for name, info in locate(out, list(tunekit.routers(out))).items():
        spans.setdefault(info.file.name, []).append((info.offset, info.offset + 4 * info.shape[0] * info.shape[1]))
    for name, data_before in before.items():
        if not name.endswith(".safetensors"):
            continue
        old, new = bytearray(data_before), bytearray(after[name])
        assert len(old) == len(new)
        for start, end in spans.get(name, []):
            assert old[start:end] != new[start:end], f"a router in {name} did not change"
            old[start:end] = new[start:end] = b""
        assert old == new, f"{name}: bytes outside the routers changed"
    changed = {n for n in before if before[n] != after[n] and not n.endswith(".safetensors")}
    assert changed == {"moemerge.yml", "README.md"} and set(after) - set(before) == {"tune.json"}
    record = json.loads(after["tune.json"])
    assert record["seed"] == 1 and record["steps"] == 4 and record["train_top_k"] == 2
    assert [r["seed"] for r in record["earlier_runs"]] == [0]
    assert [d["name"] for d in record["data"]] == ["a", "b"] and all(len(d["sha256"]) == 64 for d in record["data"])
    config = load_config(out / "moemerge.yml")  # still a valid config, now with the training that reruns this
    assert [run.seed for run in config.router_training] == [0, 1]
    assert config.router_training[1].data == {"a": str(data["a"].resolve()), "b": str(data["b"].resolve())}
    text = after["moemerge.yml"].decode()
    assert text.count("# Router training run") == 2 and f"#   sha256: {record['data'][0]['sha256']}" in text
    card = after["README.md"].decode()
    assert card.count("## Router training") == 1 and "Only its routers were trained after merging" in card
    assert card.count("### Run ") == 2
    ok("verify", str(out))


def test_seeded_runs_repeat(task, tmp_path, ok):
    moe, data = task
    outs = [tunekit.copy(moe, tmp_path / name) for name in ("one", "two", "other")]
    for out, seed in zip(outs, ("5", "5", "6")):
        ok("tune", str(out), *_data(data), *FAST, "--seed", seed)
    one, two, other = (tunekit.routers(out) for out in outs)
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert not all(torch.equal(one[k], other[k]) for k in one)


def _routing(out, data) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Held-out loss per domain and, per layer, the share of its tokens the top-1 router sends to its own expert."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    loss, hits = {}, {}
    for expert, domain in enumerate("ab"):
        ids = torch.tensor(tokenizer(tunekit.text(domain, 1024, 99), add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            result = model(ids.view(-1, 32), labels=ids.view(-1, 32), output_router_logits=True)
        loss[domain] = result.loss.item()
        hits[domain] = [(layer.argmax(-1) == expert).float().mean().item() for layer in result.router_logits]
    return loss, hits


def test_a_chain_of_runs_is_recorded_and_replayed(task, tmp_path, ok, cli):
    """Two tunes (on a and b, then longer on a): moemerge.yml lists both runs in order, and rerunning it gives the
    same routers; the reports made before the training are marked stale, and tune says so."""
    moe, data = task
    out = tunekit.copy(moe, tmp_path / "out")
    (out / "routing.json").write_text(json.dumps({"experts_per_token": 1, "experts": ["a", "b"], "layers": 2,
                                                  "prompt_sets": [{"name": "a", "share": [0.5, 0.5]}]}))  # fmt: skip
    from moemerge.publish import card

    assert card.update_card(out, "routing", card.routing_section(json.loads((out / "routing.json").read_text())))
    ok("tune", str(out), *_data(data), *FAST)
    code, _, err = cli("tune", str(out), "--data", f"a={data['a']}", "--steps", "6", "--seq-len", "32",
                       "--batch-tokens", "128", "--seed", "3")  # fmt: skip
    assert code == 0, err
    assert "routing.json, routing.png and the card's routing section describe the routers before" in err
    assert "rerun `moemerge route OUT`" in err
    text = (out / "moemerge.yml").read_text()
    assert "The routers come from 2 training runs" in text
    runs = load_config(out / "moemerge.yml").router_training
    assert [(r.steps, r.seed, sorted(r.data)) for r in runs] == [(4, 0, ["a", "b"]), (6, 3, ["a"])]
    report = json.loads((out / "routing.json").read_text())
    assert report["stale"] is True and "moemerge route OUT" in report["stale_reason"]
    readme = (out / "README.md").read_text()
    routing = readme.split("<!-- moemerge:routing -->")[1]
    assert "**Out of date:** these figures predate the router training" in routing
    ok(str(out / "moemerge.yml"), str(tmp_path / "again"), "--quiet")
    replayed, tuned = tunekit.routers(tmp_path / "again"), tunekit.routers(out)
    assert all(torch.equal(replayed[k], tuned[k]) for k in tuned)
    assert json.loads((tmp_path / "again" / "tune.json").read_text())["earlier_runs"][0]["steps"] == 4


def test_a_known_routing_is_learned(task, tmp_path, ok):
    """Expert a is good only on words a*, expert b only on b*: trained routers must send each set to its expert."""
    moe, data = task
    out = tunekit.copy(moe, tmp_path / "out")
    loss_before, _ = _routing(out, data)
    ok("tune", str(out), *_data(data), "--steps", "40", "--seq-len", "32", "--batch-tokens", "256", "--lr", "0.03")
    loss_after, hits = _routing(out, data)
    record = json.loads((out / "tune.json").read_text())
    for domain in "ab":  # measured: held-out 4.24 -> 1.74 and 2.92 -> 2.23; text 4.5 -> 1.4, 3.2 -> 1.5; hits >= 0.83
        assert record["held_out_loss_after"][domain] < record["held_out_loss_before"][domain] - 0.4
        assert loss_after[domain] < 0.6 * loss_before[domain]
        assert min(hits[domain]) > 0.75, hits


@pytest.mark.parametrize(
    "args,message",
    [
        (["--data", "missing.txt"], "missing.txt: training data file not found"),
        (["--data", "empty.txt"], "empty.txt: the training data file is empty"),
        (["--data", "binary.txt"], "binary.txt: the training data file is not UTF-8 text"),
        (["--data", "short.txt"], "fewer than two windows of 128"),
        (["--data", "folder"], "folder: the training data file is not a regular file"),
        (["--data", "x=a.txt", "--data", "x=b.txt"], "the name 'x' is given twice"),
        (["--data", "a.txt", "--steps", "0"], "--steps 0 with one data file (the fit needs a file per domain)"),
        (["--data", "a.txt", "--steps", "-1"], "--steps -1: give 0 (the fit alone) or more"),
        (["--data", "a.txt", "--data", "b.txt", "--fit", "none", "--steps", "0"], "--steps 0 with --fit none"),
        (["--data", "a.txt", "--lr", "-1"], "the learning rate must be positive"),
        (["--data", "a.txt", "--batch-tokens", "64"], "--batch-tokens 64: at least one window"),
        (["--data", "a.txt", "--aux-loss-coef", "-0.5"], "must be 0 or more"),
    ],
)
def test_bad_inputs_change_nothing(task, tmp_path, monkeypatch, cli, args, message):
    moe, data = task
    out = tunekit.copy(moe, tmp_path / "out")
    monkeypatch.chdir(data["a"].parent)
    (data["a"].parent / "empty.txt").write_text(" \n")
    (data["a"].parent / "binary.txt").write_bytes(b"\xff\xfe\x00 not text")
    (data["a"].parent / "short.txt").write_text("a1 a2 a3")
    (data["a"].parent / "folder").mkdir(exist_ok=True)
    before = tunekit.state(out)
    one_file = args.count("--data") == 1 and "--steps" not in args  # a single file needs gradient steps
    code, _, err = cli("tune", str(out), *args, *(["--steps", "1"] if one_file else []))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert tunekit.state(out) == before and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_folder_that_is_not_a_moe_is_refused(task, cli):
    moe, data = task
    code, _, err = cli("tune", str(moe.parent / "base"), "--data", str(data["a"]))
    assert code == 2 and "model_type 'llama'; tune trains mixtral, qwen2_moe, qwen3_moe" in err


def test_router_training_in_the_config(task, tmp_path, ok, cli):
    moe, data = task
    spec = yaml.safe_load((moe.parent / "config.yaml").read_text())
    spec["router_training"] = {"data": [str(data["a"]), str(data["b"])], "steps": 3, "seq_len": 32, "batch_tokens": 64}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(spec))
    ok(str(tmp_path / "c.yaml"), str(tmp_path / "out"), "--quiet")
    record = json.loads((tmp_path / "out" / "tune.json").read_text())
    assert record["steps"] == 3 and record["seed"] == 0 and set(record["held_out_loss_after"]) == {"a", "b"}
    assert "## Router training" in (tmp_path / "out" / "README.md").read_text()
    assert load_config(tmp_path / "out" / "moemerge.yml").router_training[0].steps == 3
    assert "router_training:\n  data:" in (tmp_path / "out" / "moemerge.yml").read_text()  # one run: a mapping
    spec["router_training"] = {"data": str(tmp_path / "nope.txt"), "step": 3}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    code, _, err = cli(str(tmp_path / "bad.yaml"), str(tmp_path / "bad"))
    assert code == 2 and "router_training: unknown key 'step' (did you mean 'steps'?)" in err
    assert not (tmp_path / "bad").exists()


def test_qwen2_moe_shared_expert_gate_is_trained(task, tmp_path, ok):
    moe, data = task
    spec = yaml.safe_load((moe.parent / "config.yaml").read_text())
    spec.update(architecture="qwen2_moe", shared_experts=[{"source_model": spec["experts"][0]["source_model"]}])
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    ok(str(tmp_path / "q.yaml"), str(out), "--quiet")
    before = tunekit.routers(out)
    ok("tune", str(out), *_data(data), *FAST)
    after = tunekit.routers(out)
    assert {k for k in before if not torch.equal(before[k], after[k])} == set(before)
    assert any("shared_expert_gate" in k for k in before)


def test_offloaded_model_trains_like_one_in_memory(task, tmp_path, ok):
    """--device auto with a tiny memory budget puts layers on disk; the routers must still train (and the same)."""
    moe, data = task
    ram, disk = tunekit.copy(moe, tmp_path / "ram"), tunekit.copy(moe, tmp_path / "disk")
    ok("tune", str(ram), *_data(data), *FAST)
    ok("tune", str(disk), *_data(data), *FAST, "--device", "auto", "--max-memory", "200KB")
    one, two = tunekit.routers(ram), tunekit.routers(disk)
    assert all(torch.allclose(one[k], two[k], atol=1e-5) for k in one)


def test_the_fit_alone_learns_a_known_routing(task, tmp_path, ok):
    """tune's defaults (the closed-form fit, no gradient step): each file is matched to the expert that fits it best
    and the routers send each word set to its expert."""
    moe, data = task
    out = tunekit.copy(moe, tmp_path / "out")
    loss_before, _ = _routing(out, data)
    ok("tune", str(out), "--data", f"b={data['b']}", "--data", f"a={data['a']}", "--seq-len", "32")  # b first
    loss_after, hits = _routing(out, data)
    record = json.loads((out / "tune.json").read_text())
    assert record["steps"] == 0 and record["fitted"]["mapping"] == {"b": 1, "a": 0}
    for domain in "ab":
        assert record["held_out_loss_after"][domain] < record["held_out_loss_before"][domain] - 0.4
        assert loss_after[domain] < 0.6 * loss_before[domain]
        assert min(hits[domain]) > 0.9, hits
    assert "A closed-form fit first" in (out / "README.md").read_text()
    sections = load_config(out / "moemerge.yml").router_training
    assert [section.fit for section in sections] == ["ridge"]
