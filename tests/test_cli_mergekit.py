"""Drop-in for mergekit-moe: its command lines (each written down with where it comes from) and the configs it
merges, including the spellings it accepts and the keys it ignores."""

from __future__ import annotations

import shlex

import pytest
import yaml

# Command lines as published, with `mergekit-moe` replaced by `moemerge` and the paths by CONFIG and OUT.
COMMAND_LINES = {
    # mergekit docs/moe.md: "The script takes two arguments, an input config and an output path"
    "mergekit docs/moe.md": "CONFIG OUT",
    # mlabonne's frankenMoE tutorial ("Create Mixtures of Experts with MergeKit"): enough RAM, then "shard the models"
    "frankenMoE tutorial": "CONFIG OUT --copy-tokenizer",
    "frankenMoE tutorial, sharded": "CONFIG OUT --copy-tokenizer --allow-crimes --out-shard-size 1B --lazy-unpickle",
    # LazyMergekit notebook, mixtral branch: `mergekit-moe config.yaml merge --copy-tokenizer` plus the runtime's
    # flags (CPU or GPU) and, when ticked, --trust-remote-code
    "LazyMergekit (CPU)": "CONFIG OUT --copy-tokenizer --allow-crimes --out-shard-size 1B --lazy-unpickle",
    "LazyMergekit (GPU)": "CONFIG OUT --copy-tokenizer --cuda --low-cpu-memory --trust-remote-code",
    # arcee-ai's mergekit-gui Space: its base command plus a LoRA cache in a temporary folder
    "mergekit-gui Space": "CONFIG OUT --copy-tokenizer --lora-merge-cache CACHE/.lora_cache",
    # a local fork of that GUI on a CPU machine
    "local mergekit-gui (CPU)": "CONFIG OUT --copy-tokenizer --allow-crimes --out-shard-size 1B --lazy-unpickle "
    "--transformers-cache CACHE/cache1 --lora-merge-cache CACHE/cache",
    # blog walkthroughs of medical and Chinese-language frankenMoEs
    "walkthrough (os.system)": "CONFIG OUT --copy-tokenizer --allow-crimes --out-shard-size 1B --trust-remote-code",
    "walkthrough (5B shards)": "CONFIG OUT --copy-tokenizer --allow-crimes --out-shard-size 5B --lazy-unpickle "
    "--trust-remote-code",
    # mergekit's MergeOptions, every flag (and the --no- forms) as its add_merge_options writes them
    "mergekit MergeOptions": "CONFIG OUT --allow-crimes --transformers-cache CACHE --lora-merge-cache /tmp/l "
    "--no-cuda --no-low-cpu-memory --out-shard-size 5B --copy-tokenizer --no-clone-tensors --no-trust-remote-code "
    "--random-seed 7 --lazy-unpickle --write-model-card --safe-serialization --no-quiet --no-read-to-gpu "
    "--no-multi-gpu --num-threads 2 --no-gpu-rich --lora-merge-dtype bfloat16 --no-async-write --write-threads 1",
    # the short forms and flags named in the issue report
    "issue 14": "CONFIG OUT -j 2 --low-cpu-memory --gpu-rich --clone-tensors --read-to-gpu --multi-gpu --async-write",
}


@pytest.fixture
def config(models, write_config, capsys):
    base = models.base("llama")
    experts = [{"source_model": str(models.expert(base, s)), "positive_prompts": [f"topic {s}"]} for s in (1, 2)]
    capsys.readouterr()
    return write_config({"base_model": str(base), "gate_mode": "cheap_embed", "dtype": "bfloat16",
                         "experts": experts})  # fmt: skip


@pytest.mark.parametrize("source", list(COMMAND_LINES))
def test_published_command_lines_merge(cli, config, tmp_path, source):
    line = COMMAND_LINES[source].replace("CONFIG", str(config)).replace("OUT", str(tmp_path / "out"))
    line = line.replace("CACHE", str(tmp_path / "cache"))
    code, out, err = cli(*shlex.split(line))
    assert code == 0, err
    assert (tmp_path / "out" / "config.json").is_file() and "wrote" in out


def test_no_effect_options_say_so_with_verbose(cli, config, tmp_path):
    code, _, err = cli(config, tmp_path / "out", "-v", "--low-cpu-memory", "--clone-tensors", "--lora-merge-cache", "x")
    assert code == 0, err
    for name in ("--low-cpu-memory", "--clone-tensors", "--lora-merge-cache"):
        assert f"INFO: {name}: accepted for mergekit-moe compatibility, no effect (" in err


def test_no_safe_serialization_is_refused(cli, config, tmp_path):
    code, _, err = cli(config, tmp_path / "out", "--no-safe-serialization")
    assert code == 2 and "writes only safetensors" in err and not (tmp_path / "out").exists()


def test_no_write_model_card(cli, config, tmp_path):
    assert cli(config, tmp_path / "out", "--no-write-model-card")[0] == 0
    assert not (tmp_path / "out" / "README.md").exists() and (tmp_path / "out" / "moemerge.yml").is_file()


def test_cuda_means_device_cuda(cli, config, write_config, tmp_path):
    import torch

    data = yaml.safe_load(config.read_text()) | {"gate_mode": "hidden"}
    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    for flag in ("--cuda", "--gpu-rich"):
        code, _, err = cli(write_config(data, "hidden.yaml"), tmp_path / "out", flag)
        assert code == 2 and "--device cuda: no CUDA GPU is visible" in err
    assert cli(write_config(data, "hidden.yaml"), tmp_path / "out", "--cuda", "--device", "cpu")[0] == 0


def test_help_keeps_compatibility_options_together(cli):
    code, out, _ = cli("--help")
    options = out[: out.index("mergekit compatibility:")]
    assert code == 0 and "--low-cpu-memory" not in options and "--low-cpu-memory" in out


def test_num_threads_sets_torch_threads(cli, config, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        assert cli(config, tmp_path / "out", "-j", "1")[0] == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
