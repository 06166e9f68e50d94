"""The page in a real browser (Playwright driving Debian's Chromium, headless) on tiny models: load a config, see an
error at its field, fix it, merge with progress, routing heatmap, coloured tokens, a greedy chat answer, a short tune
and the card; a screenshot of each tab goes to tests/artifacts/ui/."""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts" / "ui"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="needs gradio: pip install 'moemerge[ui]'"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="needs playwright (pip; no browser download)"),
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium: apt-get install chromium"),
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The page over a work folder holding the tiny demo models and a training text."""
    from moemerge import tiny
    from moemerge.ui.app import launch

    root = tmp_path_factory.mktemp("ui")
    tiny.main([str(root / "models")])
    (root / "data").mkdir()
    (root / "data" / "code.txt").write_text("\n".join(tiny.CORPUS[:4] * 30))
    app, url, _ = launch(port=_free_port(), workdir=root, block=False)
    yield url, root
    app.close() if hasattr(app, "close") else None


def _value(page, selector: str) -> str:
    return page.locator(selector).first.input_value()


def _snap(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_page_end_to_end(served):
    from playwright.sync_api import expect, sync_playwright

    url, root = served
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        expect.set_options(timeout=60_000)
        page.goto(url)
        # Config: the example fills the form and the YAML; a deliberate error shows at its field, then goes
        page.locator("#load-example").click()
        expect(page.locator("#f-base-model textarea, #f-base-model input").first).to_have_value("models/base")
        positive = page.locator("#f-expert-1-positive textarea")
        positive.click()
        positive.press("Control+a")
        positive.press("Backspace")
        positive.press("Tab")  # Gradio sends no input event for an emptied field: leaving it updates the YAML
        expect(page.locator("#err-experts-1")).to_contain_text("experts[1].positive_prompts")
        expect(page.locator("#yaml")).not_to_contain_text("def add")
        _snap(page, "0-config-error")
        positive.fill("def mul(a, b): return a * b\nimport numpy as np")
        positive.press("Tab")
        expect(page.locator("#err-experts-1")).to_be_hidden()
        expect(page.locator("#yaml")).to_contain_text("def mul")
        page.locator("#check").click()
        expect(page.locator("#plan textarea")).to_have_value(re.compile("peak RAM"))
        _snap(page, "1-config")

        # Merge: the progress bars fill; the output verifies
        page.get_by_role("tab", name="Merge").click()
        page.locator("#merge").click()
        seen = set()
        deadline = time.time() + 90
        while time.time() < deadline:
            state = page.locator("#merge-progress .mm-progress").get_attribute("data-state")
            for bar in page.locator("#merge-progress progress").all():
                seen.add((bar.get_attribute("value"), bar.get_attribute("max")))
            if state in ("done", "failed", "cancelled"):
                break
            time.sleep(0.2)
        expect(page.locator("#merge-log textarea")).to_have_value(re.compile("verified"))
        assert state == "done" and any(v == m for v, m in seen), seen
        expect(page.locator("#merge-files")).to_contain_text("model.safetensors")
        _snap(page, "2-merge")

        # Inspect: routing heatmap, tokens coloured by expert, one greedy chat answer
        page.get_by_role("tab", name="Inspect").click()
        page.locator("#route").click()
        expect(page.locator("#route-heatmap img")).to_be_visible()
        expect(page.locator("#route-table textarea")).to_have_value(re.compile("own-expert hit"))
        page.locator("#tokens-go").click()
        expect(page.locator("#tokens-status textarea")).to_have_value(re.compile(r"\d+ tokens, 4 layers"))
        expect(page.locator("#tokens")).to_contain_text("1: code")
        page.locator("#chat-message textarea").fill("Hello")
        page.locator("#chat-send").click()
        expect(page.locator("#chat .bot, #chat [data-testid='bot']").first).to_be_visible()
        _snap(page, "3-inspect")

        # Tune: two steps on a text file in the work folder; loss before -> after
        page.get_by_role("tab", name="Tune").click()
        page.locator("#tune-data textarea").fill("code=data/code.txt")
        for label, value in (("steps", "2"), ("tokens per step", "64"), ("tokens per window", "16")):
            page.get_by_label(label, exact=True).fill(value)
        page.locator("#tune").click()
        expect(page.locator("#tune-log textarea")).to_have_value(re.compile("held-out loss .* -> "), timeout=90_000)
        _snap(page, "4-tune")

        # Publish: the card as it will appear; the token field is a password field
        page.get_by_role("tab", name="Publish").click()
        page.locator("#card-refresh").click()
        expect(page.locator("#card")).to_contain_text("Mixture-of-Experts")
        assert page.locator("#token input").get_attribute("type") == "password"
        _snap(page, "5-publish")
        browser.close()
    assert (root / "out" / "moe" / "tune.json").is_file()
    assert os.listdir(ARTIFACTS)
