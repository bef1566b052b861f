"""The `/` filter language -> a SQL `WHERE` clause over stream rows (`flowtui.tui.queries`). Headless.

    compile_filter("verdict:deny ns:production")     # both must hold
    compile_filter("!verdict:allow")                  # k9s `/!`: negate the whole filter
    compile_filter("-pod:staging/frontend port:9000") # `-` (or `not`) negates one term
    compile_filter("--from-pod production/frontend --verdict DROPPED")   # Hubble's flags
    compile_filter("frontend")                         # free text: anywhere in names, IPs, policy

Terms are AND-ed; a term's comma-separated values are OR-ed (`verdict:deny,log`). Values may be
quoted (`policy:"my policy"`) and may use `*` as a wildcard. Keys (with Hubble's spellings):

| key | matches |
|---|---|
| `verdict`, `action` | allow, deny, log, pass (also Hubble's forwarded, dropped, audit) |
| `namespace`, `ns` / `from-namespace`, `to-namespace` | the endpoint's namespace (either end / one end) |
| `pod` / `from-pod`, `to-pod` | `ns/pod` or `pod` |
| `label` / `from-label`, `to-label` | `key=value` or `key` |
| `port` / `from-port`, `to-port` (`sport`, `dport`) | a port or a range `8000-8999` |
| `protocol`, `proto` | tcp, udp, icmp, icmpv6, sctp or a number |
| `ip` / `from-ip`, `to-ip` | an address, an IPv4 CIDR, or a wildcard `10.244.*` |
| `from`, `to` | `ns/pod`, `node:NAME`, `hep:NAME`, `external:NAME`, or an address/CIDR |
| `type` / `from-type`, `to-type` | wep (pod), hep, node, external, netset, net |
| `policy` | `name`, `ns/name`, `gnp/name`, `np/ns/name`, `pro/kns.prod` (wildcards allowed) |
| `tier`, `rule`, `node` | tier name; rule index (-1 = end of tier); reporting node |

Every term is NULL-safe (`coalesce(..., false)`), so negations keep rows that lack the field.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "ipv6-icmp": 58, "sctp": 132, "udplite": 136,
             "gre": 47, "esp": 50}
VERDICTS = {"allow": "allow", "allowed": "allow", "forwarded": "allow", "accept": "allow",
            "deny": "deny", "denied": "deny", "dropped": "deny", "drop": "deny",
            "log": "log", "audit": "log", "logged": "log", "pass": "pass"}
TYPES = {"wep": "wep", "pod": "wep", "workload": "wep", "hep": "hep", "host": "hep", "node": "node",
         "external": "external", "ext": "external", "netset": "netset", "net": "net"}
KIND_PREFIX = {"gnp": "GlobalNetworkPolicy", "np": "NetworkPolicy", "knp": "KubernetesNetworkPolicy",
               "sgnp": "StagedGlobalNetworkPolicy", "snp": "StagedNetworkPolicy",
               "sknp": "StagedKubernetesNetworkPolicy", "kcnp": "ClusterNetworkPolicy",
               "cnp": "ClusterNetworkPolicy", "pro": "Profile", "profile": "Profile",
               "eot": "EndOfTier"}
FREE_TEXT_COLUMNS = ("src_ip", "dst_ip", "src_namespace", "src_name", "dst_namespace", "dst_name", "node",
                     "tier", "policy_namespace", "policy_name", "verdict")


class FilterError(ValueError):
    """A filter that does not compile; `term` is the offending piece of text."""

    def __init__(self, message: str, term: str = "") -> None:
        super().__init__(message)
        self.term = term


@dataclass(frozen=True)
class CompiledFilter:
    text: str
    where: str | None  # None: everything
    negated: bool = False
    terms: tuple[str, ...] = field(default=())
    # Conditions over one endpoint (`queries.ENDPOINT_ROWS`: ep_type, ep_namespace, ep_name, ep_labels),
    # one per endpoint term: no endpoint meeting one of them, no row can match (`endpoint_needs`).
    endpoint_needs: tuple[str, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return self.where is None

    def describe(self) -> str:
        if self.where is None:
            return "all flows"
        return ("NOT " if self.negated else "") + " AND ".join(self.terms)

    def sql(self, relation: str = "stream") -> str:
        """The query a user would run: shown on request (`s`)."""
        return f"SELECT * FROM {relation}" + (f"\nWHERE {self.where}" if self.where else "")


NOTHING = CompiledFilter("", None)


def lit(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _like(column: str, value: str) -> str:
    if "*" in value or "?" in value:
        pattern = _escape(value).replace("*", "%").replace("?", "_")
        return f"{column} LIKE {lit(pattern)} ESCAPE '\\'"
    return f"{column} = {lit(value)}"


def _any(parts: list[str]) -> str:
    parts = [p for p in parts if p]
    return parts[0] if len(parts) == 1 else "(" + " OR ".join(f"({p})" for p in parts) + ")"


def _sides(key: str) -> tuple[str, ...]:
    if key.startswith(("from-", "src-", "source-")) or key in ("from", "sport"):
        return ("src",)
    if key.startswith(("to-", "dst-", "destination-")) or key in ("to", "dport"):
        return ("dst",)
    return ("src", "dst")


def _base(key: str) -> str:
    for prefix in ("from-", "src-", "source-", "to-", "dst-", "destination-"):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


# ---- one value of one key -> SQL --------------------------------------------------------------


def _verdict(value: str, _sides: tuple[str, ...]) -> str:
    v = VERDICTS.get(value.lower())
    if v is None:
        raise FilterError(f"verdict {value!r}: use allow, deny, log or pass", value)
    return f"verdict = {lit(v)}"


def _namespace(value: str, sides: tuple[str, ...]) -> str:
    return _any([_like(f"{s}_namespace", value) for s in sides])


def _pod(value: str, sides: tuple[str, ...]) -> str:
    ns, _, name = value.rpartition("/")
    parts = []
    for s in sides:
        cond = f"{s}_type = 'wep' AND {_like(f'{s}_name', name)}"
        if ns:
            cond += f" AND {_like(f'{s}_namespace', ns)}"
        parts.append(cond)
    return _any(parts)


def _label(value: str, sides: tuple[str, ...]) -> str:
    parts = []
    for s in sides:
        if "=" in value:
            parts.append(f"list_contains({s}_labels, {lit(value)})")
        else:
            parts.append(f"len(list_filter({s}_labels, lambda x: starts_with(x, {lit(value + '=')}))) > 0")
    return _any(parts)


def _port(value: str, sides: tuple[str, ...]) -> str:
    lo_text, dash, hi_text = value.partition("-")
    try:
        lo = int(lo_text)
        hi = int(hi_text) if dash else lo
    except ValueError:
        raise FilterError(f"port {value!r}: use a number or a range like 8000-8999", value) from None
    if not (0 <= lo <= hi <= 65535):
        raise FilterError(f"port {value!r}: out of range 0-65535", value)
    col = {"src": "sport", "dst": "dport"}
    return _any([f"{col[s]} = {lo}" if lo == hi else f"{col[s]} BETWEEN {lo} AND {hi}" for s in sides])


def _protocol(value: str, _sides: tuple[str, ...]) -> str:
    number = PROTOCOLS.get(value.lower())
    if number is None:
        try:
            number = int(value)
        except ValueError:
            raise FilterError(f"protocol {value!r}: use {', '.join(sorted(PROTOCOLS))} or a number", value) from None
    return f"proto = {number}"


def _ip(value: str, sides: tuple[str, ...]) -> str:
    return _any([_ip_column(f"{s}_ip", value) for s in sides])


def _ip_column(column: str, value: str) -> str:
    if "*" in value or "?" in value:
        return _like(column, value)
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise FilterError(f"{value!r} is not an address, a CIDR or a wildcard like 10.244.*", value) from None
    if net.num_addresses == 1:
        return f"{column} = {lit(str(net.network_address))}"
    if net.version == 6:
        raise FilterError(f"{value}: IPv6 CIDRs are not supported here; use a wildcard like 2001:db8:*", value)
    lo, hi = int(net.network_address), int(net.broadcast_address)
    octets = " + ".join(f"(try_cast(split_part({column}, '.', {i + 1}) AS BIGINT) << {24 - 8 * i})" for i in range(4))
    return f"({column} LIKE '%.%.%.%' AND ({octets}) BETWEEN {lo} AND {hi})"


def _endpoint(value: str, sides: tuple[str, ...]) -> str:
    kind, colon, name = value.partition(":")
    if colon and kind in ("node", "hep", "external", "ext", "netset"):
        t = TYPES[kind]
        return _any([f"{s}_type = {lit(t)} AND {_like(f'{s}_name', name)}" for s in sides])
    if "/" in value and not _looks_like_ip(value):
        return _pod(value, sides)
    return _ip(value, sides)


def _looks_like_ip(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
        return True
    except ValueError:
        return False


def _type(value: str, sides: tuple[str, ...]) -> str:
    t = TYPES.get(value.lower())
    if t is None:
        raise FilterError(f"type {value!r}: use {', '.join(sorted(set(TYPES)))}", value)
    return _any([f"{s}_type = {lit(t)}" for s in sides])


def _policy(value: str, _sides: tuple[str, ...]) -> str:
    parts = value.split("/")
    kind = KIND_PREFIX.get(parts[0].lower()) if len(parts) > 1 else None
    if kind is not None:
        parts = parts[1:]
    if len(parts) > 2:
        raise FilterError(f"policy {value!r}: use name, ns/name, or kind/[ns/]name", value)
    conds = [_like("policy_name", parts[-1])]
    if len(parts) == 2:
        conds.append(_like("policy_namespace", parts[0]))
    if kind is not None:
        conds.append(f"policy_kind = {lit(kind)}")
    return " AND ".join(conds)


def _tier(value: str, _sides: tuple[str, ...]) -> str:
    return _like("tier", value)


def _rule(value: str, _sides: tuple[str, ...]) -> str:
    if value.lower() in ("eot", "end", "end-of-tier"):
        return "rule_index = -1"
    try:
        return f"rule_index = {int(value)}"
    except ValueError:
        raise FilterError(f"rule {value!r}: use a rule index (-1 or eot for end of tier)", value) from None


def _node(value: str, _sides: tuple[str, ...]) -> str:
    return _like("node", value)


Handler = Callable[[str, tuple[str, ...]], str]
KEYS: dict[str, Handler] = {
    "verdict": _verdict, "action": _verdict, "v": _verdict,
    "namespace": _namespace, "ns": _namespace,
    "pod": _pod, "label": _label, "labels": _label,
    "port": _port, "sport": _port, "dport": _port,
    "protocol": _protocol, "proto": _protocol,
    "ip": _ip, "from": _endpoint, "to": _endpoint, "identity": _endpoint,
    "type": _type, "policy": _policy, "tier": _tier, "rule": _rule, "node": _node,
}


def known_key(key: str) -> bool:
    return key in KEYS or _base(key) in KEYS


def _term_sql(key: str, values: str, raw: str) -> str:
    handler, vals = _handler(key, values, raw)
    return _any([handler(v, _sides(key.lower())) for v in vals])


def _handler(key: str, values: str, raw: str) -> tuple[Handler, list[str]]:
    key = key.lower()
    handler = KEYS.get(key) or (KEYS.get(_base(key)) if _base(key) != key else None)
    if handler is None:
        raise FilterError(f"unknown key {key!r} in {raw!r} (press ? for the filter keys)", raw)
    vals = [v for v in values.split(",") if v != ""]
    if not vals:
        raise FilterError(f"{raw!r}: give a value after {key}:", raw)
    return handler, vals


# Terms that hold only for a row with an endpoint (src or dst) of these attributes: every one of
# them is false on a missing endpoint (NULL columns), so a row they keep has a row of `endpoints`.
ENDPOINT_HANDLERS = (_namespace, _pod, _label, _type, _endpoint)


def _endpoint_need(key: str, values: str, raw: str) -> str | None:
    """What some endpoint must meet for the term to keep any row, over `ep_*` columns (either side
    of a term stands for both: a necessary condition, not the term), or None: not an endpoint term."""
    handler, vals = _handler(key, values, raw)
    if handler not in ENDPOINT_HANDLERS:
        return None
    need = _any([handler(v, ("ep",)) for v in vals])
    return None if "ep_ip" in need else need  # `from:10.0.0.1`: an address, not an endpoint


def _free_text(text: str) -> str:
    hay = "concat_ws(' ', " + ", ".join(f"CAST({c} AS VARCHAR)" for c in FREE_TEXT_COLUMNS) + ")"
    pattern = "%" + _escape(text).replace("*", "%") + "%"
    return f"{hay} ILIKE {lit(pattern)} ESCAPE '\\'"


def compile_filter(text: str) -> CompiledFilter:
    """Compile filter text; raises FilterError with the offending term."""
    source = text.strip()
    negated = source.startswith("!")
    if negated:
        source = source[1:].strip()
    try:
        tokens = shlex.split(source, posix=True)
    except ValueError as exc:
        raise FilterError(f"unbalanced quotes: {exc}", text) from None
    terms: list[str] = []
    described: list[str] = []
    needs: list[str] = []
    i = 0
    negate_next = False
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if tok.lower() in ("not", "--not"):
            negate_next = True
            continue
        neg = negate_next
        negate_next = False
        raw = tok
        if tok.startswith("--"):  # Hubble: --from-pod X, --verdict=DROPPED
            key, eq, value = tok[2:].partition("=")
            if not eq:
                if i >= len(tokens):
                    raise FilterError(f"{tok}: give a value", tok)
                value = tokens[i]
                i += 1
                raw = f"{tok} {value}"
            sql = _term_sql(key, value, raw)
            need = None if neg else _endpoint_need(key, value, raw)
        else:
            if tok.startswith(("-", "!")) and len(tok) > 1:
                neg, tok = True, tok[1:]
            key, colon, value = tok.partition(":")
            if not colon and "=" in tok and known_key(tok.partition("=")[0].lower()):
                key, colon, value = tok.partition("=")
            need = None
            if colon and known_key(key.lower()):
                sql = _term_sql(key, value, raw)
                need = None if neg else _endpoint_need(key, value, raw)
            elif colon and key and not _looks_like_ip(tok) and key.lower() not in TYPES:
                raise FilterError(f"unknown key {key!r} in {raw!r} (press ? for the filter keys)", raw)
            elif _looks_like_ip(tok):
                sql = _ip(tok, ("src", "dst"))
            else:
                sql = _free_text(tok)
        term = f"coalesce(({sql}), false)"
        if need is not None:
            needs.append(need)
        terms.append(f"NOT {term}" if neg else term)
        described.append(("not " if neg else "") + raw.lstrip("-!"))
    if negate_next:
        raise FilterError("`not` at the end: negate what?", "not")
    if not terms:
        return CompiledFilter(text, None, False, ())
    where = " AND ".join(terms)
    if negated:
        where = f"NOT ({where})"
    return CompiledFilter(text, where, negated, tuple(described), () if negated else tuple(needs))


HELP = __doc__ or ""
