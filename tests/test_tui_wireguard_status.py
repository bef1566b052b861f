"""The status bar's WireGuard line: asked from the status worker, at most every few seconds."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

import enforcer.wireguard.status as wg_status
from enforcer.datastore import Datastore
from flowtui.tui.control import PolicyControl


def test_wireguard_line_is_polled_rarely_and_shown_when_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    tunnels = [SimpleNamespace(enabled=True, desired=True)]

    def fake_status(lab_id: str, ds: object) -> list[SimpleNamespace]:
        calls.append(lab_id)
        return tunnels

    monkeypatch.setattr(wg_status, "lab_wireguard_status", fake_status)
    monkeypatch.setattr(wg_status, "summary", lambda statuses: "WireGuard IPv4 2/2 nodes, 2/2 peers up (userspace)")
    control = PolicyControl(datastore=Datastore(tmp_path), lab_id="demo", reconciler=object())
    assert "WireGuard" not in control.describe()
    control.refresh_wireguard()
    control.refresh_wireguard()  # within the interval: not asked again
    assert calls == ["demo"]
    assert "WireGuard IPv4 2/2 nodes" in control.describe()
    tunnels[0] = SimpleNamespace(enabled=False, desired=False)
    control.refresh_wireguard(every=0)
    assert "WireGuard" not in control.describe()  # all families off: no line


def test_no_lab_no_question(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wg_status, "lab_wireguard_status", lambda *a: pytest.fail("asked without a lab"))
    PolicyControl(datastore=Datastore(tmp_path)).refresh_wireguard()
