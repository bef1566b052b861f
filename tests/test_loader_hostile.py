"""Hostile input: every malformed scalar, byte or structure is a FILE:LINE problem (exit 2), never a
traceback; alias bombs are refused before they are built, in bounded time and memory."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from enforcer.loader import LoadError, load_text
from enforcer.loader.documents import parse_yaml
from flowtui.cli.main import cli

POLICY = """\
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: p}
spec:
  selector: all()
  order: ORDER
"""


def check(path: Path, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(cli, ["check", "-f", str(path)], input=stdin, prog_name="flowtui")


def assert_refused_at(result: Result, where: str, fragment: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith(where)]
    assert any(fragment in line for line in lines), result.stderr


@pytest.mark.parametrize(
    ("order", "fragment"),
    [
        ("1" * 5000, "integer of 5,000 digits (at most 4,300)"),
        ("-0x" + "f" * 5000, "integer of more than 4,300 digits"),
        ("0x" + "f" * 1000, "out of range (too large for a number)"),
        ("!!float x", 'invalid !!float value "x"'),
        ("!!int abc", 'invalid !!int value "abc"'),
        ("!!timestamp 2001-13-45", 'invalid !!timestamp value "2001-13-45": month must be in 1..12'),
        ("!!timestamp yesterday", 'invalid !!timestamp value "yesterday"'),
        ("!!bool v1", 'invalid !!bool value "v1"'),
        ("!!binary '@@@'", "must be a number, not the bytes"),
        ("!!python/object:os.system x", "could not determine a constructor"),
    ],
)
def test_malformed_yaml_scalars_are_problems_at_their_line(tmp_path: Path, order: str, fragment: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(POLICY.replace("ORDER", order))
    assert_refused_at(check(path), f"{path}:6: ", fragment)


def test_a_failed_scalar_reused_by_an_alias_is_reported_each_time() -> None:
    _, errors = parse_yaml("a: &x !!int abc\nb: *x\n")
    assert [(e.line, e.message.split(":")[0]) for e in errors] == [(1, 'invalid !!int value "abc"')] * 2


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ('{"apiVersion": "v1",\n "kind": "Namespace",\n "metadata": {"name": "n", "x": ' + "9" * 4301 + "}}",
         3, "integer of 4,301 digits (at most 4,300)"),
        ('{"apiVersion": "v1",\n "kind": "Namespace",\n "metadata": {"name": "n\\ud800"}}', 3, "lone surrogate"),
        ("[" * 50_000 + "]" * 50_000, 1, "nested too deeply"),
    ],
)
def test_malformed_json_is_a_problem_at_its_line(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = tmp_path / "n.json"
    path.write_text(text)
    assert_refused_at(check(path), f"{path}:{line}: ", fragment)


@pytest.mark.parametrize(
    ("data", "line", "fragment"),
    [
        (POLICY.replace("ORDER", "1").encode().replace(b"name: p", b"name: p\xff"), 3, "not UTF-8 text"),
        (POLICY.replace("ORDER", "1").encode().replace(b"name: p", b"name: p\x00"), 3,
         "character #x0000 is not allowed in YAML"),
        (b"a: " + b"[" * 50_000 + b"]" * 50_000, 1, "nesting depth"),
        (b"a:\n" + b"".join(b" " * i + b"- \n" for i in range(0, 3000, 2)), 1001, "exceeded maximum nesting depth"),
    ],
)
def test_bad_bytes_and_depth_are_problems(tmp_path: Path, data: bytes, line: int, fragment: str) -> None:
    path = tmp_path / "b.yaml"
    path.write_bytes(data)
    assert_refused_at(check(path), f"{path}:{line}: ", fragment)


def test_invalid_utf8_on_stdin_is_a_problem_not_a_traceback() -> None:
    result = CliRunner().invoke(cli, ["check", "-f", "-"], input=b"a: 1\nb: \xc3\x28\n", prog_name="flowtui")
    assert_refused_at(result, "<stdin>:2: ", "not UTF-8 text (byte 8: 0xc3)")


def _bomb(levels: int, width: int = 10) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [5, 9, 30])  # 10^5 .. 10^30 nodes once expanded
def test_alias_bomb_is_refused_fast_in_bounded_memory(levels: int) -> None:
    text = _bomb(levels)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(LoadError) as info:
            load_text(text, "bomb.yaml")
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "refused as an alias bomb" in str(info.value)
    assert str(info.value).startswith("bomb.yaml:1: ")
    # Before: 5-11 s and ~300 MB per bomb. Now counted over the composed graph, never built.
    assert elapsed < 0.5, elapsed
    assert peak < 5_000_000, peak


def test_anchors_used_as_intended_are_expanded() -> None:
    """Anchors and merge keys shared by hundreds of policies stay far under the alias budget."""
    text = (
        "apiVersion: v1\nkind: List\nitems:\n"
        "- &first {apiVersion: projectcalico.org/v3, kind: GlobalNetworkPolicy, metadata: {name: p0},\n"
        "   spec: {selector: all(), ingress: &rules [{action: Allow, protocol: TCP, destination: {ports: [80]}}]}}\n"
    )
    text += "".join(f"- {{<<: *first, metadata: {{name: p{i}}}, spec: {{selector: all(), ingress: *rules}}}}\n"
                    for i in range(1, 300))
    loaded = load_text(text, "list.yaml")
    assert sorted(p.name for p in loaded.policies) == sorted(f"p{i}" for i in range(300))
    assert all(len(p.ingress) == 1 for p in loaded.policies)


@pytest.mark.parametrize(
    ("rule", "fragment"),
    [
        ("{action: Allow, protocol: '" + "1" * 5000 + "'}", "invalid protocol"),
        ("{action: Allow, source: {nets: ['10.0.0.0/" + "9" * 5000 + "']}}", "is not a valid CIDR"),
        ("{action: Allow, protocol: TCP, destination: {ports: ['" + "8" * 5000 + "']}}", "port"),
    ],
)
def test_huge_numbers_inside_strings_are_problems(tmp_path: Path, rule: str, fragment: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(POLICY.replace("ORDER", "1") + f"  ingress:\n  - {rule}\n")
    assert_refused_at(check(path), f"{path}:8: ", fragment)
