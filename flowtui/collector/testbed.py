"""A two-namespace test bed for the collector's kernel tests and benchmark (lab namespaces only).

    bed = Testbed.up("t1a2b3")            # ft-t1a2b3-ext-gen  <-veth->  ft-t1a2b3-node-rx
    bed.nft(RULESET)                      # nftables INSIDE the receiver namespace only
    ...                                   # send from bed.gen, collect NFLOG in bed.rx
    bed.down()                            # removes both namespaces (lab_down by prefix)

Names follow `enforcer.lab.names`: the receiver is a lab *node* (`node:rx`), the generator an
*external host* (`external:gen`), so `flowtui collect --lab ID` finds the receiver like any node
and `lab_down(ID)` removes everything, even after a crash. Nothing touches the root namespace:
links are created by netlink sockets opened inside the lab namespaces (`open_netns`), and nft
runs as `ip netns exec NS nft -f -`.
"""

from __future__ import annotations

import json
import socket
import subprocess
from dataclasses import dataclass
from typing import Any

GEN_IF, RX_IF = "eth0", "eth0"
GEN_V4, RX_V4 = "10.250.0.1", "10.250.0.2"
GEN_V6, RX_V6 = "fd00:250::1", "fd00:250::2"
GEN_MAC, RX_MAC = "02:00:00:00:fa:01", "02:00:00:00:fa:02"
IFA_F_NODAD = 0x02


@dataclass(frozen=True)
class Testbed:
    __test__ = False  # not a pytest test class

    lab_id: str
    gen: str  # generator namespace
    rx: str  # receiver namespace (where nft logs and the collector listens)

    @classmethod
    def up(cls, lab_id: str) -> Testbed:
        from enforcer.lab.kernel import netns_path, open_netns
        from enforcer.lab.names import netns_name
        from enforcer.lab.netns import create_netns

        bed = cls(lab_id, netns_name(lab_id, "external:gen"), netns_name(lab_id, "node:rx"))
        create_netns(bed.gen)
        create_netns(bed.rx)
        with open_netns(bed.gen) as gen, open_netns(bed.rx) as rx:
            if not gen.link_lookup(ifname=GEN_IF):
                gen.link(
                    "add",
                    ifname=GEN_IF,
                    kind="veth",
                    address=GEN_MAC,
                    peer={"ifname": RX_IF, "net_ns_fd": netns_path(bed.rx), "address": RX_MAC},
                )
            for ipr, ifname, v4, v6, peer_v4, peer_v6, peer_mac in (
                (gen, GEN_IF, GEN_V4, GEN_V6, RX_V4, RX_V6, RX_MAC),
                (rx, RX_IF, RX_V4, RX_V6, GEN_V4, GEN_V6, GEN_MAC),
            ):
                (lo,) = ipr.link_lookup(ifname="lo")
                ipr.link("set", index=lo, state="up")
                (idx,) = ipr.link_lookup(ifname=ifname)
                have = {m.get("address") for m in ipr.get_addr(index=idx)}
                if v4 not in have:
                    ipr.addr("add", index=idx, address=v4, prefixlen=24)
                if v6 not in have:
                    ipr.addr("add", index=idx, address=v6, prefixlen=64, flags=IFA_F_NODAD)
                ipr.link("set", index=idx, state="up")
                for dst, mac in ((peer_v4, peer_mac), (peer_v6, peer_mac)):
                    ipr.neigh("replace", dst=dst, lladdr=mac, ifindex=idx, state=0x80)  # NUD_PERMANENT
        return bed

    def down(self) -> None:
        from enforcer.lab.netns import lab_down

        lab_down(self.lab_id)

    # ---------------------------------------------------------------------------------------
    # nftables inside the receiver

    def nft(self, ruleset: str) -> None:
        """Load `ruleset` (nft -f syntax) into the receiver namespace."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.rx, "nft", "-f", "-"],
            input=ruleset,
            text=True,
            capture_output=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise RuntimeError(f"nft -f in {self.rx} failed: {done.stderr.strip()}")

    def nft_json(self) -> dict[str, Any]:
        done = subprocess.run(
            ["ip", "netns", "exec", self.rx, "nft", "-j", "list", "ruleset"],
            text=True,
            check=True,
            capture_output=True,
            timeout=30,
        )
        doc: dict[str, Any] = json.loads(done.stdout)
        return doc

    def counter(self, prefix: str) -> int:
        """Packets counted by the receiver's rule that logs with `prefix` (its first counter)."""
        for item in self.nft_json().get("nftables", []):
            rule = item.get("rule")
            if not rule:
                continue
            exprs = rule.get("expr", [])
            if any(isinstance(e, dict) and e.get("log", {}).get("prefix") == prefix for e in exprs):
                for e in exprs:
                    if isinstance(e, dict) and "counter" in e:
                        return int(e["counter"]["packets"])
        raise KeyError(prefix)

    # ---------------------------------------------------------------------------------------
    # Sending from the generator

    def udp_socket(self, family: int = socket.AF_INET) -> socket.socket:
        """A UDP socket living in the generator namespace."""
        from enforcer.lab.kernel import in_netns

        return in_netns(self.gen, lambda: socket.socket(family, socket.SOCK_DGRAM))

    def send_udp(self, count: int, dport: int = 9999, v6: bool = False, payload: bytes = b"x" * 18) -> int:
        """Send `count` UDP datagrams to the receiver; returns how many were sent."""
        family = socket.AF_INET6 if v6 else socket.AF_INET
        dst = RX_V6 if v6 else RX_V4
        with self.udp_socket(family) as s:
            sent = 0
            for _ in range(count):
                s.sendto(payload, (dst, dport))
                sent += 1
        return sent
