"""Running a merged model on one text: the expert each token is routed to (per layer and by majority), and a chat
reply; the model stays loaded between chat turns."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

_cache: dict[str, Any] = {"key": None, "stack": None, "model": None, "tokenizer": None}
_lock = threading.Lock()


def _key(folder: Path, load) -> tuple:
    stamps = tuple(sorted((p.name, p.stat().st_mtime_ns) for p in folder.glob("*.safetensors")))
    return (str(folder.resolve()), load, stamps)


def _loaded(folder: Path, load):
    """(model, tokenizer) for `folder`, loaded once and kept until another folder (or new routers) is asked for."""
    from moemerge.errors import ConfigError
    from moemerge.ui.lib import lib

    loading = lib("loading")

    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder}: not a merged model (no config.json); merge first")
    key = _key(folder, load)
    if _cache["key"] != key:
        release()
        stack = contextlib.ExitStack()
        model = stack.enter_context(loading.loaded_model(folder, load, causal_lm=True))
        _cache.update(key=key, stack=stack, model=model, tokenizer=loading.load_tokenizer(folder, load))
        loading.free_memory()
    return _cache["model"], _cache["tokenizer"]


def release() -> None:
    """Drop the kept model (before a job rewrites it, or when the page closes)."""
    if _cache["stack"] is not None:
        _cache["stack"].close()
    _cache.update(key=None, stack=None, model=None, tokenizer=None)


def token_routes(folder: Path, text: str, load) -> dict[str, Any]:
    """moemerge.forward.tokens.token_routes() on the kept model (`moemerge route --text` loads it for one call)."""
    from moemerge.ui.lib import lib

    with _lock:
        model, tokenizer = _loaded(folder, load)
        experts = lib("routing").expert_names(folder, int(lib("tokens").num_experts(model.config)))
        return lib("tokens").token_routes(model, tokenizer, text, experts)


def chat_reply(folder: Path, messages: list[dict[str, str]], load, *, greedy: bool = True, max_new_tokens: int = 64,
               temperature: float = 0.7, seed: int = 0) -> str:  # fmt: skip
    """The model's answer to a conversation: the tokenizer's chat template when it has one, else the plain text of
    the turns; greedy, or sampled with `temperature` (seeded)."""
    import torch

    with _lock:
        model, tokenizer = _loaded(folder, load)
        if getattr(tokenizer, "chat_template", None):
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            prompt = (tokenizer.bos_token or "") + "\n".join(m["content"] for m in messages)
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        device = model.get_input_embeddings().weight.device
        sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": max(temperature, 1e-3)}
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = model.generate(ids.to(device if device.type != "meta" else "cpu"), max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id, top_p=None, top_k=None,
                                 **sampling)  # fmt: skip
        return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
