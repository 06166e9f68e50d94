"""Token windows of text, one rule for `moemerge tune` and `moemerge eval` (so their figures mean the same thing):
each window starts the way the tokenizer starts a text (its BOS when it adds one, nothing otherwise) and scores every
token but its first."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


def prefix(tokenizer) -> list[int]:
    """What the tokenizer puts before a text: [BOS] when it adds one (SmolLM2's, for one, adds none)."""
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and tokenizer("x")["input_ids"][:1] == [bos] else []


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers warns that a text is "longer than the specified maximum sequence length": it is cut into
    windows right after, so the warning is a false alarm here."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def token_ids(tokenizer, text: str, needed: int | None = None) -> list[int]:
    """The text's token ids (no special tokens). With `needed`, only a head of a long text is tokenised (a 1 GB file
    capped at 4096 tokens costs nothing), with a margin so that the ids kept are the full text's own."""
    with _quiet():
        head = text[: (needed + 64) * 32] if needed is not None else text
        if len(head) < len(text):
            ids = tokenizer(head, add_special_tokens=False)["input_ids"]
            if len(ids) > needed + 16:
                return ids[: needed + 16]
        return tokenizer(text, add_special_tokens=False)["input_ids"]


def cut(ids: list[int], window: int, start: list[int], *, whole: bool = False) -> list[list[int]]:
    """`ids` cut into windows of `window` tokens, each beginning with `start` (prefix()); `whole`: only full windows
    (training stacks them), else the last, shorter one too when it has a token to score."""
    step = window - len(start)
    out = [start + ids[i : i + step] for i in range(0, len(ids), step)]
    return [w for w in out if len(w) == window] if whole else [w for w in out if len(w) >= 2]
