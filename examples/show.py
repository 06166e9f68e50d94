"""Load a merged checkpoint, generate a little text, and show where each expert's prompts are routed.

Usage: python examples/show.py OUT
"""

import json
import sys
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from moemerge.routing import format_table


def main() -> None:
    hf_logging.disable_progress_bar()
    out = Path(sys.argv[1])
    config = yaml.safe_load((out / "moemerge.yml").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    model, info = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, output_loading_info=True)
    print(f"loaded {type(model).__name__}: missing={info['missing_keys']} unexpected={info['unexpected_keys']}")
    prompt = config["experts"][0]["positive_prompts"][0]
    ids = tokenizer(tokenizer.bos_token + prompt, add_special_tokens=False, return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=12, do_sample=False)
    print(f"generate({prompt!r}) -> {tokenizer.decode(generated[0][ids['input_ids'].shape[1] :])!r}")
    print("(the demo's models are random tiny weights, so the text is noise; the routing below is the point)\n")
    report = out / "routing.json"
    if report.is_file():  # written by `--routing-report` or `moemerge route OUT`
        print(format_table(json.loads(report.read_text())))
        print(f"heatmap: {out / 'routing.png'}")


if __name__ == "__main__":
    main()
