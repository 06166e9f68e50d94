"""`moemerge ui`: serve the web page (parsing only; the page and its safety rules are moemerge.ui)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moemerge.commands.options import DeviceOpt, QuietOpt, VerboseOpt, setup_logging

app = typer.Typer(add_completion=False, rich_markup_mode=None)


@app.command(help="Serve moemerge's web page (Gradio): a config form with live checks, the merge with progress and "
                  "Cancel, routing, coloured tokens, chat, eval, router training and publishing. Needs "
                  "`pip install 'moemerge[ui]'`. Local (127.0.0.1) unless --host or --share says otherwise.")  # fmt: skip
def ui(
    host: Annotated[str, typer.Option(help="Address to serve on; anything but 127.0.0.1/localhost lets other machines in.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 7860,
    share: Annotated[bool, typer.Option("--share", help="Also serve through a public gradio.live link (anyone with the link can use the page).")] = False,
    workdir: Annotated[Path | None, typer.Option(help="The folder that paths typed into the page resolve in, and the only one they may reach (default: the current folder).")] = None,
    allow_any_path: Annotated[bool, typer.Option("--allow-any-path", help="Let typed paths leave --workdir (only for a page on 127.0.0.1 without --share).")] = False,
    device: DeviceOpt = "cpu",
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:  # fmt: skip
    import importlib.util

    from moemerge.errors import ConfigError

    setup_logging(verbose, quiet)
    if importlib.util.find_spec("gradio") is None:
        raise ConfigError("the web page needs Gradio: pip install 'moemerge[ui]'")
    from moemerge.ui.app import launch

    launch(host=host, port=port, share=share, workdir=workdir, allow_any_path=allow_any_path, device=device,
           quiet=quiet)  # fmt: skip
