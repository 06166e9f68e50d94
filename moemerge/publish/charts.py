"""The figures moemerge writes next to a model: routing.png (`moemerge route`) and eval.png (`moemerge eval`).

Layouts are constrained so that every label lies inside the saved image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ANNOTATE_UP_TO = 16  # cells per row that still get their value written in them


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _heatmap(fig, ax, values, *, columns: list[str], rows: list[str], xlabel: str, bar_label: str) -> None:
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    rotate = max(len(c) for c in columns) > 3
    ax.set_xticks(range(len(columns)), labels=columns, rotation=30 if rotate else 0, ha="right" if rotate else "center",
                  fontsize=8)  # fmt: skip
    ax.set_yticks(range(len(rows)), labels=rows, fontsize=8)
    if len(columns) <= ANNOTATE_UP_TO:
        for r, row in enumerate(values):
            for c, value in enumerate(row):
                ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if value < 0.6 else "black")  # fmt: skip
    ax.set_xlabel(xlabel)
    ax.set_ylabel("prompt set")
    fig.colorbar(image, ax=ax, label=bar_label, fraction=0.05)


def routing_figure(report: dict[str, Any]):
    """Top: prompt set x expert, share of top-k picks (mean over layers). Bottom, for the sets that belong to an
    expert: prompt set x layer, the share of the set's tokens that pick its own expert (routing collapse shows here)."""
    plt = _pyplot()
    sets, experts, layers = report["prompt_sets"], report["experts"], report["layers"]
    owned = [s for s in sets if s.get("hit_rate_per_layer")]
    label_room = 0.07 * max(len(s["name"]) for s in sets)  # inches for the row labels
    width = 2.5 + label_room + max(0.9 * len(experts), min(0.35 * layers, 12.0) if owned else 0.0)
    heights = [1.0 + 0.4 * len(sets)] + ([1.0 + 0.4 * len(owned)] if owned else [])
    extra = 0.12 * max(len(e) for e in experts)  # rotated expert names hang below the top panel
    fig, axes = plt.subplots(len(heights), 1, figsize=(width, sum(heights) + extra + 0.6), dpi=100,
                             layout="constrained", height_ratios=heights, squeeze=False)  # fmt: skip
    k = report["experts_per_token"]
    _heatmap(fig, axes[0][0], [s["share"] for s in sets], columns=experts, rows=[s["name"] for s in sets],
             xlabel=f"expert (share of top-{k} picks, mean over {layers} layers)", bar_label="share")  # fmt: skip
    if owned:
        step = max(1, layers // 16)
        columns = [str(i) if i % step == 0 else "" for i in range(layers)]
        _heatmap(fig, axes[1][0], [s["hit_rate_per_layer"] for s in owned], columns=columns,
                 rows=[s["name"] for s in owned], xlabel="layer",
                 bar_label="own-expert hit")  # fmt: skip
        axes[1][0].set_title(f"share of each set's tokens whose top-{k} picks include its own expert", fontsize=9)
    return fig


def eval_figure(result: dict[str, Any]):
    """One row per dataset, one marker per model at its mean next-token loss (the axis spans the losses, so small
    differences show); the MoE is the black diamond, the lowest loss of each row is starred."""
    plt = _pyplot()
    models, datasets = result["models"], result["datasets"]
    names = [m["name"] for m in models]
    fig, ax = plt.subplots(figsize=(8.0, 1.6 + 0.25 * len(datasets) * max(2, len(names))), dpi=100,
                           layout="constrained")  # fmt: skip
    band = 0.7 / max(1, len(names) - 1)  # each model gets its own line inside a dataset's row
    for m, name in enumerate(names):
        ys = [row + (m - (len(names) - 1) / 2) * band for row in range(len(datasets))]
        xs = [d["loss"][name] for d in datasets]
        style = {"marker": "D", "color": "black", "s": 50, "zorder": 3} if name == "MoE" else {"marker": "o", "s": 36}
        ax.scatter(xs, ys, label=name, **style)
        for x, y, d in zip(xs, ys, datasets):
            if d["best"] == name and len(names) > 1:
                ax.annotate("*", (x, y), xytext=(6, -2), textcoords="offset points", fontsize=12, va="center")
    for row in range(len(datasets)):
        ax.axhline(row + 0.5, color="0.85", linewidth=0.8)
    ax.set_yticks(range(len(datasets)), labels=[d["name"] for d in datasets], fontsize=8)
    ax.set_ylim(len(datasets) - 0.5, -0.5)  # first dataset on top
    ax.set_xlabel("mean next-token loss (lower is better)" + ("; * = lowest" if len(names) > 1 else ""))
    ax.set_ylabel("dataset")
    ax.grid(axis="x", color="0.9")
    ax.margins(x=0.08)
    ax.set_title(f"moemerge eval: windows of {result['window']} tokens", fontsize=9)
    fig.legend(loc="outside right upper", fontsize=8, title="model", title_fontsize=8)
    return fig


def save(fig, path: Path) -> None:
    plt = _pyplot()
    fig.savefig(path)
    plt.close(fig)
