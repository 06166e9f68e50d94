"""safetensors headers are checked as strictly as the safetensors library checks them, before any weight is read."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
from safetensors import SafetensorError, safe_open

from moemerge.errors import SourceError
from moemerge.sources.folder import ModelSource, read_safetensors_header

GOOD = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}}  # fmt: skip


def write_raw(path, header: dict, data_size: int):
    raw = json.dumps({"__metadata__": {"format": "pt"}, **header}).encode()
    path.write_bytes(
        struct.pack("<Q", len(raw)) + raw + bytes(range(256)) * (data_size // 256) + bytes(data_size % 256)
    )
    return path


def edited(name: str, **fields) -> dict:
    header = json.loads(json.dumps(GOOD))
    header[name].update(fields)
    return header


# (header, data bytes, what moemerge's message says about tensor 'b' or the file)
BAD = {
    "overlap": (edited("b", data_offsets=[8, 24]), 24, "tensor 'b' has invalid data_offsets [8, 24] (overlaps"),
    "gap": (edited("b", data_offsets=[20, 36]), 36, "tensor 'b' has invalid data_offsets [20, 36] (leaves a gap"),
    "trailing_bytes": (GOOD, 40, "8 trailing bytes after tensor 'b'"),
    "truncated": (GOOD, 24, "tensor 'b' runs past the end of the file"),
    "shape_size_mismatch": (edited("b", shape=[5]), 32, "tensor 'b' is 16 bytes but shape [5] of float32 needs 20"),
    "unknown_dtype": (edited("b", dtype="F12"), 32, "tensor 'b': unsupported dtype 'F12'"),
    "reversed_offsets": (edited("b", data_offsets=[32, 16]), 32, "tensor 'b' has invalid data_offsets [32, 16]"),
    "negative_dim": (edited("b", shape=[-4]), 32, "tensor 'b': shape is not a list of non-negative integers"),
    "float_offsets": (edited("b", data_offsets=[16.0, 32]), 32, "tensor 'b': data_offsets is not a pair"),
}


def test_good_files_pass_both(tmp_path):
    file = write_raw(tmp_path / "good.safetensors", GOOD, 32)
    with safe_open(str(file), "pt") as f:
        assert sorted(f.keys()) == ["a", "b"]
    infos = read_safetensors_header(file)
    assert infos["b"].shape == (4,) and infos["b"].offset == file.stat().st_size - 16
    empty = write_raw(tmp_path / "empty.safetensors", {}, 0)
    with safe_open(str(empty), "pt") as f:
        assert list(f.keys()) == []
    assert read_safetensors_header(empty) == {}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_header_refused_by_safetensors_and_moemerge(tmp_path, case):
    header, size, message = BAD[case]
    file = write_raw(tmp_path / f"{case}.safetensors", header, size)
    with pytest.raises(SafetensorError):
        safe_open(str(file), "pt")
    with pytest.raises(SourceError) as err:
        read_safetensors_header(file)
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"{file}: ") and message in line, line


def test_merge_refuses_overlapping_expert_before_reading_weights(models, write_config, cli, tmp_path, monkeypatch):
    base = models.base("llama")
    expert = tmp_path / "expert"
    shutil.copytree(models.expert(base, 1), expert)
    file = expert / "model.safetensors"
    blob = file.read_bytes()
    length = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + length])
    # point the second layer norm's bytes at the first one's: ranges overlap and the data keeps its size
    first, second = "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight"
    header[second]["data_offsets"] = header[first]["data_offsets"]
    raw = json.dumps(header, separators=(",", ":")).encode().ljust(length)
    file.write_bytes(blob[:8] + raw + blob[8 + length :])
    with pytest.raises(SafetensorError):
        safe_open(str(file), "pt")

    def no_reads(*args, **kwargs):
        raise AssertionError("a weight was read")

    monkeypatch.setattr(ModelSource, "read", no_reads)
    config = write_config({"base_model": str(base), "gate_mode": "random",
                           "experts": [{"source_model": str(expert)}, {"source_model": str(base)}]})  # fmt: skip
    code, _, err = cli(config, tmp_path / "out", "-q")
    assert code == 2, err
    assert str(file) in err and "has invalid data_offsets" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
