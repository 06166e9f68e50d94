"""Training text for `moemerge tune`: `NAME=FILE` specs, file checks (every problem at once), sha256, and the token
windows each file is cut into, with the last windows of each file held out."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moemerge.config.schema import read_text_file
from moemerge.errors import ConfigError, problems_error
from moemerge.forward.windows import cut, prefix, token_ids

MAX_DATA_BYTES = 1024 * 2**20
HELD_OUT_SHARE = 10  # one window in ten (the last ones of each file) is held out ...
HELD_OUT_MAX = 16  # ... up to this many, so the before/after evaluation stays cheap


@dataclass(frozen=True)
class DataFile:
    name: str
    path: Path
    sha256: str
    tokens: int


def parse_specs(specs: list[str], *, where: str = "--data") -> dict[str, Path]:
    """`NAME=FILE` or `FILE` (named after its stem) -> {name: path}; names must be distinct."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep:
            name, file = Path(spec).stem, spec
        if not name or not file:
            raise ConfigError(f"{where} {spec!r}: use NAME=FILE or FILE")
        if name in out:
            raise ConfigError(f"{where}: the name {name!r} is given twice; name the files NAME=FILE")
        out[name] = Path(file)
    if not out:
        raise ConfigError(f"{where}: give at least one text file to train on")
    return out


def _read(path: Path) -> str:
    try:
        return read_text_file(path, MAX_DATA_BYTES, "training data file")
    except FileNotFoundError:
        raise ConfigError(f"{path}: training data file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the training data file is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the training data file ({exc.strerror or exc})") from None


def check(files: dict[str, Path]) -> list[str]:
    """What is wrong with each file (missing, unreadable, not text, empty), without tokenising."""
    problems = []
    for path in files.values():
        try:
            if not _read(path).strip():
                problems.append(f"{path}: the training data file is empty")
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


def windows(files: dict[str, Path], tokenizer, seq_len: int) -> tuple[dict[str, Any], dict[str, Any], list[DataFile]]:
    """(train, held_out, info): per name, a (windows, seq_len) tensor of token ids, cut by eval's rule
    (moemerge.forward.windows: BOS first only when the tokenizer adds one). Raises with every file that is too short to give
    a training and a held-out window."""
    import torch

    problems = check(files)
    if problems:
        raise problems_error(ConfigError, problems)
    train, held_out, info, short = {}, {}, [], []
    start = prefix(tokenizer)
    for name, path in files.items():
        ids = token_ids(tokenizer, _read(path))
        found = cut(ids, seq_len, start, whole=True)
        if len(found) < 2:
            short.append(f"{path}: {len(ids)} tokens, fewer than two windows of {seq_len}; give more text "
                         "or a smaller --seq-len")  # fmt: skip
            continue
        rows = torch.tensor(found)
        keep = max(1, min(HELD_OUT_MAX, len(found) // HELD_OUT_SHARE))
        train[name], held_out[name] = rows[:-keep], rows[-keep:]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        info.append(DataFile(name, path.resolve(), digest, len(ids)))
    if short:
        raise problems_error(ConfigError, short)
    return train, held_out, info
