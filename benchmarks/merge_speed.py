"""Merge speed and memory against the floor: the same bytes moved without moemerge.

Builds a base and 4 experts (bfloat16), then runs, interleaved (--reps rounds, each in a fresh subprocess): a
`cheap_embed` merge; an in-kernel copy (`os.copy_file_range`, then fsync) of exactly the bytes the merge must read
(the base's non-MLP tensors, each expert's MLP tensors) into one file; `cp -r` of the input folders; and
mergekit-moe when it is installed. Prints each time, the ratios, and peak RSS.

Small set (default): Llama-like models of 340 MB (8 layers), 750 MB written; target: merge <= 1.3x `cp -r`.
Large set (--large, about 25 GB of disk): Mistral-like, hidden 2048, intermediate 8192, 16 layers, 2.2 GB per model
in 2 GB shards; target: merge <= 1.5x the in-kernel copy, peak RSS < 1 GiB.

    python benchmarks/merge_speed.py [--large] [--reps 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

NAMES = ["base", "chat", "code", "story", "math"]
SETS = {  # family, hidden, intermediate, layers, kv heads, vocab, shard bytes
    "small": ("llama", 1024, 2816, 8, 16, 32000, 500 * 10**6),
    "large": ("mistral", 2048, 8192, 16, 4, 32000, 2 * 10**9),
}
LARGE_DISK = 25 * 10**9


def tensors(hidden: int, intermediate: int, layers: int, kv_heads: int, vocab: int, heads: int = 16):
    """(name, shape) of a Llama-like model in safetensors order."""
    kv = hidden // heads * kv_heads
    yield "model.embed_tokens.weight", (vocab, hidden)
    for layer in range(layers):
        p = f"model.layers.{layer}."
        yield from [(p + "self_attn.q_proj.weight", (hidden, hidden)), (p + "self_attn.k_proj.weight", (kv, hidden)),
                    (p + "self_attn.v_proj.weight", (kv, hidden)), (p + "self_attn.o_proj.weight", (hidden, hidden)),
                    (p + "mlp.gate_proj.weight", (intermediate, hidden)), (p + "mlp.up_proj.weight", (intermediate, hidden)),
                    (p + "mlp.down_proj.weight", (hidden, intermediate)), (p + "input_layernorm.weight", (hidden,)),
                    (p + "post_attention_layernorm.weight", (hidden,))]  # fmt: skip
    yield "model.norm.weight", (hidden,)
    yield "lm_head.weight", (vocab, hidden)


def write_model(folder: Path, spec: tuple, seed: int) -> None:
    """Sharded safetensors of random bfloat16 weights (normal * 0.02), streamed from a 64 MB random pool."""
    import numpy as np

    from moemerge import tiny
    from moemerge.merge.writer import header_bytes

    family, hidden, intermediate, layers, kv_heads, vocab, shard_bytes = spec
    folder.mkdir(parents=True)
    pool = (np.random.default_rng(seed).standard_normal(32 * 2**20, dtype=np.float32) * 0.02).view(np.uint32)
    pool = (pool >> 16).astype(np.uint16).tobytes()  # bfloat16 = the float32's upper half
    shards: list[list] = [[]]
    for name, shape in tensors(hidden, intermediate, layers, kv_heads, vocab):
        size = 2 * (shape[0] * (shape[1] if len(shape) > 1 else 1))
        if shards[-1] and sum(s for _, _, s in shards[-1]) + size > shard_bytes:
            shards.append([])
        shards[-1].append((name, shape, size))
    weight_map, at = {}, 0
    for k, shard in enumerate(shards):
        filename = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        with open(folder / filename, "wb") as fh:
            fh.write(header_bytes([(name, "bfloat16", shape) for name, shape, _ in shard]))
            for name, _, size in shard:
                weight_map[name] = filename
                while size:
                    piece = pool[at : at + size]
                    fh.write(piece)
                    size -= len(piece)
                    at = (at + len(piece)) % len(pool)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = tiny.model_config(family, vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                               num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=kv_heads,
                               max_position_embeddings=4096).to_dict()  # fmt: skip
    config.update(dtype="bfloat16", architectures=[f"{family.capitalize()}ForCausalLM"])
    (folder / "config.json").write_text(json.dumps(config))
    tiny.make_tokenizer(folder)


def kernel_copy(root: Path, out: Path) -> None:
    """The floor: copy exactly the bytes the merge reads (base: all but the MLPs; experts: the MLPs) into one file."""
    from moemerge.sources.folder import read_safetensors_header

    with open(out, "wb") as dst:
        for name in NAMES:
            for file in sorted((root / name).glob("*.safetensors")):
                src = os.open(file, os.O_RDONLY)
                for tensor, info in read_safetensors_header(file).items():
                    if (".mlp." in tensor) == (name != "base"):
                        nbytes = 2 * (info.shape[0] * (info.shape[1] if len(info.shape) > 1 else 1))
                        done = 0
                        while done < nbytes:
                            copied = os.copy_file_range(src, dst.fileno(), nbytes - done, info.offset + done)
                            if copied == 0:
                                raise SystemExit(f"{file}: ended early")
                            done += copied
                os.close(src)
        os.fsync(dst.fileno())


def merge_phases(root: Path) -> None:
    """The merge, in this process, timing the phases that move bytes: writing the shards (`pipeline._write`) and
    fsync + rename (`output.publish`); the rest is start-up, checks, routers and verification. -> ROOT/phases.json"""
    from moemerge import cli
    from moemerge.merge import output, pipeline

    phases: dict[str, float] = {}

    def timing(module, name: str) -> None:
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - start

        setattr(module, name, wrapper)

    timing(pipeline, "_write")
    timing(output, "publish")
    try:
        cli.main([str(root / "config.yaml"), str(root / "out"), "-q"])
    except SystemExit as exc:
        (root / "phases.json").write_text(json.dumps(phases))
        raise SystemExit(exc.code) from None


def timed(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one subprocess."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{proc.stderr.read().decode()[-2000:]}")
    return elapsed, usage.ru_maxrss * 1024


def contenders(root: Path) -> dict[str, tuple[list[str], Path]]:
    """name -> (command, what it writes, removed after each run)."""
    me = [sys.executable, __file__]
    out = {
        "moemerge": ([*me, "--merge", str(root)], root / "out"),
        "kernel copy": ([*me, "--kernel-copy", str(root), str(root / "copy.bin")], root / "copy.bin"),
        "cp -r": (["cp", "-r", *(str(root / n) for n in NAMES), str(root / "cp")], root / "cp"),
    }  # fmt: skip
    if shutil.which("mergekit-moe"):
        out["mergekit-moe"] = (["mergekit-moe", str(root / "config.yaml"), str(root / "mk")], root / "mk")
    return out


def run(which: str, root: Path, reps: int) -> None:
    spec = SETS[which]
    timed([sys.executable, __file__, "--build", which, str(root)])  # a child: ru_maxrss is inherited across fork
    config = {"base_model": str(root / "base"), "gate_mode": "cheap_embed", "experts": [
        {"source_model": str(root / n), "positive_prompts": [f"{n} prompt number one", f"about {n}"]} for n in NAMES[1:]
    ]}  # fmt: skip
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    (root / "cp").mkdir()
    runs = contenders(root)
    times: dict[str, list[float]] = {name: [] for name in runs}
    rss: dict[str, int] = {}
    moved: list[float] = []  # the merge's seconds writing shards and fsyncing them
    for rep in range(reps):
        order = list(runs)[rep % len(runs) :] + list(runs)[: rep % len(runs)]  # rotate who goes first
        for name in order:
            command, output = runs[name]
            seconds, peak = timed(command)
            times[name].append(seconds)
            if name == "moemerge":
                moved.append(sum(json.loads((root / "phases.json").read_text()).values()))
            rss[name] = max(rss.get(name, 0), peak)
            shutil.rmtree(output) if output.is_dir() else output.unlink()
            if name == "cp -r":
                output.mkdir()
    written = sum(f.stat().st_size for n in NAMES for f in (root / n).glob("*.safetensors"))
    print(f"\n{which} set ({spec[0]}-like, hidden {spec[1]}, intermediate {spec[2]}, {spec[3]} layers, bfloat16): "
          f"inputs {written / 1e9:.2f} GB, {reps} interleaved rounds")  # fmt: skip
    for name, seconds in times.items():
        print(
            f"  {name:13s} " + ", ".join(f"{s:6.2f}" for s in seconds) + f" s   peak RSS {rss[name] / 2**20:5.0f} MiB"
        )
    print("  of which writing the shards + fsync: " + ", ".join(f"{s:.2f}" for s in moved) + " s; the rest is start-up "
          "(imports, config and header checks), routers and verification")  # fmt: skip
    ratios = [m / f for m, f in zip(moved, times["kernel copy"], strict=True)]
    print("  moemerge writing + fsync / kernel copy: " + ", ".join(f"{r:.2f}" for r in ratios))
    for floor in ("kernel copy", "cp -r"):
        ratios = [m / f for m, f in zip(times["moemerge"], times[floor], strict=True)]
        print(f"  moemerge / {floor:11s}: " + ", ".join(f"{r:.2f}" for r in ratios) +
              f" (median {statistics.median(ratios):.2f})")  # fmt: skip


def main() -> None:
    if sys.argv[1:2] == ["--build"]:
        for i, name in enumerate(NAMES):
            write_model(Path(sys.argv[3]) / name, SETS[sys.argv[2]], seed=i)
        return
    if sys.argv[1:2] == ["--merge"]:
        return merge_phases(Path(sys.argv[2]))
    if sys.argv[1:2] == ["--kernel-copy"]:
        return kernel_copy(Path(sys.argv[2]), Path(sys.argv[3]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", action="store_true", help="also the large set (about 25 GB of disk)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved rounds per set")
    parser.add_argument("--workdir", type=Path, default=None, help="where to build the models (default: a temp dir)")
    args = parser.parse_args()
    if args.workdir is not None:
        if args.workdir.exists() and not args.workdir.is_dir():
            parser.error(f"--workdir {args.workdir}: exists and is not a folder")
        args.workdir.mkdir(parents=True, exist_ok=True)
    for verb in (["--help"], ["plan", "--help"]):
        print(f"moemerge {' '.join(verb)}: {timed([sys.executable, '-m', 'moemerge', *verb])[0]:.2f} s")
    for which in ["small"] + (["large"] if args.large else []):
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            free = shutil.disk_usage(tmp).free
            if which == "large" and free < LARGE_DISK:
                raise SystemExit(f"--large: {tmp} has {free / 1e9:.0f} GB free, needs {LARGE_DISK / 1e9:.0f} GB")
            run(which, Path(tmp), args.reps)
            if which == "small":
                plan_s, _ = timed([sys.executable, "-m", "moemerge", "plan", str(Path(tmp) / "config.yaml")])
                print(f"moemerge plan CONFIG (small set): {plan_s:.2f} s")


if __name__ == "__main__":
    main()
