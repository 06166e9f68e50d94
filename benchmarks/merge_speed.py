"""Merge speed and memory against `cp` of the same input bytes.

Builds a base and 4 experts of a realistic (Llama-like, bfloat16) shape at each --size-mb, runs a cheap_embed merge
in a subprocess, and prints wall time, the time `cp` takes to copy the input weight files, their ratio, and the
merge's peak RSS. Targets: ratio <= 1.5, peak RSS < 1 GiB at every size (it must not grow with model size), and
`moemerge --help` under 1 s.

    python benchmarks/merge_speed.py --size-mb 300 1200
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HIDDEN, INTERMEDIATE, VOCAB = 1024, 2816, 32000


def layer_count(size_mb: int) -> int:
    per_layer = (4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTERMEDIATE) * 2
    return max(1, (size_mb * 10**6 - 2 * VOCAB * HIDDEN * 2) // per_layer)


def write_model(folder: Path, layers: int, seed: int) -> None:
    import torch
    from safetensors.torch import save_file

    from moemerge import tiny

    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)

    shards, current = [], {}
    current["model.embed_tokens.weight"] = rand(VOCAB, HIDDEN)
    for layer in range(layers):
        p = f"model.layers.{layer}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            current[p + f"self_attn.{name}.weight"] = rand(HIDDEN, HIDDEN)
        current[p + "mlp.gate_proj.weight"] = rand(INTERMEDIATE, HIDDEN)
        current[p + "mlp.up_proj.weight"] = rand(INTERMEDIATE, HIDDEN)
        current[p + "mlp.down_proj.weight"] = rand(HIDDEN, INTERMEDIATE)
        current[p + "input_layernorm.weight"] = torch.ones(HIDDEN, dtype=torch.bfloat16)
        current[p + "post_attention_layernorm.weight"] = torch.ones(HIDDEN, dtype=torch.bfloat16)
        if sum(t.numel() * 2 for t in current.values()) > 500 * 10**6:
            shards.append(current)
            current = {}
    current["model.norm.weight"] = torch.ones(HIDDEN, dtype=torch.bfloat16)
    current["lm_head.weight"] = rand(VOCAB, HIDDEN)
    shards.append(current)
    weight_map = {}
    for k, shard in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / name, metadata={"format": "pt"})
        weight_map.update({t: name for t in shard})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = tiny.model_config("llama", vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                               num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=16,
                               max_position_embeddings=4096).to_dict()  # fmt: skip
    config.update(dtype="bfloat16", architectures=["LlamaForCausalLM"])
    (folder / "config.json").write_text(json.dumps(config))
    tiny.make_tokenizer(folder)


def timed(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one subprocess."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}")
    return elapsed, usage.ru_maxrss * 1024


def run(size_mb: int, root: Path) -> None:
    layers = layer_count(size_mb)
    names = ["base", "chat", "code", "story", "math"]
    # models are built in a child process: ru_maxrss is inherited across fork, so this process must stay small
    timed([sys.executable, __file__, "--build", str(root), str(layers), *names])
    config = {"base_model": str(root / "base"), "gate_mode": "cheap_embed", "experts": [
        {"source_model": str(root / n), "positive_prompts": [f"{n} prompt number one", f"about {n}"]} for n in names[1:]
    ]}  # fmt: skip
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    in_bytes = sum(f.stat().st_size for n in names for f in (root / n).glob("*.safetensors"))
    (root / "cp").mkdir()
    cp_s, _ = timed(["cp", "-r", *(str(root / n) for n in names), str(root / "cp")])
    shutil.rmtree(root / "cp")
    merge_s, rss = timed([sys.executable, "-m", "moemerge", str(root / "config.yaml"), str(root / "out"), "-q"])
    out_bytes = sum(f.stat().st_size for f in (root / "out").glob("*.safetensors"))
    print(f"model {size_mb} MB ({layers} layers): inputs {in_bytes / 1e9:.2f} GB, output {out_bytes / 1e9:.2f} GB | "
          f"merge {merge_s:.2f} s, cp {cp_s:.2f} s, ratio {merge_s / cp_s:.2f} | peak RSS {rss / 2**20:.0f} MiB",
          flush=True)  # fmt: skip


def main() -> None:
    if sys.argv[1:2] == ["--build"]:
        root, layers, names = Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
        for i, name in enumerate(names):
            write_model(root / name, layers, seed=i)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, nargs="+", default=[300, 1200], help="size of each model, MB")
    parser.add_argument("--workdir", type=Path, default=None, help="where to build the models (default: a temp dir)")
    args = parser.parse_args()
    help_s, _ = timed([sys.executable, "-m", "moemerge", "--help"])
    print(f"moemerge --help: {help_s:.2f} s")
    for size in args.size_mb:
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            run(size, Path(tmp))


if __name__ == "__main__":
    main()
