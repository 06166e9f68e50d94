"""Never killed for memory (SPEC 14): the room is read from cgroup v1/v2 files and available memory; a load that fits
runs in memory, one that does not runs offloaded with the same results and says so in one line, one that cannot fit
even offloaded is refused in one line before loading. The hard-limit tests run the CLI inside a memory cgroup (as a
container has); they skip cleanly where this machine cannot make one."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import memlimit
import pytest
import torch
import yaml

from moemerge import tiny
from moemerge.forward import fit, room

GB = 10**9
MB = 2**20


# -- the limit readers, from fixture files --------------------------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str], proc: str) -> tuple[Path, Path]:
    for name, text in files.items():
        (tmp_path / "cg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "cg" / name).write_text(text)
    (tmp_path / "self").write_text(proc)
    return tmp_path / "cg", tmp_path / "self"


def test_cgroup_v2_limit_less_usage_plus_reclaimable_cache(tmp_path):
    root, proc = _tree(tmp_path, {"cgroup.controllers": "cpu memory\n", "memory.max": "max\n",
                                  "box/memory.max": "5368709120\n", "box/memory.current": "1073741824\n",
                                  "box/memory.stat": "anon 700000000\ninactive_file 268435456\n",
                                  "box/job/memory.max": "max\n", "box/job/memory.current": "1000\n"},
                       "0::/box/job\n")  # fmt: skip
    found = room.cgroup_room(root, proc)
    assert found == room.Room(5368709120 - 1073741824 + 268435456, "cgroup v2 limit")


def test_cgroup_v1_limit_tightest_ancestor(tmp_path):
    no_limit = str(9223372036854771712)
    root, proc = _tree(tmp_path, {"memory/memory.limit_in_bytes": no_limit,
                                  "memory/outer/memory.limit_in_bytes": "2147483648\n",
                                  "memory/outer/memory.usage_in_bytes": "1073741824\n",
                                  "memory/outer/memory.stat": "cache 5\ntotal_inactive_file 0\n",
                                  "memory/outer/inner/memory.limit_in_bytes": "4294967296\n",
                                  "memory/outer/inner/memory.usage_in_bytes": "104857600\n",
                                  "memory/outer/inner/memory.stat": "total_inactive_file 4857600\n"},
                       "12:pids:/\n4:memory:/outer/inner\n0::/\n")  # fmt: skip
    assert room.cgroup_room(root, proc) == room.Room(1073741824, "cgroup v1 limit")  # the outer group is tighter


def test_no_cgroup_limit(tmp_path):
    root, proc = _tree(tmp_path, {"memory/memory.limit_in_bytes": str(9223372036854771712),
                                  "cgroup.controllers": "memory\n", "memory.max": "max\n"},
                       "4:memory:/\n0::/\n")  # fmt: skip
    assert room.cgroup_room(root, proc) is None
    assert room.cgroup_room(tmp_path / "nowhere", tmp_path / "missing") is None


def test_available_memory_from_meminfo(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal: 24000000 kB\nMemFree: 100 kB\nMemAvailable: 17000000 kB\n")
    assert room.available_memory(tmp_path / "meminfo") == room.Room(17000000 * 1024, "available memory")


# -- the decision ---------------------------------------------------------------------------------------------------


def test_decide_memory_offload_refuse():
    weights = fit.Weights(total=8 * GB, largest_layer=GB // 4, outside=GB // 2, params=2 * GB)
    assert fit.decide(weights, 10 * MB, room.Room(20 * GB, "available memory")).path == "memory"
    offload = fit.decide(weights, 10 * MB, room.Room(3 * GB, "cgroup v2 limit"))
    assert offload.path == "offload" and weights.largest_layer <= offload.budget < 3 * GB - weights.outside
    assert "same results" in offload.line("the hidden-state pass") and "cgroup v2 limit" in offload.line("x")
    refused = fit.decide(weights, 10 * MB, room.Room(GB // 2, "cgroup v1 limit"))
    assert refused.path == "refuse" and "even with its weights offloaded" in refused.line("the routing pass")


# -- under a hard limit ---------------------------------------------------------------------------------------------

needs_cgroup = pytest.mark.skipif(not memlimit.available(), reason="needs root and a writable memory cgroup")
PROMPTS = {0: ["def add(a, b): return a + b", "import os"], 1: ["Once upon a time there was a dragon", "the end"]}


@pytest.fixture(scope="module")
def heavy(tmp_path_factory):
    """A base of 290 MB in float32 (about 300 MB as loaded) and two experts, merged with hidden gates unconstrained."""
    root = tmp_path_factory.mktemp("heavy")
    shape = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=8, num_attention_heads=12,
                 num_key_value_heads=12)  # fmt: skip
    base = tiny.make_model(root / "base", **shape)
    experts = [tiny.make_expert(base, root / f"expert{s}", seed=s) for s in (1, 2)]
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({"base_model": str(base), "gate_mode": "hidden", "dtype": "float32",
                                      "experts": [{"source_model": str(e), "positive_prompts": PROMPTS[i]}
                                                  for i, e in enumerate(experts)]}))  # fmt: skip
    (root / "text.txt").write_text(" ".join(tiny.CORPUS * 6))
    return root, config


def _routers(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for file in folder.glob("*.safetensors"):
        out.update({k: v for k, v in load_file(file).items() if k.endswith("block_sparse_moe.gate.weight")})
    return out


LIMIT = 640 * MB  # the interpreter with torch and transformers takes about 250 MB of it: the model cannot fit


@needs_cgroup
def test_merge_route_and_eval_fit_a_limit_smaller_than_the_model(heavy, tmp_path):
    root, config = heavy
    free = tmp_path / "free"
    done = memlimit.run_free(str(config), str(free), "--routing-report")
    assert done.returncode == 0, done.stderr
    data = ("--data", f"text={root / 'text.txt'}", "--max-tokens", "512")
    scored = memlimit.run_free("eval", str(free), "--compare", *data)
    assert scored.returncode == 0, scored.stderr
    expected = json.loads((free / "eval.json").read_text())["datasets"][0]["loss"]
    with memlimit.limited(LIMIT) as run:
        out = tmp_path / "limited"
        merged = run(str(config), str(out), "--routing-report")
        assert merged.returncode == 0, merged.stderr[-2000:]
        lines = [line for line in merged.stderr.splitlines() if line.startswith("WARNING: memory:")]
        assert len(lines) == 2 and "reading the rest from disk" in lines[0], merged.stderr  # the pass and the report
        assert "cgroup" in lines[0]
        one, two = _routers(free), _routers(out)
        assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
        report = json.loads((out / "routing.json").read_text())["prompt_sets"]
        assert report == json.loads((free / "routing.json").read_text())["prompt_sets"]
        routed = run("route", str(out))
        assert routed.returncode == 0 and "reading the rest from disk" in routed.stderr, routed.stderr[-2000:]
        compared = run("eval", str(out), "--compare", *data)
        assert compared.returncode == 0, compared.stderr[-2000:]
        loss = json.loads((out / "eval.json").read_text())["datasets"][0]["loss"]
        assert loss.keys() == expected.keys() and all(abs(loss[k] - expected[k]) < 1e-5 for k in loss)


def _sparse_model(folder: Path, *, hidden: int, intermediate: int, layers: int, vocab: int) -> Path:
    """A model of the given shape whose weights file is all holes (no disk used): its header is real, so every check
    and the memory fit read it as usual; nothing here may read a weight."""
    folder.mkdir(parents=True)
    config = tiny.model_config(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                               num_attention_heads=32, num_key_value_heads=8, vocab_size=vocab)  # fmt: skip
    config.save_pretrained(str(folder))
    kv = hidden // 4
    shapes = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
                   p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
                   p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                   p + "mlp.gate_proj.weight": (intermediate, hidden), p + "mlp.up_proj.weight": (intermediate, hidden),
                   p + "mlp.down_proj.weight": (hidden, intermediate)}  # fmt: skip
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in sorted(shapes.items()):
        size = 2
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(folder / "model.safetensors", "wb") as fh:
        fh.write(struct.pack("<Q", len(text)) + text)
        fh.truncate(8 + len(text) + offset)
    tiny.make_tokenizer(folder)
    return folder


@needs_cgroup
def test_a_limit_smaller_than_one_layer_is_refused_before_loading(tmp_path):
    """A Mistral-7B-shaped base (14 GB as stored, 29 GB in float32) under a 1 GiB limit: one line, exit 2."""
    shape = dict(hidden=4096, intermediate=14336, layers=32, vocab=32000)
    base = _sparse_model(tmp_path / "base", **shape)
    experts = [_sparse_model(tmp_path / f"e{i}", **shape) for i in range(2)]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"base_model": str(base), "gate_mode": "hidden",
                                      "experts": [{"source_model": str(e), "positive_prompts": PROMPTS[i]}
                                                  for i, e in enumerate(experts)]}))  # fmt: skip
    with memlimit.limited(1024 * MB) as run:
        done = run(str(config), str(tmp_path / "out"))
        planned = run("plan", str(config))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("error: memory: the hidden-state pass needs at least") and "cgroup" in lines[0], lines
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    assert planned.returncode == 0 and "it cannot run here" in planned.stdout, planned.stdout + planned.stderr
