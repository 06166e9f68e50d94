"""The page's callbacks without a browser: form <-> YAML, checks placed at their fields, paths kept inside the work
folder, one job at a time, Cancel as Ctrl-C, the token masked, and a merge -> route -> chat run on tiny models."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
import yaml

from moemerge.ui import actions, form
from moemerge.ui.jobs import Cancelled, Job, Runner, progress_html
from moemerge.ui.paths import Workspace


@pytest.fixture
def workdir(tmp_path, models):
    """A work folder with a tiny base and three experts under models/ (symlinks to the session's models)."""
    base = models.base()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "base").symlink_to(base)
    for i, name in enumerate(("chat", "code", "math")):
        (tmp_path / "models" / name).symlink_to(models.expert(base, seed=10 + i))
    return tmp_path


def settings(root: Path, **kw) -> actions.Settings:
    return actions.Settings(Workspace(root, **kw))


def test_form_yaml_round_trip_keeps_what_the_form_does_not_show():
    text = form.EXAMPLE.replace("experts:\n", "tokenizer_source: base\nexperts:\n").replace(
        "  - source_model: models/code\n", "  - source_model: models/code\n    noise_scale: 0.01\n"
    )
    values, problem = form.yaml_to_form(text)
    assert problem is None and values["num_experts"] == 3 and values["experts[1].source_model"] == "models/code"
    assert values["experts[2].positive_prompts"] == "Solve for x: 2x + 3 = 7.\nWhat is 12 times 7?"
    assert yaml.safe_load(form.form_to_yaml(values, text)) == yaml.safe_load(text)  # unchanged form: same config
    values["experts[1].positive_prompts"] = "def f(): pass\n\nimport os"
    values["num_experts"] = 2
    values["dtype"] = form.DTYPES[0]
    data = yaml.safe_load(form.form_to_yaml(values, text))
    assert data["experts"][1] == {"source_model": "models/code", "noise_scale": 0.01,
                                  "positive_prompts": ["def f(): pass", "import os"]}  # fmt: skip
    assert len(data["experts"]) == 2 and "dtype" not in data and data["tokenizer_source"] == "base"
    assert form.yaml_to_form("experts: [")[1].startswith("config: invalid YAML at line 1")


def test_router_training_and_shared_expert_fields():
    values, _ = form.yaml_to_form(form.EXAMPLE)
    values.update({"router_training.data": "code=data/code.txt\nmath=data/math.txt", "router_training.steps": 5,
                   "shared_experts[0].source_model": "models/chat"})  # fmt: skip
    data = form.form_to_data(values)
    assert data["router_training"] == {"data": {"code": "data/code.txt", "math": "data/math.txt"}, "steps": 5}
    assert data["shared_experts"] == [{"source_model": "models/chat"}]
    assert form.yaml_to_form(form.dump(data))[0]["router_training.data"] == "code=data/code.txt\nmath=data/math.txt"


def test_checks_are_shown_at_their_fields(workdir):
    s = settings(workdir)
    placed, summary = actions.check(form.EXAMPLE, s)
    assert not any(placed.values()) and summary.startswith("ok: MixtralForCausalLM, 3 experts")
    no_prompts = form.EXAMPLE.replace('    positive_prompts: ["def add', '    negative_prompts: ["def add')
    placed, summary = actions.check(no_prompts, s)
    assert placed["experts[1]"] == ["experts[1].positive_prompts: gate_mode 'hidden' needs positive prompts for every "
                                    "expert (or use gate_mode random)"] and summary == ""  # fmt: skip
    assert not any(v for k, v in placed.items() if k != "experts[1]")
    placed, _ = actions.check(form.EXAMPLE.replace("gate_mode: hidden", "gateway_mode: hidden"), s)
    assert placed["gate_mode"] == ["config: unknown key 'gateway_mode' (did you mean 'gate_mode'?)"]
    placed, _ = actions.check(form.EXAMPLE.replace("models/math", "./models/nothing-here"), s)
    assert placed["experts[2]"] and "nothing-here" in placed["experts[2]"][0]
    placed, summary = actions.check(form.EXAMPLE, s, full=True)
    assert "peak RAM" in summary and "not qwen3_moe" in summary  # the plan's own summary


