"""Show what a merge gives a user: the MoE's greedy chat answer to one question per domain, where each domain's
prompts are routed (OUT/routing.json) and how its loss compares with the base and the experts (OUT/eval.json).

Usage: python examples/show.py OUT [--question DOMAIN=TEXT ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

QUESTIONS = {
    "code": "Write a Python function that returns the squares of a list of numbers.",
    "math": "Tom has 12 apples and buys 7 more. How many apples does he have now?",
    "prose": "What is a module in Python? Answer in two sentences.",
    "chat": "What is the capital of France?",
}


def answer(model, tokenizer, question: str, max_new_tokens: int) -> str:
    """The model's greedy reply to one user turn, through the checkpoint's own chat template."""
    import torch

    messages = [{"role": "user", "content": question}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        generated = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(generated[0][ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--question", action="append", default=[], help="DOMAIN=TEXT (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=60)
    args = parser.parse_args()
    questions = dict(QUESTIONS)
    questions.update(dict(q.split("=", 1) for q in args.question))

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from moemerge.forward.evaluate import format_table as eval_table
    from moemerge.forward.routing import format_table as routing_table

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(args.out))
    model, info = AutoModelForCausalLM.from_pretrained(str(args.out), dtype=torch.float32, output_loading_info=True)
    print(f"loaded {type(model).__name__}: missing={info['missing_keys']} unexpected={info['unexpected_keys']}\n")
    for domain, question in questions.items():
        print(f"[{domain}] user: {question}")
        reply = answer(model, tokenizer, question, args.max_new_tokens)
        print("  moe:  " + reply.replace("\n", "\n        ") + "\n")
    routing = args.out / "routing.json"
    if routing.is_file():  # written by `--routing-report` or `moemerge route OUT`
        print(routing_table(json.loads(routing.read_text())))
        print(f"charts: {args.out / 'routing.png'}\n")
    evaluation = args.out / "eval.json"
    if evaluation.is_file():  # written by `moemerge eval OUT`
        print(eval_table(json.loads(evaluation.read_text())))
        print(f"chart: {args.out / 'eval.png'}")


if __name__ == "__main__":
    main()
