"""The CLI on what users bring: -n on apply and delete, skipped kinds, manifest repositories,
eval's port requirement and Service refs, get -A."""

from __future__ import annotations

from pathlib import Path

from tests.test_cli_policy import run
from tests.test_cli_state import World, world  # noqa: F401  (the fixture)

REPO = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: db, image: postgres, ports: [{containerPort: 5432}]}]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: report}
spec:
  schedule: "0 * * * *"
  jobTemplate:
    spec:
      template:
        metadata: {labels: {app: report}}
        spec: {containers: [{name: r, image: busybox}], restartPolicy: Never}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  clusterIP: 10.96.0.80
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {a: b}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: more}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web}
spec: {rules: []}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: report}}}]
    ports: [{port: http}]
"""


def repo(tmp_path: Path) -> str:
    path = tmp_path / "repo"
    path.mkdir()
    (path / "all.yaml").write_text(REPO)
    return str(path)


def test_check_a_manifest_repository_with_one_line_for_the_skipped_kinds(tmp_path: Path) -> None:
    result = run("check", "-f", repo(tmp_path), "-n", "shop")
    assert result.exit_code == 0, result.output
    assert result.stdout == "ok: 1 policies, 1 namespaces, 3 workloads, 1 services\n"
    assert result.stderr == "skipped 2 ConfigMap, 1 Ingress: kinds flowtui does not read\n"


def test_eval_a_service_port_goes_to_its_named_target_port(tmp_path: Path) -> None:
    path = repo(tmp_path)
    allowed = run("eval", "-f", path, "-n", "shop", "--from", "cronjob/shop/report", "--to", "svc/shop/web",
                  "--proto", "tcp", "--port", "80", "-o", "json")
    assert allowed.exit_code == 0, allowed.output
    assert '"verdict": "allow"' in allowed.stdout
    assert '"dst_port": 8080' in allowed.stdout  # kube-proxy's targetPort: the container port named http
    assert '"to": "pod shop/deployment.web"' in allowed.stdout
    denied = run("eval", "-f", path, "-n", "shop", "--from", "sts/shop/db", "--to", "deploy/shop/web",
                 "--proto", "tcp", "--port", "8080", "-o", "json")
    assert '"verdict": "deny"' in denied.stdout
    short = run("eval", "-f", path, "-n", "shop", "--from", "cronjob/report", "--to", "svc/web",
                "--proto", "tcp", "--port", "80", "-o", "json")
    assert short.stdout == allowed.stdout  # -n: names as kubectl reads them
    by_ip = run("eval", "-f", path, "-n", "shop", "--from", "cronjob/report", "--to", "10.96.0.80",
                "--proto", "tcp", "--port", "80", "-o", "json")
    assert by_ip.stdout == allowed.stdout  # the cluster IP: kube-proxy's DNAT
    no_port = run("eval", "-f", path, "-n", "shop", "--from", "sts/shop/db", "--to", "svc/shop/web",
                  "--proto", "tcp", "--port", "443")
    assert no_port.exit_code == 2
    assert no_port.stderr.splitlines()[-1] == "error: Service shop/web has no port 443/TCP (its ports: 80/TCP)"


def test_eval_without_a_port_is_a_usage_error(tmp_path: Path) -> None:
    for proto in ("tcp", "udp", "sctp"):
        result = run("eval", "-f", str(tmp_path), "--from", "a/b", "--to", "c/d", "--proto", proto)
        assert result.exit_code == 2
        assert f"--proto {proto} needs --port N" in result.stderr
    icmp = run("eval", "-f", str(tmp_path / "none.yaml"), "--from", "a/b", "--to", "c/d", "--proto", "icmp")
    assert "needs --port" not in icmp.stderr


def test_apply_and_delete_take_dash_n(world: World, tmp_path: Path) -> None:  # noqa: F811
    path = repo(tmp_path)
    result = world.run("apply", "-n", "shop", "-f", path)
    assert result.exit_code == 0, result.output
    assert "skipped 2 ConfigMap, 1 Ingress: kinds flowtui does not read" in result.stderr
    assert "deployment/shop/web created" in result.stdout
    assert "knp/shop/web created" in result.stdout
    listed = world.run("get", "deploy", "-A")
    assert listed.exit_code == 0, listed.output
    assert [line.split()[:3] for line in listed.stdout.splitlines()] == [["NAMESPACE", "NAME", "REVISION"],
                                                                         ["shop", "web", "1"]]
    assert world.run("get", "svc", "-A", "-n", "shop").exit_code == 2
    wrong = world.run("apply", "-n", "prod", "-f", path)
    assert wrong.exit_code == 0  # nothing in it names a namespace: all of it goes to prod
    deleted = world.run("delete", "-n", "shop", "-f", path)
    assert deleted.exit_code == 0, deleted.output
    assert "knp/shop/web deleted" in deleted.stdout
    assert {o.key.namespace for o in world.ds.objects()} == {"prod"}  # the Namespace shop went too
