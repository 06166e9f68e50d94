"""The fast paths of a merge: in-kernel copies of unchanged tensors (byte-identical, with a fallback through memory)
and the Inf/NaN test on the integer bits of every float dtype."""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from test_merge_mixtral import ALLOW_SAME

from moemerge.errors import SourceError
from moemerge.merge import finite, stream
from moemerge.merge.tensor_plan import FromModel, PlannedTensor
from moemerge.sources.folder import ModelSource, read_safetensors_header

FLOATS = ["float64", "float32", "float16", "bfloat16", "float8_e5m2", "float8_e4m3fn"]


def stored_tensors(folder) -> dict[str, bytes]:
    """Every tensor's bytes as stored, straight from the files (not through safetensors or torch)."""
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        blob = file.read_bytes()
        length = struct.unpack("<Q", blob[:8])[0]
        for name, entry in json.loads(blob[8 : 8 + length]).items():
            if name != "__metadata__":
                begin, end = entry["data_offsets"]
                out[name] = blob[8 + length + begin : 8 + length + end]
    return out


def merge(models, write_config, cli, tmp_path, family="llama", out="out", **extra):
    base = models.base(family)
    expert = models.expert(base, 1)
    config = write_config({"base_model": str(base), "gate_mode": "random", **extra,
                           "experts": [{"source_model": str(expert)}, {"source_model": str(base)}]})  # fmt: skip
    code, _, err = cli(config, tmp_path / out, ALLOW_SAME, "-q", "--out-shard-size", "40k")
    assert code == 0, err
    return stored_tensors(base), stored_tensors(expert), stored_tensors(tmp_path / out)


@pytest.fixture
def copy_calls(monkeypatch):
    """Count the in-kernel copies (and the bytes they moved) while letting them happen."""
    calls = []
    real = os.copy_file_range

    def spy(src, dst, count, offset_src=None, offset_dst=None):
        copied = real(src, dst, count, offset_src, offset_dst)
        calls.append(copied)
        return copied

    monkeypatch.setattr(os, "copy_file_range", spy)
    return calls


def test_unchanged_tensors_are_kernel_copied_byte_identical(models, write_config, cli, tmp_path, copy_calls):
    src, exp, out = merge(models, write_config, cli, tmp_path)
    assert out["model.embed_tokens.weight"] == src["model.embed_tokens.weight"]
    assert out["model.layers.1.self_attn.q_proj.weight"] == src["model.layers.1.self_attn.q_proj.weight"]
    assert out["model.layers.1.block_sparse_moe.experts.0.w1.weight"] == exp["model.layers.1.mlp.gate_proj.weight"]
    assert out["model.layers.0.block_sparse_moe.experts.1.w2.weight"] == src["model.layers.0.mlp.down_proj.weight"]
    routers = sum(len(v) for k, v in out.items() if k.endswith("block_sparse_moe.gate.weight"))
    assert sum(copy_calls) == sum(len(v) for v in out.values()) - routers  # everything but the routers


def test_fused_rows_are_kernel_copied_byte_identical(models, write_config, cli, tmp_path, copy_calls):
    src, exp, out = merge(models, write_config, cli, tmp_path, family="phi3")
    fused = exp["model.layers.1.mlp.gate_up_proj.weight"]  # (2 * intermediate, hidden) float32: gate rows, up rows
    w1, w3 = (out[f"model.layers.1.block_sparse_moe.experts.0.{w}.weight"] for w in ("w1", "w3"))
    assert w1 + w3 == fused and len(w1) == len(w3)
    qkv = src["model.layers.0.self_attn.qkv_proj.weight"]
    assert out["model.layers.0.self_attn.q_proj.weight"] == qkv[: len(out["model.layers.0.self_attn.q_proj.weight"])]
    assert copy_calls


def test_changed_tensors_take_the_memory_path(models, write_config, cli, tmp_path, copy_calls):
    src, _, out = merge(models, write_config, cli, tmp_path, dtype="bfloat16")
    embed = torch.frombuffer(bytearray(src["model.embed_tokens.weight"]), dtype=torch.float32)
    assert out["model.embed_tokens.weight"] == embed.to(torch.bfloat16).view(torch.uint8).numpy().tobytes()
    assert copy_calls == []


