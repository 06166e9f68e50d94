"""The GPU paths, checked on a machine with a CUDA GPU (CI has none): routers from `--device cuda` (bfloat16) and
4/8-bit against the CPU's float32, `moemerge tune --device cuda` (only router bytes change, the loss falls), and a
Mistral-7B-shaped base (random bfloat16 weights, built on the GPU) merged in GPU memory and, with most of the GPU
taken by another process, fitted by moemerge itself (part on the GPU, the rest on the CPU). Prints one line per check.

    python benchmarks/gpu_check.py [--work /tmp/gpu-check] [--layers 16]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml


def moemerge(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "moemerge", *map(str, args)], capture_output=True, text=True, check=False)
    return time.perf_counter() - start, done


def routers(folder: Path) -> dict:
    from safetensors import safe_open

    out = {}
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            out |= {k: f.get_tensor(k).float() for k in f.keys() if k.endswith("gate.weight") and ".experts." not in k}
    return out


def worst_cosine(a: dict, b: dict) -> float:
    import torch

    return min(torch.nn.functional.cosine_similarity(a[k], b[k], dim=-1).min().item() for k in a)


def report(name: str, seconds: float, done: subprocess.CompletedProcess, extra: str = "") -> bool:
    lines = [x for x in done.stderr.splitlines() if x.startswith(("WARNING: memory", "error"))]
    print(f"{name}: exit {done.returncode}, {seconds:.1f} s {extra} {' | '.join(lines)}".rstrip(), flush=True)
    if done.returncode:
        print(done.stderr[-1500:], flush=True)
    return done.returncode == 0


def tiny_checks(work: Path) -> None:
    from moemerge import tiny

    shape = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=4, initializer_range=0.02)  # fmt: skip
    base = tiny.make_model(work / "base", **shape)
    experts = [tiny.make_expert(base, work / f"e{s}", seed=s) for s in (1, 2)]
    config = work / "tiny.yaml"
    config.write_text(yaml.safe_dump({"base_model": str(base), "gate_mode": "hidden", "experts_per_token": 1,
                                      "experts": [{"source_model": str(e), "positive_prompts": [p]} for e, p in
                                                  zip(experts, ["def add(a, b): return a + b", "Once upon a time"])]}))  # fmt: skip
    seconds, done = moemerge(config, work / "cpu", "--device", "cpu")
    report("tiny hidden merge, cpu float32", seconds, done)
    reference = routers(work / "cpu")
    for name, args in [("cuda bfloat16", []), ("cuda 8-bit", ["--load-in-8bit"]), ("cuda 4-bit", ["--load-in-4bit"])]:
        seconds, done = moemerge(config, work / "gpu", "--device", "cuda", "--overwrite", *args)
        cosine = f"worst router cosine vs cpu {worst_cosine(routers(work / 'gpu'), reference):.4f}" if not done.returncode else ""
        report(f"tiny hidden merge, {name}", seconds, done, cosine)
    text = work / "text.txt"
    text.write_text(" ".join(tiny.CORPUS * 40))
    before = {p.name: p.read_bytes() for p in (work / "cpu").glob("*.safetensors")}
    seconds, done = moemerge("tune", work / "cpu", "--data", f"t={text}", "--device", "cuda", "--steps", "20",
                             "--seq-len", "64", "--batch-tokens", "256")  # fmt: skip
    record = json.loads((work / "cpu" / "tune.json").read_text()) if not done.returncode else {}
    after = routers(work / "cpu")
    changed = sum(not (after[k] == reference[k]).all().item() for k in after)
    same_size = all(len(before[n]) == (work / "cpu" / n).stat().st_size for n in before)
    report("tune --device cuda (bf16 autocast)", seconds, done,
           f"routers changed {changed}/{len(after)}, files same size {same_size}, held-out "
           f"{record.get('held_out_loss_before')} -> {record.get('held_out_loss_after')}")  # fmt: skip


def build_7b(folder: Path, layers: int) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import MistralConfig

    from moemerge import tiny

    folder.mkdir(parents=True, exist_ok=True)
    h, i, kv, vocab = 4096, 14336, 1024, 32000
    MistralConfig(hidden_size=h, intermediate_size=i, num_hidden_layers=layers, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=vocab, dtype="bfloat16").save_pretrained(folder)  # fmt: skip
    gen = torch.Generator("cuda").manual_seed(0)

    def randn(*shape):
        return (torch.randn(*shape, generator=gen, device="cuda", dtype=torch.bfloat16) * 0.02).cpu()

    weight_map = {}
    for n in range(-1, layers):
        if n < 0:
            tensors = {"model.embed_tokens.weight": randn(vocab, h), "lm_head.weight": randn(vocab, h),
                       "model.norm.weight": torch.ones(h, dtype=torch.bfloat16)}  # fmt: skip
        else:
            p = f"model.layers.{n}."
            tensors = {p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
                       p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
                       p + "self_attn.q_proj.weight": randn(h, h), p + "self_attn.k_proj.weight": randn(kv, h),
                       p + "self_attn.v_proj.weight": randn(kv, h), p + "self_attn.o_proj.weight": randn(h, h),
                       p + "mlp.gate_proj.weight": randn(i, h), p + "mlp.up_proj.weight": randn(i, h),
                       p + "mlp.down_proj.weight": randn(h, i)}  # fmt: skip
        file = f"model-{n + 1:03d}.safetensors"
        save_file(tensors, folder / file, metadata={"format": "pt"})
        weight_map |= {k: file for k in tensors}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    tiny.make_tokenizer(folder)
    return folder


def big_checks(work: Path, layers: int) -> None:
    import torch

    start = time.perf_counter()
    base = build_7b(work / "base7b", layers)
    print(f"built a Mistral-7B-shaped base cut to {layers} layers in {time.perf_counter() - start:.0f} s", flush=True)
    config = work / "big.yaml"
    config.write_text(yaml.safe_dump({"base_model": str(base), "gate_mode": "hidden", "experts": [
        {"source_model": str(base), "positive_prompts": ["def add(a, b): return a + b"]},
        {"source_model": str(base), "positive_prompts": ["Once upon a time there was a dragon"]}]}))  # fmt: skip
    same = "--i-understand-this-is-not-useful-without-training"
    seconds, done = moemerge("plan", config, "--device", "cuda")
    print("plan --device cuda: " + " / ".join(x.strip() for x in done.stdout.splitlines() if "pass" in x or "fits" in x
                                             or "fit" in x), flush=True)  # fmt: skip
    seconds, done = moemerge(config, work / "big-free", "--device", "cuda", same)
    report("7B-shaped hidden merge, --device cuda, whole GPU free", seconds, done)
    reference = routers(work / "big-free") if not done.returncode else None
    shutil.rmtree(work / "big-free", ignore_errors=True)
    free, _ = torch.cuda.mem_get_info()
    blob = torch.empty(int(free - 6 * 2**30), dtype=torch.uint8, device="cuda")  # leave 6 GiB to moemerge
    seconds, done = moemerge(config, work / "big-tight", "--device", "cuda", same)
    del blob
    extra = ""
    if not done.returncode and reference is not None:
        extra = f"worst router cosine vs whole-GPU run {worst_cosine(routers(work / 'big-tight'), reference):.5f}"
    report("7B-shaped hidden merge, --device cuda, 6 GiB of the GPU free", seconds, done, extra)
    shutil.rmtree(work / "big-tight", ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-check"))
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--skip-big", action="store_true")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    tiny_checks(args.work)
    if not args.skip_big:
        big_checks(args.work, args.layers)


if __name__ == "__main__":
    main()
