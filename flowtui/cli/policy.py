"""`flowtui check` and `flowtui eval`: validate policy, decide a flow and explain the decision."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import click

from enforcer.evaluate import Evaluator, Flow, RefError, decision_json, decision_text, resolve_ref
from enforcer.evaluate.flow import is_service_ref, resolve_service
from enforcer.model import PROTOCOL_NUMBERS, FelixConfiguration, ResourceSet
from enforcer.resolve import ClusterState
from enforcer.resolve.workloads import SERVICE_REFS, WORKLOAD_REFS, service_at
from flowtui.cli.common import EXIT_INVALID, all_paths, echo_json, fail, load_or_exit, namespace_option, paths_option

_PROTO_NAMES = {name.lower(): num for name, num in PROTOCOL_NUMBERS.items()}
PORTED_PROTOCOLS = (6, 17, 132, 136)  # tcp, udp, sctp, udplite: a flow of these has a destination port


def parse_protocol(text: str) -> int:
    value = _PROTO_NAMES.get(text.lower())
    if value is not None:
        return value
    if text.isdigit() and 1 <= int(text) <= 255:
        return int(text)
    raise click.BadParameter(f"{text!r}: expected tcp, udp, icmp, icmpv6, sctp, udplite or a number 1-255")


def summarize(res: ResourceSet) -> str:
    counts = {
        "policies": len(res.policies),
        "tiers": len(res.tiers),
        "pods": len(res.pods),
        "namespaces": len(res.namespaces),
        "nodes": len(res.nodes),
        "host endpoints": len(res.host_endpoints),
        "network sets": len(res.network_sets),
        "profiles": len(res.profiles),
        "outside hosts": len(res.external_hosts),
        "workloads": len(res.workloads),
        "services": len(res.services),
        "Felix configuration": int(res.felix != FelixConfiguration()),
    }
    return ", ".join(f"{n} {what}" for what, n in counts.items() if n)


@click.command()
@paths_option
@namespace_option
def check(paths: Sequence[str], more_paths: Sequence[str], namespace: str | None) -> None:
    """Validate resources as Calico would. Exit 2 with FILE:LINE errors when anything is wrong."""
    res = load_or_exit(all_paths(paths, more_paths), namespace)
    click.echo(f"ok: {summarize(res) or 'no resources'}")


def in_namespace(ref: str, namespace: str | None) -> str:
    """With `-n NS`, refs as kubectl reads names: `web` is the pod NS/web, `deploy/web` the
    Deployment NS/web, `svc/web` the Service NS/web. Other refs are left as written."""
    if namespace is None or ":" in ref:
        return ref
    try:
        ipaddress.ip_address(ref)
        return ref
    except ValueError:
        pass
    parts = ref.split("/")
    if len(parts) == 1:
        return f"{namespace}/{ref}"
    if len(parts) == 2 and (parts[0].lower() in WORKLOAD_REFS or parts[0].lower() in SERVICE_REFS):
        return f"{parts[0]}/{namespace}/{parts[1]}"
    return ref


def build_flow(
    state: ClusterState,
    src_ref: str,
    dst_ref: str,
    proto: int,
    port: int | None,
    sport: int | None,
    icmp_type: int | None,
    icmp_code: int | None,
    ipv6: bool,
) -> Flow:
    version = 6 if ipv6 or proto == 58 else 4
    for ref in (src_ref, dst_ref):
        try:
            version = ipaddress.ip_address(ref).version  # a literal address decides the family
        except ValueError:
            pass
    src = resolve_ref(state, src_ref, version)
    service = service_at(state.resources, dst_ref)
    if service is not None:  # a cluster IP: the flow kube-proxy delivers
        dst_ref = f"svc/{service.namespace}/{service.name}"
    if is_service_ref(dst_ref):
        if port is None or proto not in PORTED_PROTOCOLS[:3]:
            raise RefError(f"{dst_ref}: a Service is reached with --proto tcp, udp or sctp and --port N")
        dst, port = resolve_service(state, dst_ref, proto, port, src.address.version)  # kube-proxy's DNAT
    else:
        dst = resolve_ref(state, dst_ref, src.address.version)
    if proto in (1, 58):
        if port is not None or sport is not None:
            raise click.BadParameter("ICMP has no ports; use --icmp-type/--icmp-code", param_hint="--port")
        if icmp_type is None:
            icmp_type = 8 if src.address.version == 4 else 128  # echo request, as ping sends
            icmp_code = 0 if icmp_code is None else icmp_code
    elif icmp_type is not None or icmp_code is not None:
        raise click.BadParameter("--icmp-type/--icmp-code need --proto icmp or icmpv6")
    if proto in (6, 17, 132, 136) and sport is None:
        sport = 40000  # any ephemeral port; rules rarely look at it
    return Flow(src.address, dst.address, proto, sport, port, icmp_type, icmp_code)


@click.command(name="eval")
@paths_option
@namespace_option
@click.option("--from", "src_ref", required=True, metavar="REF",
              help="Source: NAMESPACE/POD, a workload (deploy/NAMESPACE/NAME, sts/, ds/, rs/, job/, cronjob/), "
                   "hep:NAME, node:NAME, external:NAME or an IP address; with -n, as kubectl reads names (web, "
                   "deploy/web).")
@click.option("--to", "dst_ref", required=True, metavar="REF",
              help="Destination, same forms as --from, or svc/NAMESPACE/NAME (the pod kube-proxy delivers --port to).")
@click.option("--proto", "proto_text", required=True, metavar="PROTO",
              help="tcp, udp, icmp, icmpv6, sctp, udplite or a protocol number.")
@click.option("--port", type=click.IntRange(1, 65535), help="Destination port.")
@click.option("--sport", type=click.IntRange(1, 65535), help="Source port (default 40000).")
@click.option("--icmp-type", type=click.IntRange(0, 255), help="ICMP type (default: echo request).")
@click.option("--icmp-code", type=click.IntRange(0, 255), help="ICMP code.")
@click.option("-6", "--ipv6", is_flag=True, help="Use the endpoints' IPv6 addresses.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def eval_cmd(
    paths: Sequence[str],
    more_paths: Sequence[str],
    namespace: str | None,
    src_ref: str,
    dst_ref: str,
    proto_text: str,
    port: int | None,
    sport: int | None,
    icmp_type: int | None,
    icmp_code: int | None,
    ipv6: bool,
    output: str,
) -> None:
    """Decide one flow exactly as Calico would, and explain why.

    Both the source's egress and the destination's ingress are evaluated, with host endpoint
    policy (untracked, preDNAT, normal, applyOnForward) on the nodes the packet crosses.
    """
    proto = parse_protocol(proto_text)
    if proto in PORTED_PROTOCOLS and port is None:
        raise click.UsageError(f"--proto {proto_text} needs --port N (the destination port)")
    res = load_or_exit(all_paths(paths, more_paths), namespace)
    src_ref, dst_ref = in_namespace(src_ref, namespace), in_namespace(dst_ref, namespace)
    state = ClusterState(res)
    try:
        flow = build_flow(state, src_ref, dst_ref, proto, port, sport, icmp_type, icmp_code, ipv6)
    except (RefError, ValueError) as err:
        fail(str(err), EXIT_INVALID)
    decision = Evaluator(state).decide(flow, explain=True)
    if output == "json":
        echo_json(decision_json(decision))
    else:
        click.echo(decision_text(decision))
