"""The Merge, Inspect, Tune and Publish tabs: buttons wired to actions.py, and the job display polled by a timer
(so a reloaded page shows the running job's progress again)."""

from __future__ import annotations

from typing import Any

from moemerge.ui import actions
from moemerge.ui.jobs import Runner, error_lines, progress_html

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7"]
MAJORITY = "majority over layers"


def _lines(exc: BaseException) -> str:
    return "\n".join(error_lines(exc))


def _image(path: str):
    """A chart as pixels (a file path outside Gradio's allowed folders would be refused)."""
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


def job_view(runner: Runner, kind: str, settings: actions.Settings, out_text: str):
    """(progress HTML, log, files table) of the current job when it is of `kind` (the files: the model folder's)."""
    job = runner.job if runner.job is not None and runner.job.kind == kind else None
    files: list[Any] = []
    try:
        files = actions.output_files(settings.workspace.path(out_text, what="model folder"))
    except Exception:  # noqa: BLE001 -- a half-typed folder name shows no files
        pass
    return progress_html(job), "\n".join(job.lines) if job else "", files


def merge_tab(settings: actions.Settings, runner: Runner, text, out) -> None:
    import gradio as gr

    with gr.Row():
        overwrite = gr.Checkbox(False, label="overwrite the model folder (swapped in only when complete)")
        report = gr.Checkbox(True, label="routing report in the card")
        start = gr.Button("Merge", variant="primary", elem_id="merge")
        cancel = gr.Button("Cancel", variant="stop", elem_id="merge-cancel")
    status = gr.Textbox(label="status", elem_id="merge-status")
    progress = gr.HTML(progress_html(None), elem_id="merge-progress")
    log = gr.Textbox(label="messages (as the CLI prints them)", lines=6, elem_id="merge-log")
    files = gr.Dataframe(headers=["file", "size"], label="model folder", elem_id="merge-files", interactive=False)

    def go(yaml_text: str, out_text: str, overwrite_: bool, report_: bool) -> str:
        try:
            where, work = actions.merge_work(
                yaml_text, out_text, settings, overwrite=overwrite_, routing_report=report_
            )
        except Exception as exc:  # noqa: BLE001
            return _lines(exc)
        return runner.start("merge", str(where), work)

    start.click(go, [text, out, overwrite, report], status)
    cancel.click(runner.cancel, None, status)
    timer = gr.Timer(0.5)
    outputs = [progress, log, files]
    timer.tick(lambda o: job_view(runner, "merge", settings, o), out, outputs, show_progress="hidden")


def inspect_tab(settings: actions.Settings, out) -> None:
    import gradio as gr

    from moemerge.ui import inference

    gr.Markdown("### Routing report (`moemerge route`)")
    route = gr.Button("Run the routing report", elem_id="route")
    with gr.Row():
        table = gr.Textbox(label="share of each prompt set's picks per expert", lines=8, elem_id="route-table")
        heatmap = gr.Image(label="routing heatmap (routing.png)", elem_id="route-heatmap", type="pil")

    def report(out_text: str):
        try:
            lines, png = actions.route_report(out_text, settings)
            return lines, _image(png)
        except Exception as exc:  # noqa: BLE001
            return _lines(exc), None

    route.click(report, out, [table, heatmap])

    gr.Markdown("### Tokens coloured by their expert (`moemerge route --text`)")
    sample = gr.Textbox("def add(a, b): return a + b\nOnce upon a time there was a dragon.", label="text", lines=3,
                        elem_id="tokens-text")  # fmt: skip
    with gr.Row():
        colour = gr.Button("Colour the tokens", elem_id="tokens-go")
        mode = gr.Radio([MAJORITY, "one layer"], value=MAJORITY, label="expert shown")
        layer = gr.Slider(0, 63, 0, step=1, label="layer (top-1 there)")
    routes = gr.State(None)
    tokens = gr.HighlightedText(label="top-1 expert per token", elem_id="tokens", show_legend=True)
    note = gr.Textbox(label="status", elem_id="tokens-status")

    def view(result, mode_, layer_):
        if not result:
            return gr.update(), ""
        picks = result["majority"] if mode_ == MAJORITY else result["top1"][min(int(layer_), result["layers"] - 1)]
        names = result["experts"]
        colours = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}
        pairs = [(t, names[e]) for t, e in zip(result["tokens"], picks)]
        return gr.update(value=pairs, color_map=colours), f"{len(pairs)} tokens, {result['layers']} layers"

    def run(out_text: str, sample_: str, mode_, layer_):
        try:
            folder = settings.workspace.path(out_text, what="model folder")
            result = inference.token_routes(folder, sample_, settings.load())
        except Exception as exc:  # noqa: BLE001
            return None, gr.update(value=[]), _lines(exc), gr.update()
        return (result, *view(result, mode_, layer_), gr.update(maximum=result["layers"] - 1))

    colour.click(run, [out, sample, mode, layer], [routes, tokens, note, layer])
    for control in (mode, layer):
        control.change(view, [routes, mode, layer], [tokens, note], show_progress="hidden")

    gr.Markdown("### Chat with the merged model")
    chat = gr.Chatbot(label="chat", elem_id="chat", height=260)
    with gr.Row():
        message = gr.Textbox(label="message", scale=4, elem_id="chat-message")
        send = gr.Button("Send", elem_id="chat-send")
        decoding = gr.Radio(["greedy", "sampling"], value="greedy", label="decoding")
        max_new = gr.Slider(1, 512, 48, step=1, label="max new tokens")
        temperature = gr.Slider(0.05, 2.0, 0.7, label="temperature (sampling)")

    def answer(out_text, history, text, decoding_, max_new_, temperature_):
        history = list(history or []) + [{"role": "user", "content": text}]
        try:
            folder = settings.workspace.path(out_text, what="model folder")
            reply = inference.chat_reply(folder, history, settings.load(), greedy=decoding_ == "greedy",
                                         max_new_tokens=int(max_new_), temperature=float(temperature_))  # fmt: skip
        except Exception as exc:  # noqa: BLE001
            reply = _lines(exc)
        return history + [{"role": "assistant", "content": reply}], ""

    for event in (send.click, message.submit):
        event(answer, [out, chat, message, decoding, max_new, temperature], [chat, message])

    gr.Markdown("### Loss per dataset (`moemerge eval`)")
    with gr.Row():
        uploads = gr.File(label="text files (named after the file)", file_count="multiple", type="filepath")
        named = gr.Textbox(label="or NAME=FILE lines (inside the work folder); none: the experts' prompts", lines=3)
        with gr.Column():
            compare = gr.Checkbox(True, label="--compare (also the base and each expert)")
            max_tokens = gr.Number(2048, label="max tokens per dataset", precision=0)
            score = gr.Button("Evaluate", elem_id="eval")
    with gr.Row():
        scores = gr.Textbox(label="loss table", lines=8, elem_id="eval-table")
        chart = gr.Image(label="eval.png", type="pil")

    def evaluate(out_text, uploads_, named_, compare_, max_tokens_):
        try:
            specs = actions.data_specs(named_, uploads_, settings)
            lines, png = actions.evaluate(out_text, specs, settings, compare=compare_,
                                          max_tokens=int(max_tokens_) if max_tokens_ else None)  # fmt: skip
            return lines, _image(png)
        except Exception as exc:  # noqa: BLE001
            return _lines(exc), None

    score.click(evaluate, [out, uploads, named, compare, max_tokens], [scores, chart])


