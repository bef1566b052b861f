"""Representative flows over the article's scenarios: what the demo shows and the lab generates."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Probe:
    src: str
    dst: str
    proto: str
    port: int | None
    what: str
    ipv6: bool = False


ARTICLE_PROBES: tuple[Probe, ...] = (
    Probe("production/frontend", "production/transaction", "tcp", 9000,
          "frontend calls transaction across the tiers (scenario 1 denies)"),
    Probe("staging/frontend", "production/transaction", "tcp", 9000,
          "cross-namespace frontend to transaction (scenario 1 denies)"),
    Probe("staging/transaction", "production/transaction", "tcp", 9000,
          "transaction to transaction: allowed cluster-internal (scenario 2, order 10)"),
    Probe("external:client", "production/frontend", "tcp", 8080,
          "outside client into production (scenario 2, order 20 denies)"),
    Probe("staging/frontend", "staging/database", "tcp", 6379,
          "frontend at the database: logged, then denied (scenario 3)"),
    Probe("staging/transaction", "staging/database", "tcp", 6379,
          "transaction at the database: allowed (scenario 3)"),
    Probe("external:admin", "node:node-a", "tcp", 22, "SSH from the management network (scenario 4)"),
    Probe("external:client", "node:node-a", "tcp", 22,
          "SSH from elsewhere: still open through the failsafe port (scenario 4)"),
    Probe("external:client", "node:node-a", "tcp", 80, "other ports on the worker: end-of-tier deny (scenario 4)"),
    Probe("node:node-a", "node:node-b", "tcp", 2379, "worker to etcd: failsafe outbound (scenario 4)"),
    Probe("external:attacker", "node:node-b", "tcp", 80, "deny-listed attacker at the host: dropped untracked (5)"),
    Probe("external:attacker", "production/transaction", "udp", 9000,
          "deny-listed flood forwarded to a pod: dropped before conntrack (scenario 5)"),
    Probe("external:client", "node:node-b", "tcp", 80, "ordinary client at node-b: allowed by its profile (5)"),
    Probe("production/frontend", "staging/frontend", "icmp", None, "ping between frontends: no policy, allowed"),
    Probe("production/frontend", "staging/database", "tcp", 6379,
          "IPv6: production frontend at the staging database (scenario 3)", ipv6=True),
)
