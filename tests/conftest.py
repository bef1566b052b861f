"""Shared fixtures: the `kernel` marker/fixture and per-test lab ids.

A test that needs the real kernel (root, `ip netns`, `nft`) is marked `@pytest.mark.kernel` or
asks for the `kernel` fixture. Where that is unavailable it SKIPS with the reason, except when
`CI=true`, where it FAILS: CI runs as root, so a kernel test that cannot run there is a bug.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest


@functools.cache
def kernel_unavailable() -> str | None:
    """Why kernel tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "kernel tests need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"kernel tests need `{tool}` on PATH"
    probes = {"ip netns": ["ip", "netns", "list"], "nft": ["nft", "--version"]}
    for what, argv in probes.items():
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`{' '.join(argv)}` failed: {exc}"
        if done.returncode != 0:
            return f"{what} unavailable: `{' '.join(argv)}` exited {done.returncode}: {done.stderr.strip()}"
    return None


def require_kernel() -> None:
    reason = kernel_unavailable()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.hookimpl(tryfirst=True)  # before any fixture of the test is set up
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kernel") is not None:
        require_kernel()


@pytest.fixture
def kernel() -> None:
    """Needs root, `ip netns` and `nft` (skips, or fails when CI=true, otherwise)."""
    require_kernel()


@pytest.fixture
def lab_id() -> Iterator[str]:
    """A fresh lab id (`t` + 5 hex digits); its lab is torn down afterwards, even on failure."""
    from enforcer.lab.state import lab_namespaces

    while True:
        candidate = "t" + secrets.token_hex(3)[:5]
        if not lab_namespaces(candidate):
            break
    yield candidate
    if lab_namespaces(candidate):
        from enforcer.lab import lab_down

        lab_down(candidate)


def require_etcd() -> None:
    from tests.etcd_server import etcd_unavailable

    reason = etcd_unavailable()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def etcd_endpoint() -> Iterator[str]:
    """`etcd://127.0.0.1:PORT` of one real etcd member for the session (skips, or fails under
    CI=true, without etcd). Tests that use it start from an empty store (`etcd_url`)."""
    require_etcd()
    from tests.etcd_server import etcd_server

    with etcd_server() as server:
        yield server.url


@pytest.fixture
def etcd_url(etcd_endpoint: str) -> str:
    """The session's etcd, emptied: every key removed before the test."""
    import requests

    host = etcd_endpoint.split("://", 1)[1]
    done = requests.post(f"http://{host}/v3/kv/deleterange", json={"key": "AA==", "range_end": "AA=="}, timeout=5)
    done.raise_for_status()
    return etcd_endpoint
