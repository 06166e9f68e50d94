"""Reading the small JSON files of a model folder (config, index) without trusting them to be small."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moemerge.errors import SourceError

MAX_JSON_BYTES = 64 * 2**20


def read_json(file: Path) -> Any:
    """A model's JSON file (config, index); a device, a pipe or an absurdly large file is refused, not read forever."""
    if not file.is_file() or file.stat().st_size > MAX_JSON_BYTES:
        raise SourceError(f"{file}: not a regular JSON file under {MAX_JSON_BYTES // 2**20} MB")
    return json.loads(file.read_text())
