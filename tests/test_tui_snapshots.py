"""SVG snapshots of every screen (after the behaviour tests in test_tui_app.py have passed).

A snapshot that differs is written next to the stored one as `<name>.new.svg` and the test
fails; look at both, and if the new one is right, regenerate them all:

    FLOWTUI_UPDATE_SNAPSHOTS=1 python -m pytest tests/test_tui_snapshots.py
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from flowtui.tui.screenshots import SHOTS, capture, recording, replay_app

STORED = Path(__file__).parent / "snapshots" / "tui"


def normalized(svg: str) -> str:
    """Textual names its CSS classes after a hash of the whole picture: compare without them."""
    return re.sub(r"terminal-\d+", "terminal", svg)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    db = recording(tmp_path_factory.mktemp("snap"))
    return asyncio.run(capture(replay_app(db)))


@pytest.mark.parametrize("name", SHOTS)
def test_screen_looks_as_stored(shots: dict[str, str], name: str) -> None:
    svg = shots[name]
    stored = STORED / f"{name}.svg"
    fresh = STORED / f"{name}.new.svg"
    if os.environ.get("FLOWTUI_UPDATE_SNAPSHOTS") or not stored.exists():
        STORED.mkdir(parents=True, exist_ok=True)
        stored.write_text(svg, encoding="utf-8")
        fresh.unlink(missing_ok=True)
        return
    if normalized(stored.read_text(encoding="utf-8")) != normalized(svg):
        fresh.write_text(svg, encoding="utf-8")
        pytest.fail(f"{name} differs from {stored}; the new picture is {fresh} "
                    "(FLOWTUI_UPDATE_SNAPSHOTS=1 to accept it)")
    fresh.unlink(missing_ok=True)
