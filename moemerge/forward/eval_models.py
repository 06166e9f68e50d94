"""The models `moemerge eval --compare` scores beside the MoE: the base and each expert named in OUT/moemerge.yml,
found as recorded there (absolute or OUT-relative folders, the folders the merge read, Hub ids); a LoRA expert
(`MODEL+ADAPTER`) is its model with the adapter applied by peft."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import yaml

from moemerge.config.schema import load_config
from moemerge.errors import ConfigError, SourceError
from moemerge.sources import hub
from moemerge.sources import lora_source as adapters


@dataclass(frozen=True)
class Compared:
    name: str  # the table's column: `base` or `i: short name`
    ref: str  # as written in moemerge.yml
    folder: Path
    adapter: Path | None = None  # a LoRA expert's adapter folder


def short(ref: str) -> str:
    return ref.rstrip("/").split("/")[-1] or ref


def _provenance(out: Path) -> dict[str, str]:
    """Model reference -> the folder the merge read it from, from moemerge.yml's commented provenance block."""
    lines = (out / "moemerge.yml").read_text(encoding="utf-8").split("# Provenance\n", 1)[1:]
    block = "".join(line[2:] + "\n" for line in lines[0].splitlines() if line.startswith("# ")) if lines else ""
    try:
        sources = (yaml.safe_load(block) or {}).get("sources") or []
        return {s["model"]: s["path"] for s in sources if isinstance(s, dict) and s.get("path")}
    except (yaml.YAMLError, AttributeError, KeyError, TypeError):
        return {}


def _locate(ref: str, out: Path, provenance: dict[str, str], field: str, *, adapter: bool = False) -> Path:
    """An absolute folder, one relative to OUT, the folder the merge read, one relative to the current folder, or a
    Hub id (through the Hugging Face cache)."""
    marker = "adapter_config.json" if adapter else "config.json"
    path = Path(ref).expanduser()
    candidates = [path] if path.is_absolute() else [out / path, Path(provenance.get(ref, "/nonexistent")), path]
    for candidate in candidates:
        if (candidate / marker).is_file():
            return candidate.resolve()
    if hub.looks_like_hub_id(ref) and not ref.startswith((".", "/", "~")):
        try:
            fetched = (
                hub.fetch_adapter(ref) if adapter else hub.fetch_model(ref, wanted=lambda _: True, side_files=False)
            )
        except SourceError as exc:
            raise SourceError(f"{out}/moemerge.yml: {field}: {exc}") from None
        return fetched[0]
    what = "an adapter folder" if adapter else "a model folder"
    raise ConfigError(f"{out}/moemerge.yml: {field} {ref!r} is not {what} (looked relative to {out} and to the "
                      "current folder) nor a Hub id; --compare needs every model the merge read")  # fmt: skip


def _expert(i: int, ref: str, out: Path, provenance: dict[str, str]) -> Compared:
    field = f"experts[{i}].source_model"
    lora = adapters.split_ref(ref, base_dir=out)
    if lora is None:
        return Compared(f"{i}: {short(ref)}", ref, _locate(ref, out, provenance, field))
    if importlib.util.find_spec("peft") is None:
        raise ConfigError(f"{field}: comparing a LoRA expert ({ref}) needs peft: pip install peft")
    model, adapter = lora
    return Compared(f"{i}: {short(adapter)}", ref, _locate(model, out, provenance, field),
                    _locate(adapter, out, provenance, field, adapter=True))  # fmt: skip


def compared_models(out: Path) -> list[Compared]:
    """The base and each expert named in OUT/moemerge.yml, in column order."""
    if not (out / "moemerge.yml").is_file():
        raise ConfigError(f"{out}: no moemerge.yml naming the base and experts; --compare needs it")
    config, provenance = load_config(out / "moemerge.yml"), _provenance(out)
    base = Compared("base", config.base_model, _locate(config.base_model, out, provenance, "base_model"))
    return [base, *(_expert(i, e.source_model, out, provenance) for i, e in enumerate(config.experts))]


def with_adapter(model, adapter: Path | None):
    """The model with a LoRA adapter applied by peft (as the expert was fine-tuned), or the model itself."""
    if adapter is None:
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter)).eval()
