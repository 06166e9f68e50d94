"""Output files: shards and index, tied embeddings, .bin sources, dtype conversion, atomic replace."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_moe, logits
from safetensors import safe_open
from test_merge_mixtral import ALLOW_SAME, IDS, all_tensors
from transformers import AutoModelForCausalLM

from moemerge import tiny
from moemerge.cli import parse_size


def same_expert_config(write_config, base, n=2, **extra):
    return write_config({"base_model": str(base), "gate_mode": "random",
                         "experts": [{"source_model": str(base)}] * n, **extra})  # fmt: skip


def test_small_shard_size_gives_valid_index(models, write_config, cli, tmp_path):
    base = models.base("llama")
    code, _, err = cli(
        same_expert_config(write_config, base), tmp_path / "out", ALLOW_SAME, "--out-shard-size", "20k", "-q"
    )
    assert code == 0, err
    out = tmp_path / "out"
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 3 and not (out / "model.safetensors").exists()
    assert shards[0].name == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    seen, total = {}, 0
    for shard in shards:
        with safe_open(str(shard), "pt") as f:
            assert f.metadata() == {"format": "pt"}
            for key in f.keys():
                seen[key] = shard.name
                total += f.get_tensor(key).numel() * 4
    assert index["weight_map"] == seen
    assert index["metadata"]["total_size"] == total
    load_moe(out)


def test_tied_embeddings_stay_tied(models, write_config, cli, tmp_path):
    base = models.base("llama", tie_word_embeddings=True)
    code, _, err = cli(same_expert_config(write_config, base), tmp_path / "out", ALLOW_SAME, "-q")
    assert code == 0, err
    assert "lm_head.weight" not in all_tensors(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is True
    moe = load_moe(tmp_path / "out")
    assert moe.lm_head.weight.data_ptr() == moe.model.embed_tokens.weight.data_ptr()
    dense = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    torch.testing.assert_close(logits(moe, IDS), logits(dense, IDS), atol=1e-5, rtol=0)


def test_bin_source(models, write_config, cli, tmp_path):
    folder = tmp_path / "binbase"
    model = AutoModelForCausalLM.from_pretrained(str(models.base("llama")), dtype=torch.float32)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text((models.base("llama") / "config.json").read_text())
    tiny.make_tokenizer(folder)
    code, _, err = cli(same_expert_config(write_config, folder), tmp_path / "out", ALLOW_SAME, "-q")
    assert code == 0, err
    moe = load_moe(tmp_path / "out")
    torch.testing.assert_close(logits(moe, IDS), logits(model.eval(), IDS), atol=1e-5, rtol=0)


def test_bfloat16_conversion_is_exact(models, write_config, cli, tmp_path):
    base = models.base("llama")
    expert = models.expert(base, 1)
    config = write_config({"base_model": str(base), "gate_mode": "random", "dtype": "torch.bfloat16",
                           "experts": [{"source_model": str(expert)}, {"source_model": str(base)}]})  # fmt: skip
    code, _, err = cli(config, tmp_path / "out", "-q")
    assert code == 0, err
    out, src, exp = all_tensors(tmp_path / "out"), all_tensors(base), all_tensors(expert)
    assert all(t.dtype == torch.bfloat16 for t in out.values())
    assert torch.equal(out["model.embed_tokens.weight"], src["model.embed_tokens.weight"].to(torch.bfloat16))
    w1 = out["model.layers.1.block_sparse_moe.experts.0.w1.weight"]
    assert torch.equal(w1, exp["model.layers.1.mlp.gate_proj.weight"].to(torch.bfloat16))
    config_json = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config_json["dtype"] == config_json["torch_dtype"] == "bfloat16"


def test_overwrite_replaces_and_leaves_no_temp(models, write_config, cli, tmp_path):
    base = models.base("llama")
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    config = same_expert_config(write_config, base)
    code, _, err = cli(config, out, ALLOW_SAME, "-q")
    assert code == 2 and "--overwrite" in err and (out / "stale.txt").exists()
    assert cli(config, out, ALLOW_SAME, "-q", "--overwrite")[0] == 0
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "out"]


@pytest.mark.parametrize("text,expected", [
    ("5GB", 5 * 10**9), ("500MB", 500 * 10**6), ("2GiB", 2 * 2**30), ("5B", 5 * 10**9), ("500M", 500 * 10**6),
    ("1k", 1000), ("0", 0), ("123456", 123456),
])  # fmt: skip
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_writer_copies_byte_ranges_and_writes_tensors(tmp_path):
    """The writer knows no plan: a tensor's chunks may mix in-memory tensors and byte ranges of any file."""
    from safetensors.torch import load_file, save_file

    from moemerge.merge.writer import ShardLayout, write_shards
    from moemerge.sources.folder import ByteRange, read_safetensors_header

    source = {"w": torch.randn(6, 5), "b": torch.arange(7, dtype=torch.int64)}
    save_file(source, str(tmp_path / "src.safetensors"))
    info = read_safetensors_header(tmp_path / "src.safetensors")
    rows = 5 * 4  # bytes per row of w

    def stream():
        w = info["w"]
        yield "w", iter([ByteRange(w.file, w.offset, 2 * rows, "float32"), source["w"][2:4],
                         ByteRange(w.file, w.offset + 4 * rows, 2 * rows, "float32")])  # fmt: skip
        yield "b", iter([ByteRange(info["b"].file, info["b"].offset, 7 * 8, "int64")])
        yield "z", iter([torch.zeros(3, dtype=torch.bfloat16)])

    layouts = [ShardLayout("a.safetensors", [("w", "float32", (6, 5)), ("b", "int64", (7,))]),
               ShardLayout("b.safetensors", [("z", "bfloat16", (3,))])]  # fmt: skip
    write_shards(tmp_path, layouts, stream())
    out = load_file(str(tmp_path / "a.safetensors"))
    assert torch.equal(out["w"], source["w"]) and torch.equal(out["b"], source["b"])
    assert torch.equal(load_file(str(tmp_path / "b.safetensors"))["z"], torch.zeros(3, dtype=torch.bfloat16))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {"b": "a.safetensors", "w": "a.safetensors", "z": "b.safetensors"}
