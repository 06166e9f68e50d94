"""Real tier: `hidden` routers from a bitsandbytes 4/8-bit pass of the real base on CPU, against the float32 ones
(worst cosine per layer x expert row, and how often both pick the same top-k experts for held-out tokens)."""

import pytest
import torch

from moemerge.config.schema import ExpertConfig
from moemerge.forward.loading import LoadOptions, load_tokenizer, loaded_model
from moemerge.gates import GateContext, compute_routers
from moemerge.real import merge_config
from moemerge.sources.folder import open_source

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def bnb_on_cpu():
    bnb = pytest.importorskip("bitsandbytes")
    try:
        bnb.functional.quantize_4bit(torch.ones(64, 64), quant_type="nf4")
    except (RuntimeError, NotImplementedError) as exc:  # a build without CPU kernels
        pytest.skip(f"bitsandbytes cannot quantise on CPU here: {exc}")


@pytest.fixture(scope="module")
def setup(real_assets):
    config = merge_config(real_assets, gate_mode="hidden")
    experts = [ExpertConfig(source_model=e["source_model"], positive_prompts=e["positive_prompts"],
                            negative_prompts=e["negative_prompts"]) for e in config["experts"]]  # fmt: skip
    source = open_source(
        str(real_assets.base), base_dir=real_assets.base.parent, wanted=lambda _: True, side_files=True
    )
    layers, hidden = source.config["num_hidden_layers"], source.config["hidden_size"]

    def routers(load):
        return torch.from_numpy(compute_routers("hidden", GateContext(source, experts, layers, hidden, 0, load=load)))

    # float32 residual stream entering each layer, every real token of every held-out prompt: (L, T, H)
    tokenizer, states = load_tokenizer(real_assets.base, LoadOptions()), []
    with loaded_model(real_assets.base, LoadOptions()) as model, torch.inference_mode():
        for prompts in real_assets.held_out_prompts.values():
            for prompt in prompts:
                ids = tokenizer((tokenizer.bos_token or "") + prompt, add_special_tokens=False, return_tensors="pt")
                out = model(**ids, output_hidden_states=True, use_cache=False)
                states.append(torch.stack(out.hidden_states[:layers])[:, 0])
    return routers, routers(LoadOptions()), torch.cat(states, dim=1)


def _agreement(states, exact, other, k):
    """Share of (layer, token) pairs where both router sets pick the same set of top-k experts."""
    picks = [torch.einsum("lth,leh->lte", states, r).topk(k, dim=-1).indices.sort(-1).values for r in (exact, other)]
    return (picks[0] == picks[1]).all(-1).float().mean().item()


# measured (worst cosine, top-1, top-2 agreement): 8-bit 0.9935 / 98.9% / 98.4%, 4-bit NF4 0.935 / 94.2% / 94.6%
@pytest.mark.parametrize(("bits", "cosine", "top1", "top2"), [("8bit", 0.985, 0.97, 0.96), ("4bit", 0.91, 0.92, 0.92)])
def test_quantised_routers_track_float32(bnb_on_cpu, setup, bits, cosine, top1, top2):
    routers, exact, states = setup
    quantised = routers(LoadOptions(quantize=bits))
    assert torch.nn.functional.cosine_similarity(exact, quantised, dim=-1).min() >= cosine
    assert _agreement(states, exact, quantised, 1) >= top1
    assert _agreement(states, exact, quantised, 2) >= top2
