"""Names of everything the lab creates: namespaces, interfaces, targets.

Every network namespace of a lab is called `ft-<labid>-<kind>-<name>`, so a lab can always be
found (and removed) by listing `/var/run/netns`, with no memory of the plan that built it:

| kind     | namespace                      | target (as `lab exec` takes it) |
|----------|--------------------------------|---------------------------------|
| underlay | `ft-<labid>-underlay`          | `underlay`                      |
| node     | `ft-<labid>-node-<name>`       | `node:<name>`                   |
| external | `ft-<labid>-ext-<name>`        | `external:<name>`               |
| pod      | `ft-<labid>-pod-<ns>.<name>`   | `<ns>/<name>`                   |
| etcd     | `ft-<labid>-etcd-<member>`     | `etcd:<member>`                 |

Lab ids are 1-12 lower-case letters and digits (no `-`), so the prefix `ft-<labid>-` of one lab
is never a prefix of another lab's namespaces. Kubernetes namespace names never contain a dot,
so `<ns>.<name>` splits unambiguously at its first dot.

Interface names are at most 15 bytes (IFNAMSIZ - 1). Inside a node or pod namespace the underlay
or pod-side interface is `eth0`; the node-side end of a pod's veth is `cali` + the first 11 hex
digits of sha1("<namespace>.<pod>"), exactly as Calico names it; every other interface the lab
creates starts with `ft` (`ftbr0`, the bridge; `ftv<12 hex>`, bridge ports).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

NETNS_DIR = "/var/run/netns"  # where `ip netns` (and pyroute2) keep named namespaces
PREFIX = "ft-"
# wireguard-go's runtime directories, one per node namespace (`enforcer.wireguard.userspace`):
# `lab_down` removes a lab's with its namespaces.
WIREGUARD_RUN_DIR = Path("/run/flowtui/wireguard")
DEFAULT_LAB_ID = "lab"

BRIDGE = "ftbr0"  # the underlay bridge, inside ft-<labid>-underlay
UPLINK = "eth0"  # a node's or external host's interface on the underlay
POD_IF = "eth0"  # a pod's interface
IFNAMSIZ = 16
NETNS_NAME_MAX = 255

Kind = Literal["underlay", "node", "ext", "etcd", "pod"]
KINDS: tuple[Kind, ...] = ("underlay", "node", "ext", "etcd", "pod")

_LAB_ID = re.compile(r"[a-z0-9]{1,12}")
_OBJECT_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
_K8S_NAMESPACE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


class LabError(Exception):
    """A lab cannot be planned, built, found or used; the message says why."""


@dataclass(frozen=True)
class Target:
    """Something `lab exec` can run in: one of the lab's network namespaces."""

    kind: Kind
    name: str  # node or external host name, `<ns>/<pod>` for pods, "" for the underlay

    def __str__(self) -> str:
        if self.kind == "underlay":
            return "underlay"
        if self.kind == "pod":
            return self.name
        if self.kind == "etcd":
            return f"etcd:{self.name}"
        return f"{'node' if self.kind == 'node' else 'external'}:{self.name}"


LAB_ID_MAX = 12


def netns_name_error(kind: Kind, name: str) -> str | None:
    """Why no lab could make a namespace for object `name` (`<ns>.<pod>` for a pod), or None.

    Checked with the longest lab id, so that what `flowtui check` accepts fits in every lab: a
    valid Kubernetes name can be longer than a namespace name may be (253 characters, and a pod's
    namespace adds 64 more)."""
    longest = len(f"{PREFIX}{'x' * LAB_ID_MAX}-{kind}-".encode())
    size = longest + len(name.encode())
    if size <= NETNS_NAME_MAX:
        return None
    return (f"too long for the lab: {size - longest} bytes give the network namespace "
            f"ft-<lab>-{kind}-<name> {size} bytes with a {LAB_ID_MAX}-character lab id "
            f"(at most {NETNS_NAME_MAX}, so at most {NETNS_NAME_MAX - longest} for the name)")


