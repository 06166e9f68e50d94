"""`moemerge push OUT REPO_ID`: upload a merged folder to the Hugging Face Hub (parsing and printing)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moemerge.commands.options import QuietOpt, VerboseOpt, setup_logging

app = typer.Typer(add_completion=False, rich_markup_mode=None)


@app.command(help="Upload a merged folder to the Hugging Face Hub (creates the repo if needed). The token comes "
                  "from HF_TOKEN or `hf auth login` and is never printed or written.")  # fmt: skip
def push(
    out: Annotated[Path, typer.Argument(help="A folder written by moemerge.")],
    repo_id: Annotated[str, typer.Argument(help="Target repo, e.g. your-name/My-MoE-4x7B.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo as private.")] = False,
    revision: Annotated[str | None, typer.Option(help="Branch to push to (created if missing); default main.")] = None,
    commit_message: Annotated[str | None, typer.Option(help="Commit message.")] = None,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:  # fmt: skip
    from moemerge.errors import ConfigError
    from moemerge.publish import upload

    setup_logging(verbose, quiet)
    if not (out / "config.json").is_file():
        raise ConfigError(f"{out}: not a merged model (no config.json); merge first, then push")
    url = upload.push(out, repo_id, private=private, revision=revision, message=commit_message)
    if not quiet:
        print(f"pushed {out} to {url}")
