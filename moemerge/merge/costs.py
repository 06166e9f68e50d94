"""`moemerge plan`: what a merge would do and cost, from config.json files and safetensors headers only."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from moemerge.archs import ARCHITECTURES, choose_architecture
from moemerge.forward.loading import LoadOptions
from moemerge.forward import fit
from moemerge.merge.pipeline import Prepared
from moemerge.merge.stream import CHUNK_BYTES
from moemerge.publish import card
from moemerge.sources.lora_source import LoraSource

RUNTIME_BYTES = 600 * 2**20  # Python, torch and transformers loaded: measured by benchmarks/merge_speed.py
PROBE_BYTES = 32 * 2**20
ASSUMED_BYTES_PER_S = 100 * 10**6  # when no folder can take the probe file


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _write_speed(folder: Path) -> float:
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".moemerge-probe-") as probe:
        start = time.perf_counter()
        probe.write(os.urandom(1 << 20) * (PROBE_BYTES >> 20))
        probe.flush()
        os.fsync(probe.fileno())
        return PROBE_BYTES / max(time.perf_counter() - start, 1e-6)


def disk_speed(folder: Path, sample: Path | None) -> tuple[float, float]:
    """(read, write) bytes/s: write and fsync a 32 MB probe file in `folder` (else the temp folder; a dry run must
    not fail because it cannot write); read up to 32 MB of `sample`."""
    write = ASSUMED_BYTES_PER_S
    for where in (folder, Path(tempfile.gettempdir())):
        try:
            write = _write_speed(where)
            break
        except OSError:
            continue
    read = write
    if sample is not None and sample.is_file():
        start = time.perf_counter()
        with open(sample, "rb", buffering=0) as fh:
            got = len(fh.read(PROBE_BYTES))
        read = got / max(time.perf_counter() - start, 1e-6) if got else write
    return read, write


def _rejected(prepared: Prepared) -> dict[str, list[str]]:
    base, names = prepared.base, set(prepared.base.tensors)
    out = {}
    for name in ARCHITECTURES:
        if name != prepared.arch.name:
            _, reasons = choose_architecture(name, base.config, names, num_shared=len(prepared.shared))
            out[name] = [r.removeprefix(f"{name}: ") for r in reasons]
    return out


MODEL_PASSES = {"hidden": "hidden-state pass", "hidden_avg": "hidden-state pass", "mlp_input": "MLP-input pass",
                "mlp_input_avg": "MLP-input pass"}  # fmt: skip


def _model_pass(prepared: Prepared, load: LoadOptions) -> dict[str, Any] | None:
    """The gate mode's pass over the base model: what it needs, the room found, and how it will load (forward.fit
    decides the same way when the merge runs)."""
    if prepared.config.gate_mode not in MODEL_PASSES:
        return None
    found = fit.weights_of({n: t.shape for n, t in prepared.base.tensors.items()}, fit.per_param(load))
    prompts = sum(len(e.positive_prompts or []) + len(e.negative_prompts or []) for e in prepared.config.experts)
    states = prepared.config.gate_mode.startswith("hidden")
    activations = fit.activation_bytes(prepared.base.path, min(4096, 64 * max(prompts, 1)), logits=False,
                                       states=states)  # fmt: skip
    if load.device.startswith("cuda"):
        room = fit.gpu_room(int(load.device.partition(":")[2] or 0))
    else:
        room = fit.cpu_room()
    decision = fit.decide(found, activations, room)
    return {"name": MODEL_PASSES[prepared.config.gate_mode], "device": load.device, "quantize": load.quantize,
            "prompts": prompts, "model_bytes": found.total, "peak_bytes": decision.need, "room_bytes": room.bytes,
            "room_source": room.source, "path": decision.path, "budget_bytes": decision.budget,
            "smallest_bytes": decision.smallest}  # fmt: skip


def _peak_ram(model_pass: dict[str, Any] | None) -> int:
    """Streaming holds a few row chunks; a model pass on the CPU also holds the base model (or its in-memory share
    when offloaded) and one chunk's activations."""
    stream = RUNTIME_BYTES + 3 * CHUNK_BYTES
    if model_pass is None or model_pass["device"].startswith("cuda"):
        return stream
    held = model_pass["peak_bytes"] if model_pass["path"] != "offload" else model_pass["room_bytes"]
    return max(stream, RUNTIME_BYTES + held)


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def summarize(prepared: Prepared, load: LoadOptions, *, probe_dir: Path) -> dict[str, Any]:
    """Every figure `moemerge plan` prints; the plan's own tensors give parameters, bytes and shards exactly."""
    plan, config = prepared.plan, prepared.config
    shapes = {t.name: t.shape for t in plan.tensors}
    total, active = card.parameter_counts(shapes, num_experts=len(prepared.experts),
                                          experts_per_token=config.experts_per_token)  # fmt: skip
    models = list(dict.fromkeys([prepared.base, *prepared.experts, *prepared.shared]))
    read_bytes = sum(t.nbytes for t in plan.tensors if t.source.__class__.__name__ == "FromModel")
    read_bytes += sum(m.adapter_bytes for m in models if isinstance(m, LoraSource))
    sample = next((info.file for info in prepared.base.tensors.values() if info.file.is_absolute()), None)
    read_speed, write_speed = disk_speed(probe_dir, sample)
    hidden_pass = _model_pass(prepared, load)
    return {
        "architecture": prepared.arch.name,
        "class": prepared.arch.class_name,
        "rejected": _rejected(prepared),
        "gate_mode": config.gate_mode,
        "experts_per_token": config.experts_per_token,
        "dtype": prepared.dtype,
        "experts": [
            {
                "model": e.source_model,
                "positive_prompts": list(e.positive_prompts or []),
                "negative_prompts": list(e.negative_prompts or []),
                "adapter": _adapter(m),
            }
            for e, m in zip(config.experts, prepared.experts)
        ],
        "shared_experts": [e.source_model for e in config.shared_experts or []],
        "parameters": {"total": total, "active": active},
        "output_bytes": plan.total_size,
        "output_bytes_by_dtype": {d: total * s for d, s in (("float32", 4), ("bfloat16", 2), ("float16", 2))},
        "shards": len(plan.shards),
        "download_bytes": sum(m.download_bytes for m in models),
        "peak_ram_bytes": _peak_ram(hidden_pass),
        "hidden_pass": hidden_pass,
        "disk": {"read_bytes_per_s": round(read_speed), "write_bytes_per_s": round(write_speed)},
        "estimated_seconds": round(read_bytes / read_speed + plan.total_size / write_speed, 1),
        "warnings": list(prepared.arch.warnings),
    }


