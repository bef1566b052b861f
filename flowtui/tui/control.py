"""The policy set the dashboard shows, and the changes it may make to it. Headless: no Textual.

    control = PolicyControl(datastore=Datastore(dir), lab_id="demo", reconciler=rec)  # live
    control = PolicyControl(files=["policies/"])                                      # replay
    control = PolicyControl(datastore=etcd, read_only=True, counters=lab_counters("x"))  # etcd lab
    control.resources()                      # the current ResourceSet (lab addresses filled in)
    control.set_disabled(ref, True)          # datastore + one nftables transaction per node
    control.apply_text(yaml_text, staged=True)

A change is the same as `flowtui policy disable` / `flowtui apply` does: stored in the datastore
(validated first; nothing changes on a problem), then enforced by the reconciler. Without a
datastore and a reconciler (a recording, `--read-only`, not root) every change is refused with
the reason, and everything else works. Live per-rule counters come from the reconciler's nodes,
or, where others enforce (a lab in etcd mode, whose agents do), from `counters`: each node's
table read in its namespace, as `flowtui get hits --lab` reads it.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from enforcer.datastore import DesiredState, Preview
from enforcer.model import ResourceSet

STAGED_KIND = {
    ("projectcalico.org/v3", "GlobalNetworkPolicy"): "StagedGlobalNetworkPolicy",
    ("projectcalico.org/v3", "NetworkPolicy"): "StagedNetworkPolicy",
    ("networking.k8s.io/v1", "NetworkPolicy"): "StagedKubernetesNetworkPolicy",
}
MODEL_KIND = {
    ("projectcalico.org/v3", "NetworkPolicy"): "NetworkPolicy",
    ("networking.k8s.io/v1", "NetworkPolicy"): "KubernetesNetworkPolicy",
    ("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy"): "ClusterNetworkPolicy",
    ("policy.networking.k8s.io/v1alpha1", "BaselineAdminNetworkPolicy"): "ClusterNetworkPolicy",
}


@dataclass(frozen=True)
class NodeCounters:
    """Where the live per-rule counters are read when this process does not enforce: the nodes,
    and each one's table as `nft -j` lists it (None: no table there)."""

    nodes: Callable[[], list[str]]
    listing: Callable[[str], str | None]


def lab_counters(lab_id: str) -> NodeCounters:
    """Every node of lab `lab_id` that is up, its table read in its namespace (root)."""
    from flowtui.cli.state import default_backend, default_lab_nodes

    backend = default_backend(lab_id)
    return NodeCounters(lambda: default_lab_nodes(lab_id), backend.json_listing)


@dataclass(frozen=True)
class PolicyRef:
    kind: str  # model kind: GlobalNetworkPolicy, NetworkPolicy, KubernetesNetworkPolicy, Staged...
    namespace: str | None
    name: str

    def __str__(self) -> str:
        from enforcer.model import SHORT_KIND

        short = SHORT_KIND.get(self.kind, self.kind)
        return f"{short}/{self.namespace}/{self.name}" if self.namespace else f"{short}/{self.name}"


@dataclass(frozen=True)
class ChangeResult:
    ok: bool
    message: str
    revision: int | None = None
    stored_ms: float = 0.0
    enforced_ms: float | None = None  # request -> every node's transaction done
    nodes: int = 0
    errors: tuple[str, ...] = ()


class ChangeRefused(Exception):
    """This control cannot change policy (read-only, a recording, no lab)."""


def staged_document(body: dict[str, Any]) -> dict[str, Any]:
    """The same policy as a staged one (Calico's Staged* kinds): observed, not enforced."""
    api, kind = str(body.get("apiVersion", "")), str(body.get("kind", ""))
    if kind.startswith("Staged"):
        return dict(body)
    staged = STAGED_KIND.get((api, kind))
    if staged is None and model_kind(body) == "ClusterNetworkPolicy":
        raise ValueError(f"{api} {kind} cannot be staged: Calico has no staged ClusterNetworkPolicy")
    if staged is None:
        raise ValueError(f"{api} {kind} cannot be staged (only policies can)")
    out = dict(body)
    out["apiVersion"] = "projectcalico.org/v3"
    out["kind"] = staged
    return out


def model_kind(body: dict[str, Any]) -> str:
    api, kind = str(body.get("apiVersion", "")), str(body.get("kind", ""))
    return MODEL_KIND.get((api, kind), kind)


