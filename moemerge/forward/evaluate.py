"""`moemerge eval`: mean next-token loss and perplexity per dataset of a merged model and, to compare, of its base and
experts on exactly the same token windows (OUT's tokenizer); writes eval.json, eval.png and a model-card section."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moemerge.config.schema import MAX_PROMPT_FILE_BYTES, load_config, read_text_file
from moemerge.errors import ConfigError, MergeFailedError, OutputError, problems_error
from moemerge.forward.batching import chunks, left_padded, peak_tokens
from moemerge.forward.eval_models import Compared, compared_models, short, with_adapter
from moemerge.forward.fit import activation_bytes, pass_tokens
from moemerge.forward.loading import LoadOptions, free_memory, input_device, load_tokenizer, loaded_model
from moemerge.forward.windows import cut, prefix, token_ids
from moemerge.publish import card, charts

log = logging.getLogger(__name__)
EVAL_JSON = "eval.json"
EVAL_PNG = "eval.png"
DEFAULT_WINDOW = 256  # tokens per window, or the model's max positions when smaller
EVAL_TOKENS = 2048  # tokens per forward pass: bounds activations and the (tokens, vocab) logits
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Dataset:
    name: str
    source: str  # the file, or where in moemerge.yml the prompts come from
    texts: list[str]  # documents: each is windowed on its own


def parse_data(specs: list[str]) -> list[Dataset]:
    """`--data NAME=FILE` values: every problem (no `=`, empty name, duplicate, missing or empty file) reported."""
    problems, datasets = [], []
    for spec in specs:
        name, sep, file = spec.partition("=")
        name = name.strip()
        if not sep or not name or not file:
            problems.append(f"--data {spec!r}: expected NAME=FILE, e.g. --data code=held_out.py")
        elif name in [d.name for d in datasets]:
            problems.append(f"--data {spec!r}: the name {name!r} is given twice; each dataset needs its own name")
        else:
            try:
                text = read_text_file(Path(file), MAX_PROMPT_FILE_BYTES, "dataset")
            except FileNotFoundError:
                problems.append(f"--data {name}: {file} not found")
                continue
            except UnicodeDecodeError:
                problems.append(f"--data {name}: {file} is not UTF-8 text")  # as tune says it
                continue
            except (OSError, ConfigError) as exc:
                why = exc if isinstance(exc, ConfigError) else f"cannot read {file} ({exc.strerror or exc})"
                problems.append(f"--data {name}: {why}")
                continue
            if not text.strip():
                problems.append(f"--data {name}: {file} is empty")
            datasets.append(Dataset(name, file, [text]))
    if problems:
        raise problems_error(ConfigError, problems)
    return datasets


def prompt_datasets(out: Path) -> list[Dataset]:
    """Without --data: one dataset per expert, its positive prompts from OUT/moemerge.yml (each prompt a document)."""
    if not (out / "moemerge.yml").is_file():
        raise ConfigError(f"{out}: no moemerge.yml with the experts' prompts; pass --data NAME=FILE")
    config = load_config(out / "moemerge.yml")
    datasets = [
        Dataset(
            f"{i}: {short(e.source_model)}", f"moemerge.yml experts[{i}].positive_prompts", list(e.positive_prompts)
        )
        for i, e in enumerate(config.experts)
        if e.positive_prompts
    ]
    if not datasets:
        raise ConfigError(f"{out}: the experts have no positive_prompts to evaluate; pass --data NAME=FILE")
    return datasets


def windows(tokenizer, texts: list[str], *, window: int, max_tokens: int | None) -> list[list[int]]:
    """Each text cut into windows of `window` tokens by tune's rule (moemerge.forward.windows); at most `max_tokens` tokens
    in all."""
    start, budget, out = prefix(tokenizer), max_tokens, []
    for text in texts:
        for ids in cut(token_ids(tokenizer, text, budget), window, start):
            ids = ids[: budget if budget is not None else None]
            if len(ids) >= 2:
                out.append(ids)
                budget = None if budget is None else budget - len(ids)
            if budget is not None and budget < 2:
                return out
    return out


def _score(model_ref: Compared, items, sets: int, load: LoadOptions, pad_id: int, progress: Progress):
    """[(summed next-token loss, scored tokens)] per dataset for one model; padding never counts."""
    import torch
    from torch.nn.functional import cross_entropy

    totals = [[0.0, 0] for _ in range(sets)]
    done, total = 0, sum(len(ids) for _, ids in items)
    per_pass = pass_tokens(model_ref.folder, load, EVAL_TOKENS, logits=True)
    peak = activation_bytes(model_ref.folder, peak_tokens(items, per_pass), logits=True)
    with (
        loaded_model(
            model_ref.folder, load, causal_lm=True, what=f"scoring {model_ref.name}", activations=peak
        ) as loaded,
        torch.inference_mode(),
    ):
        model = with_adapter(loaded, model_ref.adapter)
        vocab = model.get_input_embeddings().num_embeddings
        if max(max(ids) for _, ids in items) >= vocab:
            raise ConfigError(f"{model_ref.ref}: its vocabulary ({vocab} tokens) is smaller than OUT's tokenizer; "
                              "it cannot be scored on the same tokens")  # fmt: skip
        for chunk in chunks(items, per_pass):
            inputs = left_padded(chunk, pad_id, input_device(model))
            logits = model(**inputs, use_cache=False).logits  # (rows, width, vocab)
            ids, real = inputs["input_ids"].to(logits.device), inputs["attention_mask"].to(logits.device).bool()
            scored = real[:, :-1] & real[:, 1:]  # position t predicts token t+1; both must be real
            for row, (d, _) in enumerate(chunk):
                picked = scored[row]
                loss = cross_entropy(logits[row, :-1][picked].float(), ids[row, 1:][picked], reduction="sum")
                totals[d][0] += float(loss.double())
                totals[d][1] += int(picked.sum())
            done += sum(len(ids) for _, ids in chunk)
            progress(model_ref.name, done, total)
        del model, loaded
    free_memory()
    return totals


def _window(out: Path) -> int:
    try:
        positions = json.loads((out / "config.json").read_text()).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        positions = None
    return min(DEFAULT_WINDOW, positions) if isinstance(positions, int) and positions >= 2 else DEFAULT_WINDOW


def evaluate(out: Path, *, datasets: list[Dataset], compare: bool, max_tokens: int | None, load: LoadOptions,
             progress: Progress | None = None) -> dict[str, Any]:  # fmt: skip
    """Score OUT (and with `compare` its base and experts, one model loaded at a time) on every dataset."""
    progress = progress or (lambda stage, done, total: None)
    if not (out / "config.json").is_file():
        raise ConfigError(f"{out}: not a merged model (no config.json)")
    models = [*(compared_models(out) if compare else []), Compared("MoE", str(out), out)]
    tokenizer, window = load_tokenizer(out, load), _window(out)
    items = []
    for d, dataset in enumerate(datasets):
        found = windows(tokenizer, dataset.texts, window=window, max_tokens=max_tokens)
        if not found:
            raise ConfigError(f"dataset {dataset.name} ({dataset.source}): too short to evaluate (needs 2 tokens)")
        items += [(d, ids) for ids in found]
    scores: dict[tuple, list] = {}  # a model named twice (say, every expert = the base) is scored once
    for model in [models[-1], *models[:-1]]:  # the MoE first: a broken OUT fails before anything else
        if (model.folder, model.adapter) not in scores:
            log.info("evaluating %s (%s)", model.name, model.ref)
            pad = tokenizer.pad_token_id or 0
            scores[model.folder, model.adapter] = _score(model, items, len(datasets), load, pad, progress)
    rows = []
    for d, dataset in enumerate(datasets):
        figures = {m.name: scores[m.folder, m.adapter][d] for m in models}
        loss = {name: total / count for name, (total, count) in figures.items()}
        if broken := [name for name, value in loss.items() if not math.isfinite(value)]:
            raise MergeFailedError(f"{', '.join(broken)}: the loss on {dataset.name} is not finite (NaN or inf in the "
                                   "logits); run `moemerge verify` on the model")  # fmt: skip
        rows.append({"name": dataset.name, "source": dataset.source, "windows": sum(1 for i, _ in items if i == d),
                     "tokens": figures["MoE"][1], "loss": loss,
                     "perplexity": {n: math.exp(v) if v < 700 else None for n, v in loss.items()},
                     "best": min(loss, key=loss.get)})  # fmt: skip
    return {"window": window, "max_tokens": max_tokens,
            "models": [{"name": m.name, "model": m.ref, "path": str(m.folder)}
                       | ({"adapter": str(m.adapter)} if m.adapter else {}) for m in models],
            "datasets": rows}  # fmt: skip


def write_results(result: dict[str, Any], out: Path) -> list[Path]:
    """eval.json, eval.png and the card's evaluation section (replaced, never duplicated, on a rerun)."""
    paths = [out / EVAL_JSON, out / EVAL_PNG]
    try:
        paths[0].write_text(json.dumps(result, indent=2) + "\n")
        charts.save(charts.eval_figure(result), paths[1])
        card.update_card(out, "eval", card.eval_section(result))
    except OSError as exc:
        raise OutputError(f"{out}: cannot write the results ({exc.strerror or exc})") from None
    return paths


def format_table(result: dict[str, Any]) -> str:
    """Rows: datasets; columns: the models; cells `loss (perplexity)`, the best loss starred."""
    names = [m["name"] for m in result["models"]]
    width = max([len(d["name"]) for d in result["datasets"]] + [7])

    def cell(d, n):
        ppl = d["perplexity"][n]
        star = "*" if d["best"] == n and len(names) > 1 else " "
        return f"{d['loss'][n]:.3f} ({'inf' if ppl is None else format(ppl, '.2f')}){star}"

    columns = [max(len(n), *(len(cell(d, n)) for d in result["datasets"])) for n in names]
    lines = ["dataset".ljust(width) + "  " + "  ".join(n.rjust(w) for n, w in zip(names, columns)) + "  tokens"]
    for d in result["datasets"]:
        cells = "  ".join(cell(d, n).rjust(w) for n, w in zip(names, columns))
        lines.append(d["name"].ljust(width) + "  " + cells + f"  {d['tokens']:>6,}")
    best = "; * = lowest loss" if len(names) > 1 else ""
    lines.append(f"(mean next-token loss (perplexity) over windows of {result['window']} tokens{best})")
    return "\n".join(lines)
