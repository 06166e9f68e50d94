"""Load a merged checkpoint, generate a little text, and show where each expert's prompts are routed.

Usage: python examples/show.py OUT [CONFIG]
"""

import sys
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from moemerge.routing import routing_shares


def main() -> None:
    hf_logging.disable_progress_bar()
    out = Path(sys.argv[1])
    config = yaml.safe_load((Path(sys.argv[2]) if len(sys.argv) > 2 else out / "moemerge.yml").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    model, info = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, output_loading_info=True)
    print(f"loaded {type(model).__name__}: missing={info['missing_keys']} unexpected={info['unexpected_keys']}")
    prompt = config["experts"][0]["positive_prompts"][0]
    ids = tokenizer(tokenizer.bos_token + prompt, add_special_tokens=False, return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=12, do_sample=False)
    print(f"generate({prompt!r}) -> {tokenizer.decode(generated[0][ids['input_ids'].shape[1] :])!r}")
    print("(the demo's experts are random weights, so the text is noise; the routing below is the point)\n")
    sets = {f"expert {i} prompts": e["positive_prompts"] for i, e in enumerate(config["experts"])}
    shares = routing_shares(out, sets)
    n = len(config["experts"])
    print("share of tokens whose first-choice expert is e, averaged over layers:")
    print(" " * 20 + "".join(f"{'expert ' + str(e):>10}" for e in range(n)))
    for name, per_layer in shares.items():
        mean = [sum(layer[e] for layer in per_layer) / len(per_layer) for e in range(n)]
        print(name.ljust(20) + "".join(f"{m:>10.0%}" for m in mean))


if __name__ == "__main__":
    main()