def tune_tab(settings: actions.Settings, runner: Runner, out) -> None:
    import gradio as gr

    from moemerge.ui.lib import lib

    TuneSettings = lib("loop").TuneSettings  # noqa: N806

    with gr.Row():
        uploads = gr.File(label="training text, one file per domain", file_count="multiple", type="filepath")
        named = gr.Textbox(label="or NAME=FILE lines (inside the work folder)", lines=3, elem_id="tune-data")
    with gr.Row():
        steps = gr.Number(TuneSettings.steps, label="steps", precision=0)
        lr = gr.Number(TuneSettings.lr, label="learning rate")
        batch = gr.Number(TuneSettings.batch_tokens, label="tokens per step", precision=0)
        seq = gr.Number(TuneSettings.seq_len, label="tokens per window", precision=0)
        start = gr.Button("Tune the routers", variant="primary", elem_id="tune")
        cancel = gr.Button("Cancel", variant="stop", elem_id="tune-cancel")
    status = gr.Textbox(label="status", elem_id="tune-status")
    progress = gr.HTML(progress_html(None), elem_id="tune-progress")
    log = gr.Textbox(label="held-out loss before -> after", lines=6, elem_id="tune-log")

    def go(out_text, uploads_, named_, steps_, lr_, batch_, seq_):
        try:
            specs = actions.data_specs(named_, uploads_, settings)
            where, work = actions.tune_work(out_text, specs, settings, steps=steps_, lr=lr_, batch_tokens=batch_,
                                            seq_len=seq_)  # fmt: skip
        except Exception as exc:  # noqa: BLE001
            return _lines(exc)
        return runner.start("tune", str(where), work)

    start.click(go, [out, uploads, named, steps, lr, batch, seq], status)
    cancel.click(runner.cancel, None, status)
    timer = gr.Timer(0.5)
    timer.tick(lambda o: job_view(runner, "tune", settings, o)[:2], out, [progress, log], show_progress="hidden")


def publish_tab(settings: actions.Settings, out) -> None:
    import gradio as gr

    refresh = gr.Button("Show the model card", elem_id="card-refresh")
    card = gr.Markdown(elem_id="card")
    with gr.Row():
        repo = gr.Textbox(label="repo id (user/name)", elem_id="repo")
        private = gr.Checkbox(True, label="private")
        # used for this one push; cleared from the page afterwards; never written or logged
        token = gr.Textbox(label="Hugging Face token (optional: else HF_TOKEN or `hf auth login`)", type="password",
                           elem_id="token")  # fmt: skip
        push = gr.Button("Push to the Hub", variant="primary", elem_id="push")
    status = gr.Textbox(label="status", elem_id="push-status")

    def preview(out_text: str) -> str:
        try:  # the Hub shows the YAML front matter as a table: here, as the YAML it is
            text = actions.card(out_text, settings)
            head, sep, body = text.removeprefix("---\n").partition("\n---\n")
            return f"```yaml\n{head}\n```\n{body}" if text.startswith("---\n") and sep else text
        except Exception as exc:  # noqa: BLE001
            return _lines(exc)

    refresh.click(preview, out, card)
    push.click(lambda o, r, p, t: (actions.push(o, r, p, t, settings), ""), [out, repo, private, token],
               [status, token], api_visibility="private")  # fmt: skip
