"""The files for real hosts (`contrib/`): the etcd TLS script makes certificates a real etcd
accepts and flowtui connects with; the systemd unit is valid and its settings are the agent's."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from enforcer.datastore import TLSFiles, open_datastore
from enforcer.datastore.etcd import EtcdUnavailable
from flowtui.cli.agent import agent_cmd
from tests.conftest import require_etcd
from tests.test_datastore import GNP

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "contrib" / "etcd-tls.sh"
UNIT = ROOT / "contrib" / "systemd" / "flowtui-agent.service"
ENV_FILE = ROOT / "contrib" / "systemd" / "agent.env"
FLOWTUI = [sys.executable, "-c", "from flowtui.cli import main; main()"]


def make_certs(out: Path, *members: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("openssl") is None:
        pytest.skip("the TLS script needs openssl")
    return subprocess.run(["bash", str(SCRIPT), str(out), *members], capture_output=True, text=True, timeout=120)


def sans(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n) for n in names.get_values_for_type(x509.IPAddress)} | set(names.get_values_for_type(x509.DNSName))


def test_tls_script_certificates_work_with_a_real_etcd_and_flowtui(tmp_path: Path) -> None:
    require_etcd()
    from tests.etcd_server import TLSMaterial, etcd_server

    pki = tmp_path / "pki"
    done = make_certs(pki, "etcd1=127.0.0.1,localhost", "etcd2=192.0.2.2", "etcd3=192.0.2.3,etcd3.example.internal")
    assert done.returncode == 0, done.stderr
    assert sans(pki / "etcd1.crt") == {"127.0.0.1", "localhost"}
    assert sans(pki / "etcd3.crt") == {"192.0.2.3", "etcd3.example.internal"}
    assert all(oct((pki / f"{n}.key").stat().st_mode & 0o777) == "0o600" for n in ("ca", "etcd1", "client"))
    other = tmp_path / "other"
    assert make_certs(other, "x=127.0.0.1").returncode == 0  # an unrelated CA: the "wrong CA" case
    material = TLSMaterial(ca=str(pki / "ca.crt"), server_cert=str(pki / "etcd1.crt"),
                           server_key=str(pki / "etcd1.key"), client_cert=str(pki / "client.crt"),
                           client_key=str(pki / "client.key"), other_ca=str(other / "ca.crt"))
    with etcd_server(tls=material) as server:  # etcd itself takes the member certificate
        assert server.url.startswith("etcds://")
        good = TLSFiles(material.ca, material.client_cert, material.client_key)
        ds = open_datastore(server.url, tmp_path / "local", good)
        policy = tmp_path / "gnp.yaml"
        policy.write_text(GNP.format(name="over-tls", order=1))
        ds.apply_documents([str(policy)])
        # the CLI, as on a host: the agent's environment variables name the files
        env = {**os.environ, "PYTHONPATH": str(ROOT), "FLOWTUI_HOME": str(tmp_path / "cli"),
               "FLOWTUI_DATASTORE": server.url, "FLOWTUI_ETCD_CA": material.ca,
               "FLOWTUI_ETCD_CERT": material.client_cert, "FLOWTUI_ETCD_KEY": material.client_key}
        got = subprocess.run([*FLOWTUI, "get", "gnp"], capture_output=True, text=True, env=env, timeout=60)
        assert got.returncode == 0 and "over-tls" in got.stdout, got.stderr
        start = time.monotonic()
        with pytest.raises(EtcdUnavailable, match="not signed by the CA given"):
            _ = open_datastore(server.url, tmp_path / "x", TLSFiles(material.other_ca, material.client_cert,
                                                                     material.client_key)).revision
        wrong = TLSFiles(material.ca, str(other / "client.crt"), str(other / "client.key"))  # another CA's client
        with pytest.raises(EtcdUnavailable, match=server.endpoint):
            _ = open_datastore(server.url, tmp_path / "y", wrong).revision
        assert time.monotonic() - start < 10
        if shutil.which("etcdctl"):  # the README's check: etcdctl with the same client certificate
            listed = subprocess.run(["etcdctl", "--endpoints", f"https://{server.endpoint}", "--cacert", material.ca,
                                     "--cert", material.client_cert, "--key", material.client_key, "get", "--prefix",
                                     "--keys-only", "/calico/resources/v3/projectcalico.org/globalnetworkpolicies/"],
                                    capture_output=True, text=True, timeout=30, env={**os.environ, "ETCDCTL_API": "3"})
            assert listed.returncode == 0, listed.stderr
            assert "globalnetworkpolicies/over-tls" in listed.stdout


def test_tls_script_reuses_its_ca_and_never_overwrites(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    assert make_certs(pki, "etcd1=127.0.0.1").returncode == 0
    ca, member = (pki / "ca.crt").read_bytes(), (pki / "etcd1.crt").read_bytes()
    again = make_certs(pki, "etcd1=192.0.2.9")
    assert again.returncode == 1 and "etcd1.crt exists: not overwritten" in again.stderr
    assert (pki / "etcd1.crt").read_bytes() == member
    added = make_certs(pki, "etcd4=192.0.2.4")  # a member added later: same CA, client kept
    assert added.returncode == 0, added.stderr
    assert (pki / "ca.crt").read_bytes() == ca and "keeping" in added.stdout
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(pki / "ca.crt"), str(pki / "etcd4.crt")],
                            capture_output=True, text=True, timeout=30)
    assert verify.returncode == 0, verify.stderr
    ipaddress.ip_address(next(iter(sans(pki / "etcd4.crt"))))
    for bad in ("etcd5", "=1.2.3.4", "ca=1.2.3.4", "../x=1.2.3.4"):
        refused = make_certs(pki, bad)
        assert refused.returncode == 2 and "bad member" in refused.stderr, bad
    assert make_certs(tmp_path / "none").returncode == 2  # no member at all: usage


def test_the_unit_runs_the_host_agent_with_only_net_admin(tmp_path: Path) -> None:
    text = UNIT.read_text()
    settings = [line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")]
    values: dict[str, list[str]] = {}
    for key, value in settings:
        values.setdefault(key, []).append(value)
    assert values["ExecStart"] == ["/usr/local/bin/flowtui agent --host"]
    assert values["Restart"] == ["always"] and values["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
    assert values["EnvironmentFile"] == ["/etc/flowtui/agent.env"] and values["NoNewPrivileges"] == ["yes"]
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: the unit's syntax is not checked here")
    env = tmp_path / "agent.env"
    env.write_text(ENV_FILE.read_text())
    local = tmp_path / "flowtui-agent.service"  # the same unit, pointing at files that exist here
    local.write_text(text.replace("/usr/local/bin/flowtui", sys.executable).replace("/etc/flowtui/agent.env",
                                                                                     str(env)))
    done = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_the_env_file_sets_only_what_the_agent_reads() -> None:
    read = {param.envvar for param in agent_cmd.params if isinstance(param.envvar, str)}
    assert {"FLOWTUI_NODE", "FLOWTUI_METRICS", "FLOWTUI_DATASTORE", "FLOWTUI_ETCD_CA", "FLOWTUI_ETCD_CERT",
            "FLOWTUI_ETCD_KEY", "FLOWTUI_HOME"} <= read
    keys = {line.lstrip("#").split("=", 1)[0] for line in ENV_FILE.read_text().splitlines()
            if "=" in line and line.lstrip("#")[:1].isupper()}
    unit_keys = {line.split("=", 2)[1] for line in UNIT.read_text().splitlines() if line.startswith("Environment=")}
    assert keys and keys <= read and unit_keys <= read, (keys - read, unit_keys - read)
