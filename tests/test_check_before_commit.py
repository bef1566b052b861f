"""Check before commit: what the kernel or the lab would refuse is refused by `check`, `apply
--dry-run` and `apply` (FILE:LINE, exit 2, nothing stored), and every valid Kubernetes name
compiles (chain names past the kernel's 255 bytes are cut and hashed)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from enforcer.datastore import Datastore
from enforcer.lab import netns_name
from enforcer.loader import LoadError, load_text
from enforcer.nft.compiler import DECISION_BUDGET_ENV, NFT_NAME_MAX, CompileOptions, bounded_name, compile_node
from enforcer.resolve import ClusterState
from enforcer.ruleids import IdAllocator
from flowtui.cli.main import cli
from flowtui.cli.state import Runtime, default_backend, default_lab_nodes
from tests.test_cli_state import World

NS = "n" * 63  # the longest namespace
KNP = ".".join(["k" * 63] * 3) + "." + "k" * 61  # 253: the longest Kubernetes name
CNP = "c" * 63 + "." + "c" * 63  # the longest Calico NetworkPolicy name (label.label)
SA = "s" * 253
HEP = "h" * 253

LONG_NAMES = f"""\
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {SA}, namespace: {NS}}}
---
apiVersion: v1
kind: Node
metadata: {{name: node-a, labels: {{role: worker}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: {NS}, labels: {{app: web}}}}
spec: {{nodeName: node-a, serviceAccountName: {SA}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {NS}, labels: {{app: client}}}}
spec: {{nodeName: node-a}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: {KNP}, namespace: {NS}}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: client}}}}}}]}}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {{name: {CNP}, namespace: {NS}}}
spec:
  selector: app == 'web'
  ingress: [{{action: Allow, protocol: TCP}}]
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {{name: {HEP}, labels: {{role: worker}}}}
spec: {{node: node-a, interfaceName: eth0}}
"""


# The probe: a 63-character namespace and a 202-character policy name (a 273-byte chain
# name before). Names the datastore can store as file names today (longer ones are its own issue).
KNP_202 = ".".join(["k" * 63] * 3) + "." + "k" * 10
KERNEL_NAMES = LONG_NAMES.replace(KNP, KNP_202).replace(SA, "s" * 63).replace(HEP, "hep-a")


def long_names(tmp_path: Path, text: str = LONG_NAMES) -> Path:
    path = tmp_path / "long.yaml"
    path.write_text(text)
    return path


def test_bounded_name_keeps_short_names_and_cuts_long_ones_apart() -> None:
    assert bounded_name("pi-np-prod.web") == "pi-np-prod.web"
    assert bounded_name("x" * NFT_NAME_MAX) == "x" * NFT_NAME_MAX
    a, b = bounded_name("pi-" + "a" * 300), bounded_name("pi-" + "a" * 299 + "b")
    assert len(a.encode()) == len(b.encode()) == NFT_NAME_MAX
    assert a != b and a.startswith("pi-aaaa")


def test_every_chain_and_set_name_of_the_longest_names_fits_the_kernel() -> None:
    res = load_text(LONG_NAMES, "long.yaml")
    # The rule walk: the layout that loads policy chains (decision maps leave them unreachable).
    table = compile_node(ClusterState(res), "node-a", CompileOptions(decision_budget=0), ids=IdAllocator()).table
    names = [*table.chains, *table.sets]
    assert max(len(n.encode()) for n in names) <= NFT_NAME_MAX
    long = [n for n in table.chains if len(n.encode()) == NFT_NAME_MAX]
    # the KNP's policy chain and end-of-tier drop; the host endpoint's chains of every stage
    assert {n.split("-")[0] for n in long} == {"pi", "ei", "fh", "th", "fhfw", "thfw", "raw", "mangle"}
    assert any(n.startswith(f"pi-knp-{NS}.") for n in long) and any(n.startswith(f"ei-knp-{NS}.") for n in long)
    assert f"pi-np-{NS}.{CNP}" in table.chains  # 197 bytes: as it always was


def check(*paths: Path) -> Result:
    return CliRunner().invoke(cli, ["check", *[a for p in paths for a in ("-f", str(p))]], prog_name="flowtui")


def test_check_accepts_the_longest_valid_names(tmp_path: Path) -> None:
    result = check(long_names(tmp_path))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("doc", "line", "fragment"),
    [
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: default}\nspec:\n  nodeName: \"x-\"\n",
         5, 'spec.nodeName: nodeName "x-" is not a DNS-1123 subdomain'),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: default}\nspec:\n  nodeName: " + "a" * 240 + "\n",
         5, "spec.nodeName: too long for the lab: 240 bytes"),
        (f"apiVersion: v1\nkind: Pod\nmetadata:\n  namespace: {NS}\n  name: {KNP}\n",
         5, "metadata.name: too long for the lab: 317 bytes"),
        ("apiVersion: v1\nkind: Node\nmetadata:\n  name: " + "a" * 240 + "\n",
         4, "metadata.name: too long for the lab: 240 bytes give the network namespace ft-<lab>-node-<name> 261"),
        ("apiVersion: lab.flowtui.dev/v1\nkind: ExternalHost\nmetadata:\n  name: " + "e" * 250 +
         "\nspec: {addresses: [192.0.2.1]}\n", 4, "at most 235 for the name"),
    ],
)
def test_check_refuses_what_the_lab_cannot_build_at_its_line(tmp_path: Path, doc: str, line: int,
                                                             fragment: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(doc)
    result = check(path)
    assert result.exit_code == 2, result.output
    assert any(x.startswith(f"{path}:{line}: ") and fragment in x for x in result.stderr.splitlines()), result.stderr


def test_names_the_check_accepts_fit_in_a_lab_with_the_longest_id() -> None:
    """The loader's limits are the lab's: the longest accepted names plan into valid namespaces."""
    pod = "p" * (235 - 64)
    node = "m" * 234
    doc = f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {NS}}}\nspec: {{nodeName: {node}}}\n"
    res = load_text(doc, "max.yaml")
    assert len(netns_name("x" * 12, f"{NS}/{pod}")) == 255
    assert len(netns_name("x" * 12, f"node:{node}")) == 255
    with pytest.raises(LoadError):
        load_text(f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}x, namespace: {NS}}}\n", "over.yaml")
    assert res.pods[0].node == node


DUPLICATE_ADDRESS = """\
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: default}
spec: {nodeName: node-a}
status: {podIP: 10.244.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: default}
spec: {nodeName: node-a}
status: {podIP: 10.244.1.10}
"""


def test_dry_run_plans_the_lab_and_refuses_what_it_cannot_build(tmp_path: Path) -> None:
    world = World(tmp_path)
    bad = tmp_path / "dup.yaml"
    bad.write_text(DUPLICATE_ADDRESS)
    result = world.run("apply", "--dry-run", "-f", str(bad))
    assert result.exit_code == 2, result.output
    assert "cannot be planned" in result.stderr and f"({bad}:1)" in result.stderr and f"({bad}:7)" in result.stderr


def test_apply_plans_the_lab_before_it_stores(tmp_path: Path) -> None:
    world = World(tmp_path)
    good = tmp_path / "good.yaml"
    good.write_text(DUPLICATE_ADDRESS.split("---\n")[0])
    assert world.run("apply", "-f", str(good)).exit_code == 0
    revision = world.ds.revision
    bad = tmp_path / "dup.yaml"
    bad.write_text(DUPLICATE_ADDRESS.split("---\n")[1])  # clashes with what is stored
    result = world.run("apply", "-f", str(bad))
    assert result.exit_code == 2, result.output
    assert "address 10.244.1.10 is used by both pod default/a" in result.stderr
    assert "nothing was changed" in result.stderr
    assert world.ds.revision == revision
    assert [o.key.name for o in world.ds.objects("pod")] == ["a"]
    assert world.run("apply", "-f", str(good)).exit_code == 0  # later applies are not poisoned


def test_apply_refuses_an_invalid_node_name_and_stores_nothing(tmp_path: Path) -> None:
    world = World(tmp_path)
    bad = tmp_path / "x.yaml"
    bad.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: default}\nspec:\n  nodeName: \"x-\"\n")
    result = world.run("apply", "-f", str(bad))
    assert result.exit_code == 2
    assert f"{bad}:5: Pod/default/web: spec.nodeName" in result.stderr
    assert not Datastore(world.state).objects()


def run_real(*args: str) -> Result:
    def compiler() -> tuple[Any, Any]:
        from flowtui.cli.state import default_compiler

        return default_compiler()

    rt = Runtime(compiler=compiler, backend=default_backend, lab_nodes=default_lab_nodes, is_root=lambda: True)
    return CliRunner().invoke(cli, list(args), obj=rt, catch_exceptions=False)


@pytest.mark.kernel
def test_longest_names_apply_and_toggle_in_the_kernel(lab_id: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DECISION_BUDGET_ENV, "0")  # the rule walk: the layout that loads policy chains
    state = str(tmp_path / "state")
    assert len(KNP_202) == 202
    files = str(long_names(tmp_path, KERNEL_NAMES))
    dry = run_real("apply", "--dry-run", "-f", files, "--lab", lab_id, "--state-dir", state)
    assert dry.exit_code == 0, dry.output
    up = run_real("lab", "up", "-f", files, "--lab", lab_id, "--state-dir", state)
    assert up.exit_code == 0, up.output
    assert "node-a: applied" in up.stdout
    live = subprocess.run(["ip", "netns", "exec", netns_name(lab_id, "node:node-a"), "nft", "list", "table",
                           "inet", "flowtui"], capture_output=True, text=True, check=True).stdout
    chains = [line.split()[1] for line in live.splitlines() if line.strip().startswith("chain ")]
    assert sorted(c.split("-")[0] for c in chains if len(c.encode()) == NFT_NAME_MAX) == ["ei", "pi"], chains
    toggle = run_real("policy", "disable", KNP_202, "-n", NS, "--lab", lab_id, "--state-dir", state)
    assert toggle.exit_code == 0, toggle.output
    assert "1 of 1 nodes changed" in toggle.stdout
    again = run_real("apply", "-f", files, "--lab", lab_id, "--state-dir", state)
    assert again.exit_code == 0, again.output


def test_the_dashboard_apply_plans_the_lab_before_it_stores(tmp_path: Path) -> None:
    from enforcer.nft.backend import FakeBackend
    from enforcer.nft.compiler import CompileOptions
    from enforcer.reconcile import Reconciler
    from flowtui.tui.control import ChangeRefused, PolicyControl

    ds = Datastore(tmp_path / "state")
    first = tmp_path / "a.yaml"
    first.write_text(DUPLICATE_ADDRESS.split("---\n")[0])
    ds.apply_documents([str(first)])
    rec = Reconciler(ds, FakeBackend(), compile_node, CompileOptions(), lambda: ["node-a"], lab_id="lab")
    control = PolicyControl(datastore=ds, lab_id="lab", reconciler=rec)
    with pytest.raises(ChangeRefused, match="address 10.244.1.10 is used by both pod default/a"):
        control.apply_text(DUPLICATE_ADDRESS.split("---\n")[1])
    assert [o.key.name for o in ds.objects("pod")] == ["a"] and ds.revision == 1
