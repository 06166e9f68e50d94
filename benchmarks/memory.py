"""Memory benchmark (SPEC 14): a `hidden` merge of a Mistral-7B-shaped base cut to a few layers (random bfloat16
weights, built here; 8 layers = 2.0B parameters, 4 GB stored, 8 GB in float32), in memory and inside a hard memory
cgroup smaller than the model in float32, where moemerge offloads by itself. Prints time, peak RSS and the largest
router difference against the in-memory run, and how the offloaded run compares with one read of the weights.

    python benchmarks/memory.py [--layers 8] [--limit-gib 5] [--work /tmp/moemerge-memory]
    python benchmarks/memory.py --real [--limit-gib 0.7]

`--real`: the real base (SmolLM2-135M-Instruct, float32) and its code/math/prose experts with `hidden` gates: in
memory, offloaded under a cgroup limit, and with --load-in-8bit / --load-in-4bit; prints time, peak RSS and the worst
router cosine against the float32 in-memory routers.

Needs root (for the cgroup), about 4 GB of disk per base layer group of 8 plus the MoE output, and about 12 GB of
RAM for the in-memory run (skip it with --no-free)."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import memlimit  # noqa: E402

MISTRAL_7B = dict(hidden=4096, intermediate=14336, heads=32, kv_heads=8, vocab=32000)


def build_base(folder: Path, layers: int) -> Path:
    """A Mistral-shaped model with random bfloat16 weights, one shard per layer (never the whole model in RAM)."""
    import torch
    from safetensors.torch import save_file
    from transformers import MistralConfig

    from moemerge import tiny

    if (folder / "model.safetensors.index.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    s = MISTRAL_7B
    MistralConfig(hidden_size=s["hidden"], intermediate_size=s["intermediate"], num_hidden_layers=layers,
                  num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"], vocab_size=s["vocab"],
                  dtype="bfloat16", bos_token_id=1, eos_token_id=2, pad_token_id=3).save_pretrained(folder)  # fmt: skip
    torch.manual_seed(0)
    h, i, kv = s["hidden"], s["intermediate"], s["hidden"] // s["heads"] * s["kv_heads"]

    def randn(*shape):
        return (torch.randn(*shape) * 0.02).to(torch.bfloat16)

    weight_map, total = {}, 0
    groups = [("outer", {"model.embed_tokens.weight": randn(s["vocab"], h), "lm_head.weight": randn(s["vocab"], h),
                         "model.norm.weight": torch.ones(h, dtype=torch.bfloat16)})]  # fmt: skip
    groups += [(f"layer{n}", None) for n in range(layers)]
    for name, tensors in groups:
        if tensors is None:
            n, p = int(name[5:]), f"model.layers.{name[5:]}."
            tensors = {p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
                       p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
                       p + "self_attn.q_proj.weight": randn(h, h), p + "self_attn.k_proj.weight": randn(kv, h),
                       p + "self_attn.v_proj.weight": randn(kv, h), p + "self_attn.o_proj.weight": randn(h, h),
                       p + "mlp.gate_proj.weight": randn(i, h), p + "mlp.up_proj.weight": randn(i, h),
                       p + "mlp.down_proj.weight": randn(h, i)}  # fmt: skip
            del n
        file = f"model-{name}.safetensors"
        save_file(tensors, folder / file, metadata={"format": "pt"})
        weight_map |= {k: file for k in tensors}
        total += sum(t.numel() * 2 for t in tensors.values())
        print(f"built {file}", file=sys.stderr, flush=True)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                      "weight_map": weight_map}))  # fmt: skip
    tiny.make_tokenizer(folder)
    return folder


def timed(command: list[str], *, limit: int | None) -> tuple[float, int, str, int]:
    """(seconds, peak RSS in bytes, stderr, exit code) of `moemerge ARGS`, inside a cgroup of `limit` bytes if set."""
    wrapped = ["/usr/bin/time", "-f", "PEAK_KB %M", sys.executable, "-m", "moemerge", *command]
    start = time.perf_counter()
    if limit is None:
        done = subprocess.run(wrapped, capture_output=True, text=True, check=False)
    else:
        with memlimit.limited(limit) as run:
            done = run.raw(wrapped)
    seconds = time.perf_counter() - start
    peak = next((int(line.split()[1]) * 1024 for line in done.stderr.splitlines() if line.startswith("PEAK_KB")), 0)
    return seconds, peak, done.stderr, done.returncode


def routers(folder: Path):
    from safetensors import safe_open

    out = {}
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            out |= {k: f.get_tensor(k).float() for k in f.keys() if k.endswith("block_sparse_moe.gate.weight")}
    return out


def read_once(folder: Path) -> float:
    """Seconds to read every weight once from the files (the page cache dropped first when allowed)."""
    subprocess.run(["sh", "-c", "sync; echo 1 > /proc/sys/vm/drop_caches"], check=False, capture_output=True)
    start = time.perf_counter()
    for file in sorted(folder.glob("*.safetensors")):
        with open(file, "rb") as fh:
            while fh.read(64 * 2**20):
                pass
    return time.perf_counter() - start


def real(args) -> None:
    import torch
    import yaml

    from moemerge.real import assets, write_config

    config = write_config(args.work / "real.yaml", assets())
    spec = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**spec, "gate_mode": "hidden"}))
    limit = int(args.limit_gib * 2**30)
    runs = [("float32 in memory", [], None), (f"offloaded ({args.limit_gib:g} GiB cgroup)", [], limit),
            ("8-bit (bitsandbytes)", ["--load-in-8bit"], None), ("4-bit (bitsandbytes)", ["--load-in-4bit"], None)]
    reference = None
    print("| run | time | peak RSS | worst router cosine vs float32 | memory line |\n|---|---|---|---|---|")
    for name, extra, cap in runs:
        out = args.work / "real-out"
        shutil.rmtree(out, ignore_errors=True)
        seconds, peak, err, code = timed([str(config), str(out), "--overwrite", *extra], limit=cap)
        if code:
            print(f"| {name} | exit {code} | | | {err.strip().splitlines()[-1]} |")
            continue
        found = routers(out)
        reference = reference or found
        worst = min(torch.nn.functional.cosine_similarity(found[k], reference[k], dim=-1).min().item() for k in found)
        line = next((x for x in err.splitlines() if x.startswith("WARNING: memory")), "")
        print(f"| {name} | {seconds:.1f} s | {peak / 2**20:,.0f} MiB | {worst:.4f} | {line[9:]} |", flush=True)
    shutil.rmtree(args.work / "real-out", ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--limit-gib", type=float, default=5.0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/moemerge-memory"))
    parser.add_argument("--no-free", action="store_true", help="skip the in-memory run")
    parser.add_argument("--real", action="store_true", help="the real base and experts: memory, offload, 8/4-bit")
    args = parser.parse_args()
    if not memlimit.available():
        sys.exit("needs root and a writable memory cgroup")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.real:
        return real(args)
    base = build_base(args.work / f"base-{args.layers}", args.layers)
    config = args.work / "config.yaml"
    config.write_text(json.dumps({"base_model": str(base), "gate_mode": "hidden", "experts": [
        {"source_model": str(base), "positive_prompts": ["def add(a, b): return a + b", "import os, sys"]},
        {"source_model": str(base), "positive_prompts": ["Once upon a time there was a dragon", "The end."]}]}))  # fmt: skip
    same = "--i-understand-this-is-not-useful-without-training"
    limit = int(args.limit_gib * 2**30)
    rows = []
    read = read_once(base)
    for name, cap in ([] if args.no_free else [("in memory", None)]) + [(f"{args.limit_gib:g} GiB cgroup", limit)]:
        out = args.work / f"out-{name.split()[0]}"
        shutil.rmtree(out, ignore_errors=True)
        seconds, peak, err, code = timed([str(config), str(out), same, "--overwrite"], limit=cap)
        lines = [line for line in err.splitlines() if line.startswith(("WARNING: memory", "error"))]
        rows.append((name, seconds, peak, code, lines, out))
        print(f"{name}: exit {code}, {seconds:.1f} s, peak RSS {peak / 2**30:.2f} GiB; {' | '.join(lines)}", flush=True)
    if len(rows) == 2 and all(r[3] == 0 for r in rows):
        one, two = routers(rows[0][5]), routers(rows[1][5])
        diff = max((one[k] - two[k]).abs().max().item() for k in one)
        print(f"largest router difference, offloaded vs in memory: {diff}")
        print(f"offloaded / in memory: {rows[1][1] / rows[0][1]:.2f}x time, {rows[1][2] / rows[0][2]:.2f}x peak RSS")
    print(f"one read of the base's weights: {read:.1f} s; the limited merge took {rows[-1][1] / read:.1f}x that "
          "(it also writes the MoE)")  # fmt: skip
    for row in rows:
        shutil.rmtree(row[5], ignore_errors=True)


if __name__ == "__main__":
    main()
