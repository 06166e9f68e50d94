"""Prompt token ids (SPEC 6: text = bos_token + prompt, add_special_tokens=False) read with the `tokenizers` library
straight from tokenizer.json, so that a cheap merge does not import transformers; other tokenizers (no tokenizer.json,
or a model-specific class) are loaded with transformers' AutoTokenizer, whose ids these always equal."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moemerge.errors import SourceError
from moemerge.sources.headers import read_json

NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
GENERIC_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")  # these take tokenizer.json as it is


@dataclass(frozen=True)
class PromptTokenizer:
    """`encode(text)` gives token ids without adding special tokens; `bos` is the BOS text ("" when there is none)."""

    encode: Callable[[str], list[int]]
    bos: str

    def prompt_ids(self, prompts: list[str]) -> list[list[int]]:
        return [self.encode(self.bos + prompt) for prompt in prompts]


def _content(token: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict with its `content`."""
    return token.get("content") if isinstance(token, dict) else token


def _settings(folder: Path) -> dict[str, Any]:
    """tokenizer_config.json over special_tokens_map.json (as transformers reads them)."""
    settings: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            try:
                data = read_json(folder / name)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise SourceError(f"{folder / name}: invalid JSON ({exc})") from None
            settings.update(data if isinstance(data, dict) else {})
    return settings


def _added_tokens(settings: dict[str, Any]) -> list[Any]:
    """Tokens the config adds to tokenizer.json's own, as transformers does: its added_tokens_decoder, then every
    named and extra special token."""
    from tokenizers import AddedToken

    out = []
    decoder = settings.get("added_tokens_decoder") or {}
    for _, entry in sorted(decoder.items(), key=lambda item: int(item[0])):
        fields = {k: entry[k] for k in ("single_word", "lstrip", "rstrip", "normalized", "special") if k in entry}
        out.append(AddedToken(entry["content"], **fields))
    extra = settings.get("extra_special_tokens") or settings.get("additional_special_tokens") or []
    for token in [settings.get(key) for key in NAMED_SPECIAL] + list(extra if isinstance(extra, list) else []):
        if _content(token):
            out.append(AddedToken(_content(token), special=True))
    return out


def _from_json(file: Path, settings: dict[str, Any], bos: str) -> PromptTokenizer:
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as exc:  # noqa: BLE001 - the Rust parser's errors become one line naming the file
        raise SourceError(f"{file}: cannot read this tokenizer ({str(exc).splitlines()[0][:160]})") from None
    tokenizer.no_padding()
    tokenizer.no_truncation()
    present = {token.content for token in tokenizer.get_added_tokens_decoder().values()}
    for token in _added_tokens(settings):
        if token.content not in present:
            (tokenizer.add_special_tokens if token.special else tokenizer.add_tokens)([token])
            present.add(token.content)
    tokenizer.encode_special_tokens = bool(settings.get("split_special_tokens", False))
    return PromptTokenizer(lambda text: tokenizer.encode(text, add_special_tokens=False).ids, bos)


def _from_transformers(folder: Path, trust_remote_code: bool) -> PromptTokenizer:
    from moemerge.forward.loading import LoadOptions, load_tokenizer

    tokenizer = load_tokenizer(folder, LoadOptions(trust_remote_code=trust_remote_code))
    return PromptTokenizer(lambda text: tokenizer(text, add_special_tokens=False)["input_ids"],
                           tokenizer.bos_token or "")  # fmt: skip


def load(folder: Path, *, trust_remote_code: bool = False) -> PromptTokenizer:
    """The base model's tokenizer in `folder`, for prompts. tokenizer.json is read directly when the config names a
    generic class; transformers v5 rebuilds a model-specific class's pipeline (normaliser, pre-tokeniser) from the
    class itself, which can split text differently from tokenizer.json, so those are loaded by transformers."""
    settings = _settings(folder)
    file = folder / "tokenizer.json"
    if file.is_file() and settings.get("tokenizer_class") in GENERIC_CLASSES:
        return _from_json(file, settings, _content(settings.get("bos_token")) or "")
    return _from_transformers(folder, trust_remote_code)
