"""The scripts and release files around the package: the demo's step numbers, one version, a licence file."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_demo_steps_are_numbered_one_to_n():
    steps = re.findall(r'^step "(\d+)/(\d+) ', (ROOT / "scripts" / "demo.sh").read_text(), flags=re.M)
    assert [int(i) for i, _ in steps] == list(range(1, len(steps) + 1))
    assert {int(n) for _, n in steps} == {len(steps)}