class PolicyControl:
    def __init__(
        self,
        *,
        datastore: DesiredState | None = None,
        files: Sequence[str] = (),
        namespace: str | None = None,
        lab_id: str | None = None,
        reconciler: Any = None,
        read_only: bool = False,
        why_read_only: str = "",
        counters: NodeCounters | None = None,
    ) -> None:
        self.datastore = datastore
        self.files = tuple(files)
        self.namespace = namespace  # kubectl's -n for `files`
        self.lab_id = lab_id
        self.reconciler = reconciler
        if counters is None and reconciler is not None:
            # looked up when read: a control that never reads counters needs nothing more of it
            counters = NodeCounters(lambda: reconciler.lab_nodes(), lambda node: reconciler.backend.json_listing(node))
        self.counters = counters
        self.read_only = read_only
        self._why = why_read_only
        self._lock = threading.Lock()
        self._kernel = threading.Lock()  # one counter read at a time
        self._cache: tuple[object, ResourceSet] | None = None
        self.last_change: ChangeResult | None = None
        self._wireguard_at = float("-inf")
        self._wireguard_line = ""

    # ---- what can be done -----------------------------------------------------------------

    @property
    def has_policies(self) -> bool:
        return self.datastore is not None or bool(self.files)

    @property
    def can_change(self) -> bool:
        return not self.read_only and self.datastore is not None and self.reconciler is not None

    @property
    def why_not(self) -> str:
        if self.read_only:
            return self._why or "read-only mode"
        if self.datastore is None:
            return "a recording: policy files are shown, not enforced"
        if self.reconciler is None:
            return self._why or "no lab to enforce on"
        return ""

    def describe(self) -> str:
        """The enforcer's state, for the status bar."""
        if self.datastore is None:
            return "policies from files" if self.files else "no policy set"
        rev = self._revision()
        where = f"lab {self.lab_id}" if self.reconciler is not None and self.lab_id else "not enforced"
        state = f"{where}, rev {rev}"
        if self.read_only:
            state += ", read-only"
        last = self.last_change
        if last is not None and last.enforced_ms is not None:
            state += f", last change {last.enforced_ms:.0f} ms"
        if self._wireguard_line:
            state += f" · {self._wireguard_line}"
        return state

    def refresh_wireguard(self, *, every: float = 5.0) -> None:
        """Ask the lab's nodes for their WireGuard tunnels (slow: from a worker), at most every
        `every` seconds; `describe()` then shows one line for them while any family is on."""
        if self.datastore is None or self.reconciler is None or not self.lab_id:
            return
        now = time.monotonic()
        if now - self._wireguard_at < every:
            return
        self._wireguard_at = now
        try:
            from enforcer.wireguard.status import lab_wireguard_status, summary

            statuses = lab_wireguard_status(self.lab_id, self.datastore)
            on = any(s.enabled or s.desired for s in statuses)
            self._wireguard_line = summary(statuses) if on else ""
        except Exception as exc:  # shown in the bar, never fatal to the dashboard
            self._wireguard_line = f"WireGuard: {exc}"

    def _revision(self) -> int:
        assert self.datastore is not None
        try:
            return self.datastore.revision
        except Exception:
            return 0

    # ---- reading ---------------------------------------------------------------------------

    def resources(self) -> ResourceSet:
        """The current policy set (cached until the datastore's revision changes)."""
        with self._lock:
            stamp: object = self._revision() if self.datastore is not None else self.files
            if self._cache is not None and self._cache[0] == stamp:
                return self._cache[1]
            if self.datastore is not None:
                res = self.datastore.resources()
            elif self.files:
                from enforcer.loader import load_paths

                res = load_paths(list(self.files), self.namespace)
            else:
                res = ResourceSet()
            if self.lab_id and (res.nodes or res.pods):
                from enforcer.lab import lab_resources, plan_lab

                try:
                    res = lab_resources(res, plan_lab(res, self.lab_id))
                except Exception:  # a set the lab cannot be planned from: show it as written
                    pass
            self._cache = (stamp, res)
            return res

    def document(self, ref: PolicyRef) -> dict[str, Any] | None:
        """The policy's document as stored (or as written in its file)."""
        if self.datastore is not None:
            found = self.datastore.object_documents(ref.kind, name=ref.name, namespace=ref.namespace)
            for obj, doc in found:
                if obj.key.kind == ref.kind and obj.key.namespace == ref.namespace:
                    return doc
            return found[0][1] if found else None
        if self.files:
            from enforcer.datastore.sources import documents, read_sources

            for item in documents(read_sources(list(self.files)), validate=False):
                if (item.key.kind, item.key.namespace, item.key.name) == (ref.kind, ref.namespace, ref.name):
                    return item.body
        return None

    def document_text(self, ref: PolicyRef) -> str | None:
        from enforcer.datastore.sources import dump

        doc = self.document(ref)
        return None if doc is None else dump(doc)

    # ---- changing --------------------------------------------------------------------------

    def _check(self) -> None:
        if not self.can_change:
            raise ChangeRefused(self.why_not)

    def set_disabled(self, ref: PolicyRef, disabled: bool) -> ChangeResult:
        """Turn a policy off (or on) and enforce it now."""
        self._check()
        assert self.datastore is not None
        start = time.perf_counter()
        changes = self.datastore.set_disabled(ref.kind, ref.name, ref.namespace, disabled)
        stored = (time.perf_counter() - start) * 1e3
        change = changes.changes[0]
        word = "disabled" if disabled else "enabled"
        if change.action == "unchanged":
            return self._done(ChangeResult(True, f"{ref} was already {word}", change.revision, stored))
        return self._enforce(f"{ref} {word}", changes.revision, start, stored)

    def _plan_lab(self, preview: Preview) -> None:
        """Refuse, before anything is stored, what the lab cannot be planned with (as `apply`)."""
        from enforcer.lab import LabError, plan_lab

        assert self.lab_id is not None
        try:
            plan_lab(preview.resources, self.lab_id)
        except LabError as err:
            raise ChangeRefused(f"lab {self.lab_id} cannot be planned with it: {err}") from err

    def apply_text(self, text: str, *, staged: bool = False) -> ChangeResult:
        """Store the YAML document(s) in `text` (as staged policies with `staged`) and enforce."""
        self._check()
        assert self.datastore is not None
        if staged:
            text = stage_text(text)
        start = time.perf_counter()
        fd, path = tempfile.mkstemp(prefix="flowtui-edit-", suffix=".yaml")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            changes = self.datastore.apply_documents([path], check=self._plan_lab if self.lab_id else None)
        finally:
            os.unlink(path)
        stored = (time.perf_counter() - start) * 1e3
        what = ", ".join(f"{c.key} {c.action}" for c in changes.changes) or "nothing changed"
        if not changes.changed:
            return self._done(ChangeResult(True, what, changes.revision, stored))
        return self._enforce(what, changes.revision, start, stored)

    def kernel_hits(self) -> dict[int, int] | None:
        """Packets per rule id from every node's live counters (None without a lab)."""
        if self.counters is None:
            return None
        from enforcer.nft.hits import hits_from_json

        out: dict[int, int] = {}
        with self._kernel:
            for node in self.counters.nodes():
                listing = self.counters.listing(node)
                if listing is None:
                    continue
                for rule_id, hits in hits_from_json(listing).items():
                    out[rule_id] = out.get(rule_id, 0) + hits.packets
        return out

    def rule_refs(self) -> dict[int, Any]:
        """Rule id -> RuleRef from the datastore's rule table (empty without a datastore): its
        rules.jsonl, and with etcd what every machine's agents published."""
        if self.datastore is None:
            return {}
        from enforcer.datastore import DatastoreError

        try:
            return dict(self.datastore.rule_table().refs)
        except (OSError, ValueError, DatastoreError):
            return {}

    def _enforce(self, what: str, revision: int, start: float, stored_ms: float) -> ChangeResult:
        # Not behind the counter reads: the reconciler serialises itself, libnftables calls are
        # serialised by enforcer.nft.libnft, and a toggle (one nfnetlink batch) needs neither:
        # waiting for a counter listing of the whole table made toggles take 40-110 ms.
        result = self.reconciler.reconcile()
        total = (time.perf_counter() - start) * 1e3
        applied = [n for n in result.nodes if n.status == "applied"]
        errors = tuple(f"{n.node}: {n.error}" for n in result.failed)
        message = (f"{what} (revision {revision}): in the kernel after {total:.0f} ms, "
                   f"{len(applied)} of {len(result.nodes)} nodes changed")
        if errors:
            message += "; FAILED on " + ", ".join(errors)
        return self._done(ChangeResult(result.ok, message, revision, stored_ms, total, len(result.nodes), errors))

    def _done(self, result: ChangeResult) -> ChangeResult:
        self.last_change = result
        with self._lock:
            self._cache = None
        return result


def stage_text(text: str) -> str:
    """Every policy document of a YAML text turned into its staged kind."""
    import yaml

    from enforcer.datastore.sources import dump

    docs = [d for d in yaml.safe_load_all(text) if d]
    return "---\n".join(dump(staged_document(d)) for d in docs)


def lab_control(datastore: DesiredState, lab_id: str, *, read_only: bool = False,
                lab_nodes: Callable[[], list[str]] | None = None) -> PolicyControl:
    """A control that enforces on lab `lab_id`'s nodes (root), as `flowtui policy` does."""
    from enforcer.nft.compiler import compile_node, default_options
    from enforcer.reconcile import Reconciler
    from flowtui.cli.state import default_backend, default_lab_nodes

    nodes = lab_nodes or (lambda: default_lab_nodes(lab_id))
    reconciler = Reconciler(datastore, default_backend(lab_id), compile_node, default_options(), nodes,
                            lab_id=lab_id)
    return PolicyControl(datastore=datastore, lab_id=lab_id, reconciler=reconciler, read_only=read_only)