def check_lab_id(lab_id: str) -> str:
    """Return `lab_id` if it is 1-12 lower-case letters or digits, else raise LabError."""
    if not _LAB_ID.fullmatch(lab_id):
        raise LabError(f"invalid lab id {lab_id!r}: use 1-12 lower-case letters or digits")
    return lab_id


def lab_prefix(lab_id: str) -> str:
    """`ft-<labid>-`: every namespace of the lab starts with this."""
    return f"{PREFIX}{check_lab_id(lab_id)}-"


def underlay_netns(lab_id: str) -> str:
    """`ft-<labid>-underlay`: the namespace holding the underlay bridge."""
    return f"{lab_prefix(lab_id)}underlay"


def parse_target(target: str) -> Target:
    """Parse `NAMESPACE/POD`, `node:NAME`, `external:NAME` (or `ext:NAME`), `etcd:MEMBER` or `underlay`."""
    if target == "underlay":
        return Target("underlay", "")
    kind, sep, name = target.partition(":")
    if sep:
        if kind == "node":
            return Target("node", _check_name(name, target))
        if kind in ("external", "ext"):
            return Target("ext", _check_name(name, target))
        if kind == "etcd":
            return Target("etcd", _check_name(name, target))
        raise LabError(f"unknown target kind {kind!r} in {target!r}: use node:, external:, etcd: or NS/POD")
    namespace, sep, pod = target.partition("/")
    if not sep or not _K8S_NAMESPACE.fullmatch(namespace):
        raise LabError(f"invalid target {target!r}: use NAMESPACE/POD, node:NAME or external:NAME")
    return Target("pod", f"{namespace}/{_check_name(pod, target)}")


def _check_name(name: str, context: str) -> str:
    if not _OBJECT_NAME.fullmatch(name):
        raise LabError(f"invalid name {name!r} in {context!r}")
    return name


def netns_name(lab_id: str, target: str | Target) -> str:
    """The network namespace of `target` (a Target or its text form) in lab `lab_id`."""
    tgt = parse_target(str(target))  # validates the names of Target objects too
    prefix = lab_prefix(lab_id)
    if tgt.kind == "underlay":
        return f"{prefix}underlay"
    if tgt.kind == "pod":
        namespace, _, pod = tgt.name.partition("/")
        name = f"{prefix}pod-{namespace}.{pod}"
    else:
        name = f"{prefix}{tgt.kind}-{tgt.name}"
    if len(name.encode()) > NETNS_NAME_MAX:
        raise LabError(f"namespace name for {tgt} is longer than {NETNS_NAME_MAX} bytes")
    return name


def target_of_netns(lab_id: str, netns: str) -> Target | None:
    """The target a namespace name of lab `lab_id` stands for; None if it is not one of the lab's."""
    prefix = lab_prefix(lab_id)
    if not netns.startswith(prefix):
        return None
    rest = netns[len(prefix) :]
    if rest == "underlay":
        return Target("underlay", "")
    kind, sep, name = rest.partition("-")
    if not sep or not name:
        return None
    if kind in ("node", "ext", "etcd"):
        return Target("node" if kind == "node" else "ext" if kind == "ext" else "etcd", name)
    if kind == "pod":
        namespace, dot, pod = name.partition(".")
        return Target("pod", f"{namespace}/{pod}") if dot and pod else None
    return None


def lab_id_of_netns(netns: str) -> str | None:
    """The lab id in a lab namespace name (`ft-<labid>-...`), None for other names."""
    if not netns.startswith(PREFIX):
        return None
    lab_id, sep, _ = netns[len(PREFIX) :].partition("-")
    return lab_id if sep and _LAB_ID.fullmatch(lab_id) else None


def _hex(text: str, digits: int) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:digits]


def cali_name(namespace: str, pod: str) -> str:
    """Calico's host-side interface name for a pod: `cali` + sha1("<namespace>.<pod>")[:11]."""
    return "cali" + _hex(f"{namespace}.{pod}", 11)


def port_name(kind: Kind, name: str) -> str:
    """The bridge port (inside the underlay namespace) of a node or external host: `ftv<12 hex>`."""
    return "ftv" + _hex(f"{kind}:{name}", 12)
