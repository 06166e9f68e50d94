"""The near-degenerate router warning: mergekit's condition-number rule for rows that are plain prompt means, and a
rule that holds for contrastive rows (each domain's prompts as the others' negatives), which sum to about zero."""

from __future__ import annotations

import numpy as np
import torch
from test_merge_mixtral import all_tensors

from moemerge.gates import degenerate_layers
from moemerge.merge.verify import check_files, check_routers
from moemerge.sources.headers import read_json

DOMAINS = {
    "code": ["def add(a, b): return a + b", "import numpy as np", "for i in range(10): print(i)"],
    "math": ["Solve for x: 2x + 3 = 7.", "What is 12 times 7?", "The integral of x squared is x cubed over three."],
    "story": ["Once upon a time there was a dragon.", "The princess rode north at dawn.", "They lived happily."],
}


def contrastive_rows(means):
    """Each expert's row as the hidden gates build it with the other experts' prompts as negatives (written here)."""
    rows = [means[e] - np.delete(means, e, axis=0).mean(axis=0) for e in range(len(means))]
    return np.stack([r / np.linalg.norm(r) for r in rows])


def test_contrastive_rows_that_separate_do_not_warn():
    rng = np.random.default_rng(0)
    shared = 10 * rng.standard_normal(64)  # a large direction all prompt means share, as real hidden states do
    means = shared + rng.standard_normal((3, 64))
    rows = contrastive_rows(means)[None]  # (layers=1, experts, hidden)
    assert np.linalg.cond(rows[0]) > 1e6  # the rows sum to about zero: mergekit's rule would fire
    assert degenerate_layers(rows, contrastive=[True] * 3) == {}
    own = np.argmax((means - means.mean(axis=0)) @ rows[0].T, axis=1)  # what sets each prompt set apart picks
    assert own.tolist() == [0, 1, 2]


def test_plain_rows_keep_mergekits_rule():
    rng = np.random.default_rng(1)
    shared = 10 * rng.standard_normal(64)
    means = shared + rng.standard_normal((3, 64))
    rows = (means / np.linalg.norm(means, axis=-1, keepdims=True))[None]
    assert np.linalg.cond(rows[0]) > 5
    assert list(degenerate_layers(rows)) == [0] == list(degenerate_layers(rows, contrastive=[False] * 3))


def test_contrastive_rows_that_coincide_or_average_warn():
    rng = np.random.default_rng(2)
    rows = contrastive_rows(rng.standard_normal((4, 64)))
    same = rows.copy()
    same[1] = same[0]  # two experts with the same positive and negative prompts
    between = rows.copy()
    between[3] = (rows[0] + rows[1]) / np.linalg.norm(rows[0] + rows[1])  # a weighted average of two others
    routers = np.stack([rows, same, between]).astype(np.float32)
    bad = degenerate_layers(routers, contrastive=[True] * 4)
    assert sorted(bad) == [1, 2] and "minus their mean" in bad[1]


def merge(models, write_config, cli, tmp_path, experts, mode="cheap_embed"):
    base = models.base("llama")
    entries = [{"source_model": str(models.expert(base, i + 1)), **fields} for i, fields in enumerate(experts)]
    config = write_config({"base_model": str(base), "gate_mode": mode, "experts": entries})
    code, _, err = cli(config, tmp_path / "out", "--overwrite")
    assert code == 0, err
    out = all_tensors(tmp_path / "out")
    return torch.stack([out[f"model.layers.{layer}.block_sparse_moe.gate.weight"] for layer in range(2)]), err


def verify_notes(out):
    tensors, findings, _ = check_files(out)
    assert not findings
    return check_routers(out, read_json(out / "config.json"), tensors)[1]


def test_demo_like_config_does_not_warn(models, write_config, cli, tmp_path):
    for mode in ("cheap_embed", "mlp_input_avg"):
        experts = [{"positive_prompts": prompts,
                    "negative_prompts": [p for other, ps in DOMAINS.items() if other != name for p in ps]}
                   for name, prompts in DOMAINS.items()]  # fmt: skip
        routers, err = merge(models, write_config, cli, tmp_path, experts, mode)
        assert "near-degenerate" not in err, (mode, err)
        assert all(torch.linalg.cond(r.double()) > 5 for r in routers)  # what the old rule looked at
        assert verify_notes(tmp_path / "out") == []  # `moemerge verify` reads the negatives from moemerge.yml


def test_two_experts_with_the_same_prompts_still_warn(models, write_config, cli, tmp_path):
    code, math = DOMAINS["code"], DOMAINS["math"]
    plain = [{"positive_prompts": code}, {"positive_prompts": code}, {"positive_prompts": math}]
    _, err = merge(models, write_config, cli, tmp_path, plain)
    assert "near-degenerate in all 2 layers (condition number > 5)" in err
    assert verify_notes(tmp_path / "out") == ["routers near-degenerate (condition number > 5) in layers [0, 1]"]

    contrastive = [{"positive_prompts": code, "negative_prompts": math}] * 2
    contrastive.append({"positive_prompts": math, "negative_prompts": code})
    _, err = merge(models, write_config, cli, tmp_path, contrastive, "mlp_input_avg")
    assert "near-degenerate in all 2 layers (condition number of the rows minus their mean > 5)" in err
    assert verify_notes(tmp_path / "out") == [
        "routers near-degenerate (condition number of the rows minus their mean > 5) in layers [0, 1]"
    ]
