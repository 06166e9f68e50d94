"""The library modules the page calls, by role: the one place that knows where each lives (imported on first use)."""

from __future__ import annotations

import importlib
from types import ModuleType

WHERE = {
    "pipeline": "moemerge.merge.pipeline",  # prepare(), merge(), MergeOptions: `moemerge CONFIG OUT`, `plan`
    "costs": "moemerge.merge.costs",  # summarize(), format_summary(): `moemerge plan`
    "verify": "moemerge.merge.verify",  # `moemerge verify`
    "routing": "moemerge.forward.routing",  # `moemerge route`
    "tokens": "moemerge.forward.tokens",  # token_routes(): `moemerge route --text`
    "evaluate": "moemerge.forward.evaluate",  # `moemerge eval`
    "loading": "moemerge.forward.loading",  # LoadOptions, loaded_model(), load_tokenizer()
    "upload": "moemerge.publish.upload",  # `moemerge push`
    "hub": "moemerge.sources.hub",  # looks_like_hub_id()
    "data": "moemerge.training.data",  # parse_specs(): `moemerge tune --data`
    "loop": "moemerge.training.loop",  # TuneSettings
    "tuned": "moemerge.merge.tuned",  # tune(): `moemerge tune`
    "record": "moemerge.training.record",  # RECORD (tune.json)
}


def lib(role: str) -> ModuleType:
    return importlib.import_module(WHERE[role])
