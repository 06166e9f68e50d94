"""The Gradio page: builds the tabs (Config here, the others in tabs.py) and launches it with the safety rules."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from moemerge.ui import actions, form
from moemerge.ui.jobs import Runner
from moemerge.ui.paths import Workspace

log = logging.getLogger(__name__)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
CSS = """
.mm-error p { color: #b42318; font-size: 0.9em; margin: 0 }
.mm-progress progress { width: 60%; height: 1em }
.mm-stage { font-family: monospace; margin: 0.2em 0 }
#route-table textarea, #eval-table textarea, #plan textarea, #merge-log textarea { font-family: monospace }
"""


def slot_id(slot: str) -> str:
    """`experts[2]` -> `err-experts-2`: the element id of a slot's problem box (the browser test finds it so)."""
    return "err-" + slot.replace("[", "-").replace("]", "").replace(".", "-").replace("_", "-")


def problem_text(problems: list[str]) -> str:
    return "\n\n".join(f"⚠ {p}" for p in problems)


def build(settings: actions.Settings, runner: Runner | None = None):
    """The page's Blocks (not launched: `launch()` serves it, tests drive its functions or a browser)."""
    import gradio as gr

    from moemerge.ui import tabs

    runner = runner or Runner()
    with gr.Blocks(title="moemerge", analytics_enabled=False) as page:
        gr.Markdown(f"## moemerge: build, inspect, tune and publish a Mixture-of-Experts\nWork folder: "
                    f"`{settings.workspace.root}`" + (" (any path allowed)" if settings.workspace.anywhere else
                                                      " (typed paths resolve inside it)"))  # fmt: skip
        out = gr.Textbox("out/moe", label="Model folder (the merge's output; Inspect, Tune and Publish use it)",
                         elem_id="out")  # fmt: skip
        with gr.Tabs():
            with gr.Tab("Config", id="config"):
                text = config_tab(settings)
            with gr.Tab("Merge", id="merge"):
                tabs.merge_tab(settings, runner, text, out)
            with gr.Tab("Inspect", id="inspect"):
                tabs.inspect_tab(settings, out)
            with gr.Tab("Tune", id="tune"):
                tabs.tune_tab(settings, runner, out)
            with gr.Tab("Publish", id="publish"):
                tabs.publish_tab(settings, out)
    return page


def config_tab(settings: actions.Settings):
    """Form and YAML, kept in sync through `.input` events only (a program's update never echoes back), and the
    plan's checks shown at each field (as you type: only the latest pending check runs)."""
    import gradio as gr

    fields: dict[str, Any] = {}
    boxes: dict[str, Any] = {}
    groups = []

    def box(slot: str):
        boxes[slot] = gr.Markdown("", elem_id=slot_id(slot), elem_classes=["mm-error"], visible=False)

    with gr.Row():
        example = gr.Button("Load the example", elem_id="load-example")
        path = gr.Textbox(label="Load a config file (moemerge.yml, mergekit-moe YAML)", scale=3, elem_id="load-path")
        load = gr.Button("Load", elem_id="load-file")
        check = gr.Button("Check (plan)", variant="primary", elem_id="check")
    with gr.Row():
        with gr.Column(scale=3):
            fields["base_model"] = gr.Textbox(label="base_model", elem_id="f-base-model")
            box("base_model")
            with gr.Row():
                fields["gate_mode"] = gr.Dropdown(form.GATE_MODES, value="hidden", label="gate_mode")
                fields["dtype"] = gr.Dropdown(form.DTYPES, value=form.DTYPES[0], label="dtype")
                fields["experts_per_token"] = gr.Number(2, label="experts_per_token (top-k)", precision=0)
                fields["architecture"] = gr.Dropdown(
                    form.ARCHITECTURES, value=form.ARCHITECTURES[0], label="architecture"
                )
                fields["seed"] = gr.Number(None, label="seed", precision=0)
            for slot in ("gate_mode", "dtype", "experts_per_token", "architecture", "seed"):
                box(slot)
            fields["num_experts"] = gr.Slider(1, form.MAX_EXPERTS, 2, step=1, label="experts", elem_id="f-num-experts")
            for i in range(form.MAX_EXPERTS):
                with gr.Group(visible=i < 2) as group:
                    where = f"experts[{i}]"
                    fields[f"{where}.source_model"] = gr.Textbox(
                        label=f"{where}.source_model", elem_id=f"f-expert-{i}-model"
                    )
                    with gr.Row():
                        fields[f"{where}.positive_prompts"] = gr.Textbox(label="positive_prompts (one per line)", lines=2,
                                                                         elem_id=f"f-expert-{i}-positive")  # fmt: skip
                        fields[f"{where}.negative_prompts"] = gr.Textbox(
                            label="negative_prompts (one per line)", lines=2
                        )
                    box(where)
                groups.append(group)
            with gr.Accordion("Shared expert and router training (optional)", open=False):
                fields["shared_experts[0].source_model"] = gr.Textbox(label="shared_experts[0].source_model")
                fields["shared_experts[0].positive_prompts"] = gr.Textbox(label="its positive_prompts", lines=2)
                box("shared_experts")
                fields["router_training.data"] = gr.Textbox(label="router_training.data (NAME=FILE or FILE, one per line)",
                                                            lines=2)  # fmt: skip
                fields["router_training.steps"] = gr.Number(None, label="router_training.steps", precision=0)
                box("router_training")
        with gr.Column(scale=2):
            text = gr.Code(form.dump({"base_model": "", "experts": [{"source_model": ""}, {"source_model": ""}]}),
                           language="yaml", label="YAML (moemerge.yml)", elem_id="yaml", lines=24)  # fmt: skip
            box("config")
            summary = gr.Textbox(label="plan", lines=12, elem_id="plan")
    ordered = [fields[k] for k in form.FIELDS]
    shown = [boxes[s] for s in form.SLOTS] + [summary]

    last = gr.State(None)  # the YAML last checked: a focus change without an edit checks nothing again

    def checked(yaml_text: str, last_text: str | None, full: bool = False):
        if not full and yaml_text == last_text:
            return [gr.update() for _ in shown] + [last_text]
        placed, plan = actions.check(yaml_text, settings, full=full)
        return [gr.update(value=problem_text(placed[s]), visible=bool(placed[s])) for s in form.SLOTS] + [
            plan,
            yaml_text,
        ]

    def to_yaml(yaml_text: str, *values):
        values = dict(zip(form.FIELDS, values))
        if values == form.yaml_to_form(yaml_text)[0]:
            return gr.update()  # nothing changed (a blur without an edit): keep the user's YAML as written
        return form.form_to_yaml(values, yaml_text)

    def to_form(yaml_text: str):
        values, problem = form.yaml_to_form(yaml_text)
        if values is None:  # half-typed YAML: leave the form as it is
            return [gr.update() for _ in ordered] + [gr.update() for _ in groups]
        return [values[k] for k in form.FIELDS] + [
            gr.update(visible=i < values["num_experts"]) for i in range(len(groups))
        ]

    def visible(count):
        return [gr.update(visible=i < int(count)) for i in range(len(groups))]

    quick = {
        "fn": checked,
        "inputs": [text, last],
        "outputs": [*shown, last],
        "trigger_mode": "always_last",
        "concurrency_id": "check",
        "show_progress": "hidden",
    }
    for key, field in fields.items():
        # `.input` and `.blur`: the user's edits only (Gradio sends no input event for a field emptied by the user)
        for event in (field.release,) if key == "num_experts" else (field.input, field.blur):
            event(to_yaml, [text, *ordered], text, show_progress="hidden").then(**quick)
    fields["num_experts"].change(visible, fields["num_experts"], groups, show_progress="hidden")
    text.input(to_form, text, ordered + groups, show_progress="hidden").then(**quick)

    def read(path_text: str):
        try:
            return settings.workspace.path(path_text, what="config file").read_text(encoding="utf-8")
        except Exception as exc:  # noqa: BLE001 -- shown at the config, as one line
            return f"# error: {exc}\n"

    for button, fn, inputs in ((example, lambda: form.EXAMPLE, []), (load, read, [path])):
        button.click(fn, inputs, text).then(to_form, text, ordered + groups).then(**quick)
    check.click(lambda t, seen: checked(t, seen, True), [text, last], [*shown, last], concurrency_id="check")
    return text


def check_exposure(host: str, port: int, *, share: bool, workdir: Path | None, allow_any_path: bool) -> None:
    """--allow-any-path only on this machine; a warning line for a page other machines can reach."""
    from moemerge.errors import ConfigError

    local = host in LOCAL_HOSTS and not share
    if allow_any_path and not local:
        raise ConfigError("--allow-any-path: only for a page on 127.0.0.1 (without --share): anyone who can open "
                          "the page could read and write any of your files")  # fmt: skip
    if not local:
        where = "a public gradio.live link" if share else f"{host}:{port}"
        log.warning("serving on %s: anyone who reaches it can run merges and read the models in %s", where,
                    Path(workdir or Path.cwd()).resolve())  # fmt: skip


def launch(*, host: str = "127.0.0.1", port: int = 7860, share: bool = False, workdir: Path | None = None,
           allow_any_path: bool = False, device: str = "cpu", inline: bool | None = None, block: bool = True,
           quiet: bool = False):  # fmt: skip
    """Serve the page. Local by default; `share` (a public gradio.live link) and other hosts warn; typed paths stay
    inside `workdir` unless `allow_any_path`, which only a page on this machine may have."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    check_exposure(host, port, share=share, workdir=workdir, allow_any_path=allow_any_path)
    root = Path(workdir or Path.cwd()).resolve()
    root.mkdir(parents=True, exist_ok=True)
    settings = actions.Settings(Workspace(root, allow_any_path), device=device)
    page = build(settings)
    page.queue(default_concurrency_limit=1)
    if not quiet and block:
        print(f"moemerge ui: http://{'127.0.0.1' if host in LOCAL_HOSTS else host}:{port} (Ctrl-C stops it)")
    return page.launch(server_name=host, server_port=port, share=share, inline=inline, prevent_thread_lock=not block,
                       css=CSS, quiet=True, allowed_paths=[str(root)], footer_links=[])  # fmt: skip
