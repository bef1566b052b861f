"""The lab: a Calico-like cluster built from a ResourceSet as network namespaces on one machine.

    plan = plan_lab(resources, "lab")        # pure, no root: namespaces, veths, addresses, routes
    lab_up(plan)                             # root: build it (idempotent)
    exec_in("lab", "default/web", ["ping", "-c1", "10.244.1.2"])
    lab_status("lab"); lab_down("lab")       # discovered by name, safe after a crash

Modules, in order of dependency: `names` (naming scheme), `spec` (the frozen dataclasses),
`plan` (ResourceSet -> LabPlan), `kernel` (entering a lab namespace safely), `state` (reading a
lab back), `netns` (building and removing one, running commands in it). Planning needs neither
pyroute2 nor root: the kernel functions below are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from enforcer.lab.names import (
    DEFAULT_LAB_ID,
    LabError,
    Target,
    cali_name,
    lab_prefix,
    netns_name,
    parse_target,
)
from enforcer.lab.plan import lab_resources, plan_lab
from enforcer.lab.spec import (
    ExternalPlan,
    LabPlan,
    NetnsSpec,
    NodePlan,
    PodPlan,
    Route,
    VethSpec,
    endpoint_interface,
)

if TYPE_CHECKING:
    from enforcer.lab.netns import command_in, exec_in, lab_down, lab_up, popen_in
    from enforcer.lab.state import LabStatus, lab_status, list_labs

_KERNEL = {
    "command_in": "enforcer.lab.netns",
    "exec_in": "enforcer.lab.netns",
    "lab_down": "enforcer.lab.netns",
    "lab_up": "enforcer.lab.netns",
    "popen_in": "enforcer.lab.netns",
    "LabStatus": "enforcer.lab.state",
    "lab_status": "enforcer.lab.state",
    "list_labs": "enforcer.lab.state",
}


def __getattr__(name: str) -> Any:
    """Load the kernel half (pyroute2) only when it is used."""
    module = _KERNEL.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "DEFAULT_LAB_ID",
    "ExternalPlan",
    "LabError",
    "LabPlan",
    "LabStatus",
    "NetnsSpec",
    "NodePlan",
    "PodPlan",
    "Route",
    "Target",
    "VethSpec",
    "cali_name",
    "command_in",
    "endpoint_interface",
    "exec_in",
    "lab_down",
    "lab_prefix",
    "lab_resources",
    "lab_status",
    "lab_up",
    "list_labs",
    "netns_name",
    "parse_target",
    "plan_lab",
    "popen_in",
]
