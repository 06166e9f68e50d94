"""Where the page may read and write: paths typed into it resolve inside the work folder unless allowed anywhere."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moemerge.errors import ConfigError

PROMPT_FIELDS = ("positive_prompts", "negative_prompts")


@dataclass(frozen=True)
class Workspace:
    """`root`: the --workdir; `anywhere`: --allow-any-path (a page on 127.0.0.1 only)."""

    root: Path
    anywhere: bool = False

    def path(self, text: str, *, what: str = "path") -> Path:
        """A typed path, relative to the work folder; outside it only with --allow-any-path."""
        text = str(text or "").strip()
        if not text:
            raise ConfigError(f"{what}: give a path")
        path = Path(os.path.expanduser(text)) if self.anywhere else Path(text)
        # the check is on the written path (`..` folded, links not followed): links the folder's owner put there are
        # theirs to make; a typed path cannot climb out
        written, root = Path(os.path.abspath(self.root / path)), Path(os.path.abspath(self.root))
        resolved = written.resolve()
        if not self.anywhere and written != root and root not in written.parents:
            raise ConfigError(f"{what}: {text} is outside the work folder {root}; use a path inside it "
                              "(or run `moemerge ui --allow-any-path` on your own machine)")  # fmt: skip
        return resolved

    def model_ref(self, ref: str, *, what: str) -> str:
        """A model reference: a local folder (made absolute, checked) or a Hub id left as it is; `BASE+ADAPTER`
        part by part."""
        return "+".join(self._one_model(part, what) for part in str(ref).split("+"))

    def _one_model(self, ref: str, what: str) -> str:
        from moemerge.ui.lib import lib

        local = ref.startswith((".", "/", "~")) or not lib("hub").looks_like_hub_id(ref)
        if not local and not (self.root / ref).exists():
            return ref  # `org/name`: a Hub model, unless such a folder exists in the work folder
        return str(self.path(ref, what=what))

    def config_data(self, data: Any) -> tuple[Any, list[str]]:
        """The parsed YAML with every local path (models, prompt files, router_training data) made absolute inside
        the work folder; problems name the field, as the config's own checks do."""
        if not isinstance(data, dict):
            return data, []
        data, problems = dict(data), []

        def fix(where: str, value: Any, convert) -> Any:
            if not isinstance(value, str) or not value.strip():
                return value
            try:
                return convert(value, what=where)
            except ConfigError as exc:
                problems.append(str(exc))
                return value

        if "base_model" in data:
            data["base_model"] = fix("base_model", data["base_model"], self.model_ref)
        for group in ("experts", "shared_experts"):
            if not isinstance(data.get(group), list):
                continue
            entries = []
            for i, entry in enumerate(data[group]):
                if isinstance(entry, dict):
                    entry = dict(entry)
                    where = f"{group}[{i}]"
                    entry["source_model"] = fix(f"{where}.source_model", entry.get("source_model"), self.model_ref)
                    for key in PROMPT_FIELDS:  # a string is a prompt file, relative to the config
                        if isinstance(entry.get(key), str):
                            entry[key] = fix(f"{where}.{key}", entry[key], lambda v, what: str(self.path(v, what=what)))
                entries.append(entry)
            data[group] = entries
        section = data.get("router_training")
        if isinstance(section, dict):
            files = section.get("data")

            def one(v, what):
                return str(self.path(v, what=what))

            if isinstance(files, str):
                files = fix("router_training.data", files, one)
            elif isinstance(files, list):
                files = [fix("router_training.data", f, one) for f in files]
            elif isinstance(files, dict):
                files = {k: fix(f"router_training.data.{k}", f, one) for k, f in files.items()}
            data["router_training"] = {**section, "data": files}
        return data, problems