@pytest.mark.parametrize("failure", ["refused", "after_some_bytes", "missing"])
def test_fallback_when_kernel_copy_is_unavailable(models, write_config, cli, tmp_path, monkeypatch, failure):
    _, _, expected = merge(models, write_config, cli, tmp_path, out="kernel")
    real = os.copy_file_range
    calls = []

    def flaky(src, dst, count, offset_src=None, offset_dst=None):
        calls.append(count)
        if failure == "after_some_bytes" and len(calls) == 1:
            return real(src, dst, max(1, count // 3), offset_src, offset_dst)
        raise OSError(errno.EXDEV if failure == "refused" else errno.EINVAL, "not supported here")

    if failure == "missing":
        monkeypatch.delattr(os, "copy_file_range")
    else:
        monkeypatch.setattr(os, "copy_file_range", flaky)
    _, _, out = merge(models, write_config, cli, tmp_path, out="fallback")
    assert out == expected
    assert len(calls) == {"refused": 1, "after_some_bytes": 2, "missing": 0}[failure]  # gives up once, not per tensor


def test_disk_full_during_kernel_copy_is_one_line(models, write_config, cli, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "copy_file_range", full)
    base = models.base("llama")
    config = write_config({"base_model": str(base), "gate_mode": "random", "experts": [{"source_model": str(base)}]})
    code, _, err = cli(config, tmp_path / "out", ALLOW_SAME, "-q")
    assert code == 2 and "disk full" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize("dtype", FLOATS)
def test_nonfinite_test_agrees_with_isfinite(dtype):
    torch_dtype = getattr(torch, dtype)
    finfo = torch.finfo(torch_dtype)
    clean = torch.cat(
        [
            torch.randn(5000, dtype=torch.float64),
            torch.tensor([finfo.max, -finfo.max, finfo.tiny, -0.0, 0.0], dtype=torch.float64),
        ]
    )
    clean = clean.to(torch_dtype)
    assert clean.double().isfinite().all()
    block = finite.CHECK_BLOCK
    assert not finite.has_nonfinite(clean.view(torch.uint8).numpy(), dtype)
    for bad in (float("nan"), float("inf"), float("-inf")):
        for where in (0, 4999, 5004):
            values = clean.clone()
            values[where] = torch.tensor(bad).to(torch_dtype)
            expected = not values.double().isfinite().all()  # float8_e4m3fn has no Inf: it saturates or is NaN
            assert finite.has_nonfinite(values.view(torch.uint8).numpy(), dtype) == expected, (bad, where)
    long = torch.zeros(3 * block + 7, dtype=torch_dtype)
    long[2 * block + 3] = float("nan")  # in a later block of the test
    assert finite.has_nonfinite(long.view(torch.uint8).numpy(), dtype)


@pytest.mark.parametrize("dtype", FLOATS)
def test_nan_found_on_the_copy_path(tmp_path, monkeypatch, dtype):
    """A source tensor taken as stored is still tested, piece by piece, on a map of the file at unaligned offsets."""
    monkeypatch.setattr(stream, "CHUNK_BYTES", 4096)
    torch_dtype = getattr(torch, dtype)
    good = torch.randn(300, 40).to(torch_dtype)
    bad = good.clone()
    bad[250, 7] = float("nan")  # in the last 4 KiB piece for every element size
    file = tmp_path / "model.safetensors"
    save_file({"a_small": torch.ones(3, dtype=torch_dtype), "bad": bad, "good": good}, str(file))
    source = ModelSource("m", tmp_path, {}, read_safetensors_header(file))
    assert source.tensors["bad"].offset % 8 != 0 or source.tensors["bad"].offset % 4096 != 0

    def chunks(name):
        planned = PlannedTensor(name, (300, 40), dtype, FromModel(0, name))
        for _, pieces in stream.stream_tensors([planned], sources=[source], routers={}, seed=0):
            return list(pieces)  # consumed as the writer does, while the stream is open

    pieces = chunks("good")
    assert len(pieces) > 1 and all(isinstance(p, stream.ByteRange) for p in pieces)
    assert sum(p.length for p in pieces) == good.numel() * good.element_size()
    with pytest.raises(SourceError, match="model 'm': tensor bad contains NaN or Inf"):
        chunks("bad")


IMPORTS = """
import json, sys
from moemerge.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(m for m in sys.modules if m.startswith(("transformers", "torch")))}))
"""


@pytest.mark.parametrize("mode", ["random", "uniform_random", "cheap_embed"])
def test_small_merges_import_no_transformers(models, write_config, tmp_path, mode):
    """No transformers at all (config checks read through archs/classes.py); `cheap_embed` and `uniform_random`,
    with a dtype change on every tensor, import no torch either (`random` is torch.randn by definition)."""
    base = models.base("llama")
    experts = [{"source_model": str(models.expert(base, i)), "positive_prompts": [f"prompt {i}", "hello"]}
               for i in (1, 2)]  # fmt: skip
    config = write_config({"base_model": str(base), "gate_mode": mode, "dtype": "bfloat16", "experts": experts})
    proc = subprocess.run([sys.executable, "-c", IMPORTS, str(config), str(tmp_path / "out"), "-q"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["code"] == 0, proc.stderr
    assert [m for m in report["modules"] if m.split(".")[0] == "transformers"] == []
    torch_loaded = any(m.split(".")[0] == "torch" for m in report["modules"])
    assert torch_loaded == (mode == "random")


def test_prechecks_run_ahead_and_answer_for_any_piece(tmp_path, monkeypatch):
    bad = torch.zeros(64, dtype=torch.float16)
    bad[40] = float("inf")
    file = tmp_path / "model.safetensors"
    save_file({"bad": bad, "good": torch.ones(64, dtype=torch.float16)}, str(file))
    info = read_safetensors_header(file)
    good_piece, bad_piece = (stream.ByteRange(file, info[n].offset, 128, "float16") for n in ("good", "bad"))
    checks = finite.Prechecks([good_piece, bad_piece, good_piece])
    assert [piece for piece, _ in checks.started] == [good_piece, bad_piece, good_piece]  # begun before any is asked
    assert checks.nonfinite(good_piece) is False
    assert checks.nonfinite(good_piece) is False  # out of order (bad skipped): tested here and now
    assert finite.Prechecks([]).nonfinite(bad_piece) is True  # not foreseen at all
    monkeypatch.setattr(finite, "AHEAD_BYTES", 128)
    checks = finite.Prechecks([good_piece, bad_piece])
    assert len(checks.started) == 1 and checks.nonfinite(good_piece) is False and len(checks.started) == 1
    assert checks.nonfinite(bad_piece) is True
