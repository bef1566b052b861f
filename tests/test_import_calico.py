"""`flowtui import calico`: Calico's flow logs in every encoding and policy-string syntax; export then
import gives the same records; malformed records are skipped, named and counted; imports are
keyed by content."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner, Result

from flowtui.cli.main import cli
from flowtui.interop.calico import write_records
from flowtui.interop.calico_logs import RecordError, parse_lines, parse_policy_string, record
from flowtui.interop.observed import RuleKey
from flowtui.query.run import open_source
from tests.test_queries import build_store


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def export(db: Path, style: str) -> list[str]:
    with open_source(db) as source:
        buf = io.StringIO()
        write_records(source.con, buf, style=style)
    return buf.getvalue().splitlines()


@pytest.mark.parametrize("style", ["whisker", "goldmane"])
def test_export_then_import_gives_the_same_records(tmp_path: Path, style: str) -> None:
    original = export(build_store(tmp_path / "flows.duckdb"), style)
    assert original
    path = tmp_path / "calico.json"
    path.write_text("\n".join(original) + "\n")
    result = invoke("import", "calico", str(path), "--db", str(tmp_path / "back.duckdb"), "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)[0]["records"] == len(original)
    again = export(tmp_path / "back.duckdb", style)

    def key(line: str) -> str:
        return json.dumps(json.loads(line), sort_keys=True)

    assert sorted(map(key, again)) == sorted(map(key, original))


@pytest.mark.parametrize(("text", "want"), [
    # before 3.32: tier-prefixed names, knp.default., staged:, profiles
    ("0|security|security.tenant-a|pass|0",
     RuleKey("GlobalNetworkPolicy", None, "security.tenant-a", "security", 0, "ingress", 0, "Pass", None)),
    ("1|default|prod/default.allow-web|allow|2",
     RuleKey("NetworkPolicy", "prod", "allow-web", "default", 0, "ingress", 2, "Allow", None)),
    ("0|default|prod/knp.default.deny-all|deny|0",
     RuleKey("KubernetesNetworkPolicy", "prod", "deny-all", "default", 0, "ingress", 0, "Deny", None)),
    ("0|default|prod/staged:default.lockdown|deny|1",
     RuleKey("StagedNetworkPolicy", "prod", "lockdown", "default", 0, "ingress", 1, "Deny", None)),
    ("1|app|hipstershop/app.checkout|deny|-1",
     RuleKey("EndOfTier", "hipstershop", "app.checkout", "app", 0, "ingress", -1, "Deny", "NetworkPolicy")),
    ("0|__PROFILE__|__PROFILE__.kns.prod|allow|0",
     RuleKey("Profile", None, "kns.prod", "__PROFILE__", 0, "ingress", 0, "Allow", None)),
    # 3.32: kind-qualified
    ("0|security|gnp:block-bad|deny|3",
     RuleKey("GlobalNetworkPolicy", None, "block-bad", "security", 0, "ingress", 3, "Deny", None)),
    ("2|default|knp:prod/web|deny|-1",
     RuleKey("EndOfTier", "prod", "web", "default", 0, "ingress", -1, "Deny", "KubernetesNetworkPolicy")),
    ("0|default|sknp:prod/new|allow|0",
     RuleKey("StagedKubernetesNetworkPolicy", "prod", "new", "default", 0, "ingress", 0, "Allow", None)),
    ("0|__PROFILE__|pro:kns.prod|allow|0",
     RuleKey("Profile", None, "kns.prod", "__PROFILE__", 0, "ingress", 0, "Allow", None)),
    ("0|__PROFILE__|pro:__NO_MATCH__|deny|-1",
     RuleKey("NoProfileMatch", None, "__NO_MATCH__", None, 0, "ingress", -1, "Deny", None)),
    ("0|adminnetworkpolicy|kcnp:guard|pass|0",
     RuleKey("ClusterNetworkPolicy", None, "guard", "adminnetworkpolicy", 0, "ingress", 0, "Pass", None)),
])
def test_policy_strings_of_every_version(text: str, want: RuleKey) -> None:
    assert parse_policy_string(text, "ingress") == want


def flows_log(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "start_time": 1659621542, "end_time": 1659621842, "source_ip": "10.0.0.1", "source_name": "-",
        "source_name_aggr": "web-*", "source_namespace": "prod", "source_type": "wep",
        "source_labels": {"labels": ["app=web"]}, "dest_ip": "10.0.0.2", "dest_name": "db-0",
        "dest_namespace": "prod", "dest_type": "wep", "dest_labels": None, "dest_port": 5432, "proto": "tcp",
        "action": "allow", "reporter": "src", "host": "node-a",
        "policies": {"enforced_policies": ["0|default|np:prod/allow-db|allow|0"],
                     "pending_policies": ["0|default|snp:prod/lockdown|deny|0"]},
        "bytes_in": 900, "bytes_out": 100, "packets_in": 9, "packets_out": 1, "num_flows": 2,
        "num_flows_started": 2, "num_flows_completed": 1,
    }
    doc.update(overrides)
    return doc


def test_a_flows_log_record() -> None:
    o = record(flows_log())
    assert (o.node, o.action, o.proto, o.dport, o.rule.direction) == ("node-a", "Allow", 6, 5432, "egress")
    assert o.src is not None and (o.src.name, o.src.labels) == ("web-*", ("app=web",))  # aggregated name
    # the source reported it: out is the original direction
    assert (o.packets, o.bytes, o.reply_packets, o.reply_bytes) == (1, 100, 9, 900)
    assert (o.events, o.started, o.completed) == (2, 2, 1)
    assert o.rule.name == "allow-db" and [p.kind for p in o.pending] == ["StagedNetworkPolicy"]
    older = record(flows_log(policies={"all_policies": ["1|default|prod/staged:default.lockdown|deny|0",
                                                       "0|default|prod/default.allow-db|allow|0"]}))
    assert older.rule.name == "allow-db" and [p.name for p in older.pending] == ["lockdown"]


def test_staged_verdicts_round_trip_as_pending(tmp_path: Path) -> None:
    path = tmp_path / "flows.log"
    path.write_text(json.dumps(flows_log()) + "\n")
    db = tmp_path / "c.duckdb"
    assert invoke("import", "calico", str(path), "--db", str(db)).exit_code == 0
    [rec] = [json.loads(line) for line in export(db, "whisker")]
    assert [(h["kind"], h["name"], h["action"]) for h in rec["policies"]["enforced"]] == [
        ("CalicoNetworkPolicy", "allow-db", "Allow")]
    assert [(h["kind"], h["name"], h["action"]) for h in rec["policies"]["pending"]] == [
        ("StagedNetworkPolicy", "lockdown", "Deny")]
    assert (rec["packets_out"], rec["bytes_out"], rec["reporter"]) == (1, 100, "Src")


def test_malformed_records_are_skipped_named_and_counted(tmp_path: Path) -> None:
    good = json.dumps(flows_log())
    lines = [good, "{not json", json.dumps(flows_log(action="maybe")), "[1]", json.dumps(flows_log(reporter=None)),
             json.dumps(flows_log(policies={"all_policies": ["0|x"]})), json.dumps(flows_log(start_time="noon")),
             json.dumps(flows_log(packets_in="many")), good.replace("10.0.0.1", "10.0.0.9")]
    parsed = parse_lines(lines, "f.log")
    assert len(parsed.observations) == 2
    assert [(p.line, p.reason) for p in parsed.problems] == [
        (2, "not_json"), (3, "bad_record"), (4, "not_an_object"), (5, "bad_record"), (6, "bad_record"),
        (7, "bad_record"), (8, "bad_record")]
    report = parsed.problem_lines("f.log")
    assert report[0].startswith("f.log:2: not_json:") and "f.log:3: bad_record: action: 'maybe'" in report[1]
    assert report[-1] == "f.log: 2 more malformed records: bad_record 2"
    with pytest.raises(RecordError, match="reporter"):
        record(flows_log(reporter="middle"))

    path = tmp_path / "mixed.log"
    path.write_text("\n".join(lines) + "\n")
    result = invoke("import", "calico", str(path), "--db", str(tmp_path / "c.duckdb"))
    assert result.exit_code == 0 and "malformed: 7" in result.stderr
    assert result.stderr.count("warning:") == 6  # five in full, then the count per reason
    strict = invoke("import", "calico", str(path), "--db", str(tmp_path / "s.duckdb"), "--strict")
    assert strict.exit_code == 1


def test_one_bad_file_does_not_stop_the_others(tmp_path: Path) -> None:
    good = tmp_path / "good.log"
    good.write_text(json.dumps(flows_log()) + "\n")
    garbage = tmp_path / "garbage.log"
    garbage.write_text("{oops\n{again\n")
    hubble = tmp_path / "hubble.json"
    hubble.write_text(json.dumps({"flow": {"verdict": "FORWARDED"}}) + "\n")
    result = invoke("import", "calico", str(garbage), str(tmp_path / "missing.log"), str(hubble), str(good),
                    "--db", str(tmp_path / "c.duckdb"), "-o", "json")
    assert result.exit_code == 2  # a file could not be read
    docs = json.loads(result.stdout)
    assert [d.get("records") for d in docs] == [0, None, None, 1]  # read (all malformed), missing, Hubble, good
    assert "use `flowtui import hubble`" in result.stderr and "missing.log" in result.stderr


def test_the_same_content_is_imported_once(tmp_path: Path) -> None:
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    first.write_text(json.dumps(flows_log()) + "\n")
    second.write_text(first.read_text())  # another name, the same bytes
    db = str(tmp_path / "c.duckdb")
    assert invoke("import", "calico", str(first), "--db", db).exit_code == 0
    result = invoke("import", "calico", str(second), "--db", db, "-o", "json")
    assert result.exit_code == 0 and json.loads(result.stdout)[0]["duplicate_of"] == 1
    con = duckdb.connect(db, read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (1,)
        assert con.execute("SELECT sum(packets) FROM flows").fetchone() == (1,)  # once, not twice
    finally:
        con.close()


def test_an_empty_file_says_so(tmp_path: Path) -> None:
    empty = tmp_path / "empty.log"
    empty.write_text("")
    result = invoke("import", "calico", str(empty), "--db", str(tmp_path / "c.duckdb"))
    assert result.exit_code == 1 and "no flows: the file is empty" in result.stderr


def test_commands_that_read_no_flow_say_so(tmp_path: Path) -> None:
    from flowtui.store.duckdb_store import DuckStore

    empty = tmp_path / "empty.duckdb"
    DuckStore(empty, snapshot_interval=None).close(snapshot=False)
    query = invoke("query", "top_denied", "--db", str(empty))
    assert query.exit_code == 1 and "holds no flows" in query.stderr
    whatif = invoke("whatif", "--db", str(empty), "--current", "/dev/null")
    assert whatif.exit_code == 1 and "no flows in" in whatif.stderr
    log = tmp_path / "flows.log"
    log.write_text(json.dumps(flows_log()) + "\n")
    wrong = invoke("query", "top_denied", "--db", str(log))
    assert wrong.exit_code == 1 and "flowtui import calico" in wrong.stderr


def test_whisker_backend_responses(tmp_path: Path) -> None:
    """whisker-backend's list response (`{"total": ..., "items": [...]}`, here pretty-printed) and its
    event stream (`data: {...}` lines) are read like the records one per line."""
    lines = export(build_store(tmp_path / "flows.duckdb"), "whisker")
    items = [json.loads(line) for line in lines]
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps({"total": {"totalPages": 1}, "items": items}, indent=2))
    stream = tmp_path / "stream.txt"
    stream.write_text("".join(f"data: {line}\n\n" for line in lines))
    for path in (listed, stream):
        result = invoke("import", "calico", str(path), "--db", str(tmp_path / f"{path.stem}.duckdb"), "-o", "json")
        assert result.exit_code == 0, result.stderr
        [doc] = json.loads(result.stdout)
        assert (doc["records"], doc["malformed"]) == (len(lines), 0)
    whatif = invoke("whatif", "--flows", str(listed), "--current", "/dev/null", "-o", "json")
    assert whatif.exit_code == 0, whatif.stderr
    assert json.loads(whatif.stdout)["summary"]["rows"] == len(lines)