def test_paths_stay_inside_the_work_folder(workdir, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    s = settings(workdir)
    placed, _ = actions.check(form.EXAMPLE.replace("models/base", str(elsewhere)), s)
    assert placed["base_model"] == [f"base_model: {elsewhere} is outside the work folder {workdir.resolve()}; use a "
                                    "path inside it (or run `moemerge ui --allow-any-path` on your own machine)"]  # fmt: skip
    with pytest.raises(ValueError, match="outside the work folder"):
        actions.merge_work(form.EXAMPLE, "../out", s, overwrite=False, routing_report=False)
    assert Workspace(workdir, anywhere=True).path(str(elsewhere)) == elsewhere.resolve()
    assert Workspace(workdir).model_ref("org/model", what="base_model") == "org/model"  # a Hub id stays one
    data, problems = Workspace(workdir).config_data(yaml.safe_load(form.EXAMPLE))
    assert not problems and data["experts"][0]["source_model"] == str((workdir / "models" / "chat").resolve())


def test_one_job_at_a_time_and_a_reload_finds_it():
    runner, release = Runner(), threading.Event()

    def work(job: Job):
        job.progress("tensors", 5e6, 10e6)
        release.wait(10)
        return "finished"

    assert runner.start("merge", "out/a", work) == "merge of out/a started"
    assert runner.start("tune", "out/b", work).startswith("error: a merge of out/a is running; wait for it or cancel")
    assert "value='5000000.0' max='10000000.0'" in progress_html(runner.job)  # the server's state, for any page
    release.set()
    while runner.running():
        time.sleep(0.01)
    assert runner.job.state == "done" and runner.job.result == "finished"
    assert runner.cancel() == "nothing is running"


def test_cancel_is_ctrl_c_nothing_half_written(workdir):
    s = settings(workdir)
    out, work = actions.merge_work(form.EXAMPLE, "out/moe", s, overwrite=False, routing_report=False)
    runner = Runner()
    started = threading.Event()

    def slow(job: Job):  # press Cancel once the merge has begun reporting progress
        original = job.progress

        def progress(stage, done, total, text=None):
            started.set()
            time.sleep(0.2)
            original(stage, done, total, text)

        job.progress = progress
        return work(job)

    runner.start("merge", str(out), slow)
    assert started.wait(120)
    assert runner.cancel().startswith("cancelling the merge")
    while runner.running():
        time.sleep(0.05)
    assert runner.job.state == "cancelled"
    assert runner.job.lines[-1] == "error: cancelled (as Ctrl-C); nothing was written"
    assert not out.exists() and not [p for p in out.parent.iterdir()] if out.parent.exists() else True
    job = Job("merge", "x")
    job.cancel_requested = True
    with pytest.raises(Cancelled):
        job.progress("tensors", 1, 2)
    assert issubclass(Cancelled, KeyboardInterrupt)  # the library's Ctrl-C clean-up runs for it


def test_merge_route_tokens_chat_and_card(workdir):
    from moemerge.ui import inference

    s = settings(workdir)
    runner = Runner()
    out, work = actions.merge_work(form.EXAMPLE, "out/moe", s, overwrite=False, routing_report=True)
    runner.start("merge", str(out), work)
    while runner.running():
        time.sleep(0.1)
    lines = runner.job.lines
    assert runner.job.state == "done", lines
    assert any(line.startswith(f"wrote {out} (MixtralForCausalLM, 3 experts") for line in lines)
    assert lines[-1] == f"{out}: verified" and set(runner.job.stages) >= {"prompts", "tensors", "verify"}
    assert ["model.safetensors", "1.543 MB"] in actions.output_files(out) or actions.output_files(out)
    table, png = actions.route_report("out/moe", s)
    assert "own-expert hit" in table and Path(png).is_file()
    routes = inference.token_routes(out, "def add(a, b): return a + b", s.load())
    assert "".join(routes["tokens"]) == "def add(a, b): return a + b"
    assert [e[:3] for e in routes["experts"]] == ["0: ", "1: ", "2: "] and len(routes["top1"]) == routes["layers"]
    assert all(len(layer) == len(routes["tokens"]) for layer in routes["top1"])
    assert len(routes["majority"]) == len(routes["tokens"])
    reply = inference.chat_reply(out, [{"role": "user", "content": "Hello"}], s.load(), max_new_tokens=4)
    again = inference.chat_reply(out, [{"role": "user", "content": "Hello"}], s.load(), max_new_tokens=4)
    assert isinstance(reply, str) and reply == again  # greedy: the same answer twice
    inference.release()
    assert "Mixture-of-Experts" in actions.card("out/moe", s)


def test_push_uses_the_token_once_and_never_shows_it(workdir, monkeypatch):
    from moemerge.ui.lib import lib

    (workdir / "out").mkdir()
    (workdir / "out" / "config.json").write_text("{}")
    seen = {}

    def fake_push(folder, repo_id, *, private, revision, message, token=None):
        seen.update(token=token, private=private)
        raise RuntimeError(f"401 for token {token}")

    monkeypatch.setattr(lib("upload"), "push", fake_push)
    message = actions.push("out", "me/moe", True, "hf_secret123", settings(workdir))
    assert seen == {"token": "hf_secret123", "private": True}
    assert "hf_secret123" not in message and "***" in message and message.startswith("error: RuntimeError")
    assert "hf_secret123" not in "".join(p.read_text(errors="ignore") for p in workdir.rglob("*") if p.is_file())


def test_launch_refuses_any_path_on_a_shared_page(tmp_path):
    pytest.importorskip("gradio")
    from moemerge.ui.app import launch

    with pytest.raises(ValueError, match="only for a page on 127.0.0.1"):
        launch(share=True, allow_any_path=True, workdir=tmp_path)
    with pytest.raises(ValueError, match="only for a page on 127.0.0.1"):
        launch(host="0.0.0.0", allow_any_path=True, workdir=tmp_path)


def test_route_text_on_the_command_line(workdir, cli):
    config = workdir / "moe.yml"
    config.write_text(form.EXAMPLE.replace("models/", str(workdir / "models") + "/"))
    code, _, err = cli(config, workdir / "out")
    assert code == 0, err
    code, out, err = cli("route", workdir / "out", "--text", "def add(a, b): return a + b")
    assert code == 0, err
    legend, tokens = out.splitlines()
    assert legend.startswith("experts:  0: ") and "(top-1 expert, the majority over layers of 2)" in legend
    assert re.sub(r"\[\d\]", "", tokens) == "def add(a, b): return a + b"  # a pipe: each token's expert in brackets
    code, _, err = cli("route", workdir / "out", "--text", "hi", "--layer", "5")
    assert code == 2 and err.strip() == "error: --layer 5: the model has 2 layers (0 to 1)"


def test_ui_verb_refuses_any_path_on_a_shared_page(cli, tmp_path):
    pytest.importorskip("gradio")
    code, _, err = cli("ui", "--share", "--allow-any-path", "--workdir", tmp_path)
    assert code == 2 and err.startswith("error: --allow-any-path: only for a page on 127.0.0.1")
