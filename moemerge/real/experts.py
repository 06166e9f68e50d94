"""Real experts: the base with only its MLP weights (gate/up/down_proj of every layer) fine-tuned on one domain,
seeded and saved as a full float32 model folder; and the mean held-out token loss used to judge them."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from moemerge.real.cache import progress

MLP = re.compile(r"model\.layers\.\d+\.mlp\.(gate|up|down)_proj\.weight")
TRAINING = {"steps": 30, "batch": 4, "tokens": 128, "lr": 2e-4, "warmup": 3}


def threads() -> int:
    """Every core of an idle machine; one thread when others keep the cores busy (two spinning threads per core
    then cost five times the CPU time of one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 1 if os.getloadavg()[0] > cores - 0.5 else cores


def _load(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    finally:
        hf_logging.enable_progress_bar()
    return model, AutoTokenizer.from_pretrained(str(folder))


def _windows(tokenizer, text: str, tokens: int):
    """The text's token ids cut into full windows of `tokens`: a (windows, tokens) tensor."""
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    count = len(ids) // tokens
    return torch.tensor(ids[: count * tokens]).view(count, tokens)


def mean_loss(model, tokenizer, text: str, *, tokens: int = 128, batch: int = 8) -> float:
    """Mean next-token loss of `model` over `text`, cut into windows of `tokens` (every window counts equally)."""
    import torch

    windows = _windows(tokenizer, text, tokens)
    total = 0.0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(windows), batch):
            rows = windows[start : start + batch]
            total += model(input_ids=rows, labels=rows).loss.item() * len(rows)
    return total / len(windows)


def fine_tune(model, tokenizer, text: str, *, seed: int, steps: int, batch: int, tokens: int, lr: float, warmup: int,
              on_step: Callable[[int, float], None] = lambda step, loss: None) -> list[float]:  # fmt: skip
    """Train only the MLP weights on random windows of `text` (seeded); returns the loss of each step."""
    import torch

    trained = [p for name, p in model.named_parameters() if MLP.fullmatch(name)]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    windows = _windows(tokenizer, text, tokens)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(trained, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    model.train()
    losses = []
    for _ in range(steps):
        rows = windows[torch.randint(len(windows), (batch,), generator=generator)]
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        on_step(len(losses), losses[-1])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return losses


def build_expert(base: Path, folder: Path, text: str, *, seed: int, name: str) -> None:
    """Fine-tune the base on `text` and save it (config, float32 safetensors, the base's tokenizer files)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads())
    torch.manual_seed(seed)
    try:
        model, tokenizer = _load(base)
        start = time.perf_counter()
        progress(f"training the {name} expert: {TRAINING['steps']} steps of {TRAINING['batch']} x "
                 f"{TRAINING['tokens']} tokens on {torch.get_num_threads()} thread(s)")  # fmt: skip

        def report(step: int, loss: float) -> None:
            if step % 10 == 0 and step < TRAINING["steps"]:
                progress(f"{name} expert: step {step}/{TRAINING['steps']}, loss {loss:.3f}")

        losses = fine_tune(model, tokenizer, text, seed=seed, on_step=report, **TRAINING)
        seconds = time.perf_counter() - start
        progress(f"{name} expert: train loss {sum(losses[:3]) / 3:.3f} -> {sum(losses[-3:]) / 3:.3f} "
                 f"in {seconds:.0f} s")  # fmt: skip
        model.save_pretrained(str(folder))
        record = {**TRAINING, "seed": seed, "seconds": round(seconds, 1), "threads": torch.get_num_threads(),
                  "losses": [round(x, 4) for x in losses]}  # fmt: skip
        (folder / "training.json").write_text(json.dumps(record, indent=1))
    finally:
        torch.set_num_threads(previous)
    for path in base.iterdir():  # the tokenizer, chat template and generation config, byte for byte
        if path.is_file() and not path.name.startswith((".", "model")) and path.name != "config.json":
            shutil.copyfile(path, folder / path.name)
