"""Speed and memory of the hidden-state pass against a plain forward over the same tokens.

Builds a Llama-like float32 base (hidden 512, 8 layers) and 4 experts x 20 prompts of 30-200 tokens, then in one
child process each: (a) moemerge's `hidden` gate (load + every prompt with output_hidden_states), (b) the floor:
load + one plain forward over the same tokens in the same batches, no hidden states kept. Prints the seconds,
tokens/s, their ratio (target <= 1.3) and each run's peak RSS (target: the same model + one chunk of activations,
nothing per expert).

`--real` times the real base instead (SmolLM2-135M-Instruct, 30 layers, built once by moemerge.real) on 3 experts x
20 prompts of 30-200 tokens cut from the real held-out texts (code, math, prose).

    python benchmarks/hidden_pass.py [--device cpu|cuda] [--layers 8] [--real]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = Path(__file__).resolve()


def build(folder: Path, layers: int) -> list[list[str]]:
    from moemerge import tiny

    tiny.make_model(folder, family="llama", hidden_size=512, intermediate_size=1408, num_hidden_layers=layers,
                    num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024,
                    initializer_range=0.02)  # fmt: skip
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    rng = random.Random(0)
    sets = []
    for _ in range(4):
        prompts = []
        for _ in range(20):
            target, text = rng.randint(30, 200), ""
            while len(tokenizer(text)["input_ids"]) < target:
                text += rng.choice(tiny.CORPUS) + " "
            prompts.append(text.strip())
        sets.append(prompts)
    return sets


def build_real(folder: Path) -> list[list[str]]:
    """The real base (linked into `folder`) and 20 prompts of 30-200 tokens per domain from its held-out texts."""
    from transformers import AutoTokenizer

    from moemerge.real import assets

    found = assets()
    folder.symlink_to(found.base, target_is_directory=True)
    tokenizer = AutoTokenizer.from_pretrained(str(found.base))
    rng = random.Random(0)
    sets = []
    for path in found.eval_files.values():
        ids = tokenizer(path.read_text(), add_special_tokens=False)["input_ids"]
        starts = [rng.randrange(len(ids) - 200) for _ in range(20)]
        sets.append([tokenizer.decode(ids[s : s + rng.randint(30, 200)]) for s in starts])
    return sets


def worker(kind: str, folder: Path, sets: list[list[str]], device: str) -> dict:
    import torch

    from moemerge.config.schema import ExpertConfig
    from moemerge.forward.batching import chunks, left_padded
    from moemerge.forward.loading import LoadOptions, input_device, loaded_model
    from moemerge.gates import GateContext, compute_routers, hidden
    from moemerge.sources.folder import open_source

    source = open_source(str(folder), base_dir=folder, wanted=lambda _: True, side_files=True)
    experts = [ExpertConfig(source_model="x", positive_prompts=p) for p in sets]
    context = GateContext(source, experts, source.config["num_hidden_layers"], source.config["hidden_size"], 0,
                          load=LoadOptions(device=device))  # fmt: skip
    items = [(0, ids) for e in experts for ids in context.prompt_ids(e.positive_prompts)]
    tokens = sum(len(ids) for _, ids in items)
    start = time.perf_counter()
    if kind == "hidden":
        compute_routers("hidden", context)
    else:  # the floor: same load, same batches, a plain forward that keeps nothing
        max_tokens = max(1, hidden.HIDDEN_BUDGET_BYTES // ((context.num_layers + 1) * context.hidden_size * 4))
        with loaded_model(folder, context.load) as model, torch.inference_mode():
            where = input_device(model)
            for chunk in chunks(items, max_tokens):
                model(**left_padded(chunk, 0, where), use_cache=False)
    if device != "cpu":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - start, "tokens": tokens}


def run(kind: str, folder: Path, prompts: Path, device: str) -> dict:
    proc = subprocess.Popen([sys.executable, str(WORKER), "--worker", kind, str(folder), str(prompts), device],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{kind} run failed")
    return {**json.loads(out), "peak_rss_mib": usage.ru_maxrss / 1024}


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        kind, folder, prompts, device = sys.argv[2:6]
        print(json.dumps(worker(kind, Path(folder), json.loads(Path(prompts).read_text()), device)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--real", action="store_true", help="the real base (SmolLM2-135M-Instruct) and real texts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder, prompts = Path(tmp) / "base", Path(tmp) / "prompts.json"
        sets = build_real(folder) if args.real else build(folder, args.layers)
        prompts.write_text(json.dumps(sets))
        floor = run("floor", folder, prompts, args.device)
        ours = run("hidden", folder, prompts, args.device)
    tokens = ours["tokens"]
    what = "SmolLM2-135M-Instruct (real)" if args.real else f"tiny llama, {args.layers} layers"
    print(f"{what}: {len(sets)} experts x {len(sets[0])} prompts, {tokens} tokens, device {args.device}")
    for name, result in (("plain forward (floor)", floor), ("moemerge hidden gate", ours)):
        print(f"  {name:22s} {result['seconds']:7.2f} s  {tokens / result['seconds']:9.0f} tok/s  "
              f"peak RSS {result['peak_rss_mib']:7.0f} MiB")  # fmt: skip
    print(f"  ratio {ours['seconds'] / floor['seconds']:.2f} (target <= 1.3), "
          f"RSS ratio {ours['peak_rss_mib'] / floor['peak_rss_mib']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
