"""Tiny offline models and a tokenizer, for the demo and the tests (nothing is downloaded).

`python -m moemerge.tiny DIR` writes a base model and three experts (llama family) into DIR.
"""

from __future__ import annotations

import sys
from pathlib import Path

CORPUS = [
    "def add(a, b): return a + b", "for i in range(10): print(i)", "import numpy as np", "class Model: pass",
    "Once upon a time there was a dragon who lived in a castle.", "The knight rode through the dark forest.",
    "Solve for x: 2x + 3 = 7.", "The integral of x squared is x cubed over three.", "What is 12 times 7?",
    "Hello! How are you today?", "Tell me about the weather in Paris.", "Thank you, that was helpful.",
    "Write a poem about the sea.", "The quick brown fox jumps over the lazy dog.", "Explain quantum physics simply.",
]  # fmt: skip
DEMO_DRIFT = 0.3  # the demo's experts stay near the base, as fine-tunes do, so the base's hidden states route them
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3")


def make_tokenizer(folder: Path, *, vocab_size: int = 300):
    """A byte-level BPE tokenizer trained on a built-in corpus, saved as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.save_pretrained(str(folder))
    return fast


def model_config(family: str = "llama", **overrides):
    """A tiny config of `family` (2 layers, hidden 32) with float32 weights."""
    import transformers

    classes = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config",
               "phi3": "Phi3Config"}  # fmt: skip
    fields = {
        "vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256, "bos_token_id": 1,
        "eos_token_id": 2, "pad_token_id": 3, "initializer_range": 0.2, "tie_word_embeddings": False,
    }  # fmt: skip
    if family == "qwen3":
        fields["head_dim"] = fields["hidden_size"] // fields["num_attention_heads"]
    fields.update(overrides)
    return getattr(transformers, classes[family])(**fields)


def make_model(folder: Path, *, family: str = "llama", seed: int = 0, tokenizer: bool = True, **overrides) -> Path:
    """Save a randomly initialised tiny model (seeded) and, by default, the tiny tokenizer into `folder`."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(model_config(family, **overrides), dtype=torch.float32)
    model.generation_config.pad_token_id = 3
    folder = Path(folder)
    model.save_pretrained(str(folder))
    if tokenizer:
        make_tokenizer(folder)
    return folder


def make_expert(base: Path, folder: Path, *, seed: int, drift: float | None = None) -> Path:
    """A copy of `base` standing in for a fine-tune: its MLP weights are fresh random ones, or with `drift` the
    base's plus noise of that relative size (like a real fine-tune, which stays close to its base)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".mlp." in name:
                noise = torch.randn(param.shape, generator=generator) * 0.2
                param.copy_(noise if drift is None else param + drift * noise)
    model.save_pretrained(str(folder))
    make_tokenizer(folder)
    return Path(folder)


def main(argv: list[str] | None = None) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = Path((argv or sys.argv[1:] or ["demo/models"])[0])
    base = make_model(folder / "base", family="llama", seed=0, num_hidden_layers=4, hidden_size=64,
                      intermediate_size=128)  # fmt: skip
    for i, name in enumerate(("chat", "code", "math")):
        make_expert(base, folder / name, seed=100 + i, drift=DEMO_DRIFT)
    print(f"wrote a tiny base model and 3 experts to {folder}")


if __name__ == "__main__":
    main()
