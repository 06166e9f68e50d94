"""Three offline text domains, seeded and deterministic: Python code (the standard library's own sources), arithmetic
word problems with worked answers (a generator), and English prose (the Python reference's topics, code removed)."""

from __future__ import annotations

import random
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

DOMAINS = ("code", "math", "prose")
TRAIN_CHARS = 120_000  # more than a fine-tune of a few dozen 4 x 128-token steps reads
EVAL_CHARS = 10_000  # about 2,500-3,000 tokens of held-out text per domain
PROMPTS = 8  # positive prompts per domain (train side), and as many held-out prompts (eval side)
END = "<|im_end|>\n"  # ends each training document, so the experts keep ending their chat answers


@dataclass(frozen=True)
class Domain:
    name: str
    train: str  # documents end with END
    held_out: str
    prompts: list[str]  # short prompts from the train side, for the gate config
    held_out_prompts: list[str]  # short prompts from the held-out side, for routing checks


def _take(pieces: list[str], chars: int, sep: str = "\n\n") -> str:
    out, total = [], 0
    for piece in pieces:
        if total >= chars:
            break
        out.append(piece)
        total += len(piece)
    return sep.join(out)[:chars]


def _first_lines(pieces: list[str], count: int, pattern: str) -> list[str]:
    """The first `count` distinct lines (of 20 to 120 chars) matching `pattern` across `pieces`, in order."""
    found: list[str] = []
    for piece in pieces:
        for line in piece.splitlines():
            line = line.strip()
            if 20 <= len(line) <= 120 and re.match(pattern, line) and line not in found:
                found.append(line)
                break  # one per piece keeps them varied
        if len(found) == count:
            break
    return found


def code(seed: int) -> Domain:
    """Standard-library .py files, split by file: the held-out files are never trained on."""
    files = sorted(p for p in Path(sysconfig.get_paths()["stdlib"]).glob("*.py") if p.stat().st_size > 4000)
    random.Random(seed).shuffle(files)
    pieces = [f.read_text(encoding="utf-8", errors="replace")[:6000] for f in files]
    held, train = pieces[:12], pieces[12:]
    pattern = r"(def \w+\(|class \w+|import \w|from [\w.]+ import \w|return \w)"
    return Domain("code", _take(train, TRAIN_CHARS, END), _take(held, EVAL_CHARS),
                  _first_lines(train, PROMPTS, pattern), _first_lines(held, PROMPTS, pattern))  # fmt: skip


NAMES = ["Anna", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kofi", "Lena", "Maya"]
ITEMS = ["apples", "marbles", "stickers", "pencils", "cookies", "books", "stamps", "shells", "cards", "eggs"]


def _problem(rng: random.Random) -> str:
    name, other = rng.sample(NAMES, 2)
    items = rng.choice(ITEMS)
    a, b = rng.randint(2, 40), rng.randint(2, 12)
    match rng.randrange(5):
        case 0:
            c = rng.randint(1, a + b - 1)
            return (f"{name} has {a} {items}. {name} gets {b} more and gives {c} to {other}. How many {items} does "
                    f"{name} have now?\nAnswer: {name} starts with {a} {items}. After getting {b} more, {name} has "
                    f"{a} + {b} = {a + b}. After giving away {c}, {name} has {a + b} - {c} = {a + b - c}. "
                    f"The answer is {a + b - c}.")  # fmt: skip
        case 1:
            return (f"A box holds {a} {items}. How many {items} are in {b} boxes?\nAnswer: Each box holds {a} {items}, "
                    f"so {b} boxes hold {b} x {a} = {a * b}. The answer is {a * b}.")  # fmt: skip
        case 2:
            return (f"{name} shares {a * b} {items} equally among {b} friends. How many {items} does each friend "
                    f"get?\nAnswer: {name} has {a * b} {items} for {b} friends, so each gets {a * b} / {b} = {a}. "
                    f"The answer is {a}.")  # fmt: skip
        case 3:
            bill = next(v for v in (5, 10, 20, 50, 100, 200, 500) if v >= a * b)
            return (f"{name} buys {b} notebooks at {a} dollars each and pays with a {bill} dollar bill. How much "
                    f"change does {name} get?\nAnswer: The notebooks cost {b} x {a} = {a * b} dollars. The change is "
                    f"{bill} - {a * b} = {bill - a * b} dollars. The answer is {bill - a * b}.")  # fmt: skip
        case _:
            speed = rng.randint(3, 12) * 10
            return (f"A train travels at {speed} km per hour for {b} hours. How far does it travel?\nAnswer: "
                    f"Distance is speed times time, so the train travels {speed} x {b} = {speed * b} km. "
                    f"The answer is {speed * b}.")  # fmt: skip


def math(seed: int) -> Domain:
    """Generated word problems; the held-out text comes from another seed's generator."""
    train = [_problem(random.Random(f"math-train-{seed}-{i}")) for i in range(TRAIN_CHARS // 150)]
    held = [_problem(random.Random(f"math-eval-{seed}-{i}")) for i in range(EVAL_CHARS // 150)]
    return Domain("math", _take(train, TRAIN_CHARS, END), _take(held, EVAL_CHARS),
                  [p.split("\n")[0] for p in train[:PROMPTS]], [p.split("\n")[0] for p in held[:PROMPTS]])  # fmt: skip


def _prose_paragraphs(text: str) -> list[str]:
    """A topic's plain paragraphs, re-flowed to one line: no code, grammar, headings or tables."""
    keep = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.splitlines()
        if not lines or any(line.startswith(" ") or set(line) <= set("*=-+|") for line in lines):
            continue
        paragraph = " ".join(line.strip() for line in lines)
        if len(paragraph) > 80 and paragraph[-1] in ".:" and ">>>" not in paragraph:
            keep.append(paragraph)
    return keep


def prose(seed: int) -> Domain:
    """Plain paragraphs of the Python reference manual's topics (pydoc_data), split by topic."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    random.Random(seed).shuffle(names)
    pieces = ["\n\n".join(p) for p in (_prose_paragraphs(topics[n]) for n in names) if p]
    held, train = pieces[:10], pieces[10:]
    return Domain("prose", _take(train, TRAIN_CHARS, END), _take(held, EVAL_CHARS),
                  _first_sentences(train), _first_sentences(held))  # fmt: skip


def _first_sentences(pieces: list[str]) -> list[str]:
    """The first sentence of each paragraph, when it is of prompt length."""
    paragraphs = [p for piece in pieces for p in piece.split("\n\n")]
    return [s for s in (re.split(r"(?<=\.) ", p)[0] for p in paragraphs) if 20 <= len(s) <= 160][:PROMPTS]


def domains(seed: int = 0) -> dict[str, Domain]:
    """Every domain, by name, in DOMAINS order."""
    return {"code": code(seed), "math": math(seed), "prose": prose(seed)}
