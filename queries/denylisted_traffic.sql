-- denylisted_traffic: traffic from members of network sets (deny lists), and what stopped it.
--
-- Flows whose source address lies in a CIDR of a GlobalNetworkSet or NetworkSet known to the
-- store (any revision of the endpoints table), denied by default: did the deny list work, and which
-- rule enforced it? One row per set, source, destination, protocol, destination port, action
-- and deciding rule, with packets, flows (source ports per time bucket: a flow is a 5-tuple in a
-- time bucket, as `conversations` counts them, so hourly rollups add up exactly) and first/last
-- seen. The writer keeps the flows of member addresses apart (`denylisted_flows`); they are matched
-- to the sets' IPv4 and IPv6 CIDRs here in plain SQL (the macros below), needing no extension.
--
-- Parameters (DuckDB variables, all optional: SET VARIABLE name = 'value'):
--   since      window start: a time ('2026-03-14 12:00') or a duration back from now ('30m', '24h', '7d') (default: all recorded flows)
--   until      window end, exclusive; same forms as since (default: no end)
--   now        the time durations count back from (default: the end of the latest flow bucket)
--   action     Allow, Deny, Log, Pass, or any (default: Deny)
--   netset     only network sets whose name matches this LIKE pattern (default: every set)
--   rows       rows returned (default: 100)
--
-- Example:
--   flowtui query denylisted_traffic --param action=any
--   duckdb -readonly flowtui.duckdb -c "SET VARIABLE action = 'any'" -c ".read queries/denylisted_traffic.sql"
--
-- Columns: network_set, src, src_ip, dst, dst_ip, proto, dport, action, policy, packets, flows, first_seen, last_seen
CREATE OR REPLACE TEMP MACRO ft_groups(part) AS CASE WHEN part = '' THEN []::VARCHAR[] ELSE string_split(part, ':') END;
CREATE OR REPLACE TEMP MACRO ft_ip6_list(a) AS CASE WHEN contains(a, '::') THEN list_concat(list_concat(
    ft_groups(split_part(a, '::', 1)),
    list_resize([]::VARCHAR[], 8 - len(ft_groups(split_part(a, '::', 1))) - len(ft_groups(split_part(a, '::', 2))), '0')),
    ft_groups(split_part(a, '::', 2))) ELSE string_split(a, ':') END;
CREATE OR REPLACE TEMP MACRO ft_hex(g) AS try_cast('0x' || g AS UHUGEINT);
CREATE OR REPLACE TEMP MACRO ft_ip6_num(l) AS CASE WHEN len(l) = 8 THEN
    (ft_hex(l[1]) << 112) + (ft_hex(l[2]) << 96) + (ft_hex(l[3]) << 80) + (ft_hex(l[4]) << 64)
  + (ft_hex(l[5]) << 48) + (ft_hex(l[6]) << 32) + (ft_hex(l[7]) << 16) + ft_hex(l[8]) END;
CREATE OR REPLACE TEMP MACRO ft_ip_num(a) AS CASE WHEN contains(a, ':') THEN ft_ip6_num(ft_ip6_list(a))
  ELSE (try_cast(split_part(a, '.', 1) AS UHUGEINT) << 24) + (try_cast(split_part(a, '.', 2) AS UHUGEINT) << 16)
     + (try_cast(split_part(a, '.', 3) AS UHUGEINT) << 8) + try_cast(split_part(a, '.', 4) AS UHUGEINT) END;
CREATE OR REPLACE TEMP MACRO ft_bits(a) AS CASE WHEN contains(a, ':') THEN 128 ELSE 32 END;
CREATE OR REPLACE TEMP MACRO ft_plen(cidr) AS
  least(coalesce(try_cast(nullif(split_part(cidr, '/', 2), '') AS INTEGER), 128), ft_bits(cidr));
CREATE OR REPLACE TEMP MACRO ft_in_cidr(ip, cidr) AS CASE
  WHEN contains(ip, ':') <> contains(cidr, ':') THEN false
  WHEN ft_plen(cidr) = 0 THEN true
  ELSE (ft_ip_num(ip) >> (ft_bits(cidr) - ft_plen(cidr))::UHUGEINT)
       = (ft_ip_num(split_part(cidr, '/', 1)) >> (ft_bits(cidr) - ft_plen(cidr))::UHUGEINT) END;
WITH sets AS (
  SELECT DISTINCT coalesce(namespace || '/', '') || name AS network_set, unnest(addresses) AS cidr
  FROM endpoints
  WHERE type = 'netset' AND (getvariable('netset') IS NULL OR name LIKE getvariable('netset'))
),
hits AS (  -- the flows of network set members only, one row per key (totals, or hourly rollups and raw flows)
  SELECT src_ip, dst_ip, proto, dport, action, rule_id, packets, flows, first_seen, last_seen, src_ep, dst_ep
  FROM denylisted_flows
  WHERE lower(coalesce(getvariable('action'), 'Deny')) IN ('any', lower(action))
),
members AS (  -- the few sources matched to the sets' CIDRs
  SELECT DISTINCT s.src_ip, t.network_set
  FROM (SELECT DISTINCT src_ip FROM hits) s JOIN sets t ON ft_in_cidr(s.src_ip, t.cidr)
)
SELECT m.network_set,
  CASE WHEN se.type = 'wep' THEN se.namespace || '/' || se.name
       WHEN se.id IS NOT NULL THEN se.type || ':' || coalesce(se.namespace || '/', '') || se.name END AS src,
  h.src_ip,
  CASE WHEN de.type = 'wep' THEN de.namespace || '/' || de.name
       WHEN de.id IS NOT NULL THEN de.type || ':' || coalesce(de.namespace || '/', '') || de.name END AS dst,
  h.dst_ip,
  CASE h.proto WHEN 6 THEN 'tcp' WHEN 17 THEN 'udp' WHEN 1 THEN 'icmp' WHEN 58 THEN 'icmpv6' WHEN 132 THEN 'sctp'
               ELSE h.proto::VARCHAR END AS proto,
  h.dport, h.action, r.policy, h.packets, h.flows, h.first_seen, h.last_seen
FROM hits h
JOIN members m ON m.src_ip = h.src_ip
LEFT JOIN rules r ON r.id = h.rule_id
LEFT JOIN endpoints se ON se.id = h.src_ep
LEFT JOIN endpoints de ON de.id = h.dst_ep
ORDER BY h.packets DESC, m.network_set, h.src_ip, h.dst_ip, h.dport
LIMIT coalesce(getvariable('rows')::INTEGER, 100);
