"""Which experts the merged model's routers actually pick for each prompt set (share of tokens, top-1 choice)."""

from __future__ import annotations

from pathlib import Path


def routing_shares(model_dir: Path, prompt_sets: dict[str, list[str]]) -> dict[str, list[list[float]]]:
    """For each named prompt set: per layer, the share of its tokens whose first-choice expert is e (rows sum to 1)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    bos = tokenizer.bos_token or ""
    shares = {}
    for name, prompts in prompt_sets.items():
        counts = None
        for prompt in prompts:
            ids = tokenizer(bos + prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                router_logits = model(ids, output_router_logits=True).router_logits  # layers x (tokens, experts)
            picks = torch.stack([logit.argmax(dim=-1) for logit in router_logits])  # (layers, tokens)
            hits = torch.nn.functional.one_hot(picks, router_logits[0].shape[-1]).sum(dim=1).double()
            counts = hits if counts is None else counts + hits
        shares[name] = (counts / counts.sum(-1, keepdim=True)).tolist()
    return shares