def _adapter(model) -> dict[str, Any] | None:
    """A LoRA expert's adapter: its reference, ranks, targeted MLP projections and the bytes it adds to the reads."""
    if not isinstance(model, LoraSource):
        return None
    return {"model": model.adapter.ref, "on": model.model.ref, "ranks": model.ranks, "targets": model.targets,
            "read_bytes": model.adapter_bytes, "ignored": list(model.ignored)}  # fmt: skip


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return ""


def _clip(prompt: str, width: int = 70) -> str:
    flat = " ".join(prompt.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def format_summary(s: dict[str, Any]) -> str:
    head = f"output: {s['class']} ({s['architecture']}), {_count(len(s['experts']), 'expert')}, top-{s['experts_per_token']}, "
    lines = [head + f"gate {s['gate_mode']}, dtype {s['dtype']}"]
    lines += [f"  not {name}: {'; '.join(why)}" if why else f"  {name} would also fit (set `architecture: {name}`)"
              for name, why in s["rejected"].items()]  # fmt: skip
    for i, e in enumerate(s["experts"]):
        pos, neg = e["positive_prompts"], e["negative_prompts"]
        lines.append(f"expert {i}: {e['model']} ({len(pos)} positive, {_count(len(neg), 'negative prompt')})")
        if a := e["adapter"]:
            lines.append(f"    LoRA adapter {a['model']} ({card.ranks(a['ranks'])}; {', '.join(a['targets'])}), "
                         f"{_size(a['read_bytes'])} more to read")  # fmt: skip
        lines += [f"    + {_clip(p)}" for p in pos[:3]] + ([f"    + ... {len(pos) - 3} more"] if len(pos) > 3 else [])
        lines += [f"    - {_clip(p)}" for p in neg[:3]] + ([f"    - ... {len(neg) - 3} more"] if len(neg) > 3 else [])
    lines += [f"shared expert: {m}" for m in s["shared_experts"]]
    p = s["parameters"]
    lines.append(f"parameters: {p['total']:,} total, {p['active']:,} active per token")
    by_dtype = ", ".join(f"{d} {_size(b)}" for d, b in s["output_bytes_by_dtype"].items())
    lines.append(f"output: {_size(s['output_bytes'])} in {_count(s['shards'], 'shard')} (as {by_dtype})")
    lines.append(f"download: {_size(s['download_bytes'])}")
    lines.append(f"peak RAM: about {_size(s['peak_ram_bytes'])}")
    if h := s["hidden_pass"]:
        where = "GPU memory" if h["device"].startswith("cuda") else "RAM"
        quant = f" in {h['quantize']}" if h["quantize"] else ""
        lines.append(f"{h['name']}: {h['prompts']} prompts on {h['device']}{quant}, needs about "
                     f"{_size(h['peak_bytes'])} of {where}; {_size(h['room_bytes'])} free ({h['room_source']})")  # fmt: skip
        lines.append("  " + {
            "memory": "it fits: the model is loaded in memory",
            "offload": f"it does not fit: {_size(h['budget_bytes'])} of weights stay in memory, the rest is read from "
                       "disk as each layer runs (same routers, slower)" if where == "RAM" else
                       f"it does not fit: {_size(h['budget_bytes'])} of weights on the GPU, the rest in CPU memory "
                       "and on disk (same routers, slower)",
            "refuse": f"it cannot run here: even offloaded it needs {_size(h['smallest_bytes'])}; the merge will "
                      "stop before loading",
        }[h["path"]])  # fmt: skip
    d = s["disk"]
    lines.append(f"time: about {s['estimated_seconds']:.0f} s of disk work (read {_size(d['read_bytes_per_s'])}/s, "
                 f"write {_size(d['write_bytes_per_s'])}/s measured){' plus the ' + s['hidden_pass']['name'] if s['hidden_pass'] else ''}")  # fmt: skip
    lines += [f"note: {w}" for w in s["warnings"]]
    return "\n".join(lines)
