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
WITH win AS (SELECT * FROM query_window),
sets AS (
  SELECT DISTINCT coalesce(namespace || '/', '') || name AS network_set, unnest(addresses) AS cidr
  FROM endpoints
  WHERE type = 'netset' AND (getvariable('netset') IS NULL OR name LIKE getvariable('netset'))
),
window_flows AS (
  SELECT f.* FROM flows f, win
  WHERE f.start_time >= win.since_ AND f.start_time < win.until_
    AND (lower(coalesce(getvariable('action'), 'Deny')) IN ('any', lower(f.action)))
),
members AS (
  SELECT DISTINCT s.src_ip, t.network_set
  FROM (SELECT DISTINCT src_ip FROM window_flows) s JOIN sets t ON ft_in_cidr(s.src_ip, t.cidr)
),
hits AS (
  SELECT f.src_ip, f.dst_ip, f.proto, f.dport, f.action, f.rule_id,
         sum(f.packets) AS packets, count(DISTINCT (f.start_time, coalesce(f.sport, -1))) AS flows,
         min(f.first_seen) AS first_seen, max(f.last_seen) AS last_seen,
         any_value(f.src_ep) AS src_ep, any_value(f.dst_ep) AS dst_ep
  FROM window_flows f
  WHERE f.src_ip IN (SELECT src_ip FROM members)
  GROUP BY f.src_ip, f.dst_ip, f.proto, f.dport, f.action, f.rule_id
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
