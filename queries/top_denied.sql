-- top_denied: the denied flows seen most, with the policy and rule that denied each.
--
-- What is being blocked, and by what? Denied traffic grouped by source address, destination
-- address, protocol and destination port (source ports change with every attempt), with the
-- deciding rule as a Calico flow-log hit, `<idx>|<tier>|<kind>:[<ns>/]<name>|deny|<rule>`
-- (rule -1 is the end of a tier, named after the policy that triggered it), the reporting node,
-- the packets denied, the distinct source ports seen (about one per connection attempt), and
-- when the flow was first and last denied.
--
-- Parameters (DuckDB variables, all optional: SET VARIABLE name = 'value'):
--   since      window start: a time ('2026-03-14 12:00') or a duration back from now ('30m', '24h', '7d') (default: all recorded flows)
--   until      window end, exclusive; same forms as since (default: no end)
--   now        the time durations count back from (default: the end of the latest flow bucket)
--   namespace  only flows from or to this namespace (default: every namespace)
--   rows       rows returned (default: 20)
--
-- Example:
--   flowtui query top_denied --param since=1h --param rows=10
--   duckdb -readonly flowtui.duckdb -c "SET VARIABLE since = '1h'" -c ".read queries/top_denied.sql"
--
-- Columns: src, src_ip, dst, dst_ip, proto, dport, policy, node, packets, flows, first_seen, last_seen
WITH denied AS (  -- rule_flows: one row per reporter, rule and 5-tuple but the source port (whole-store totals + raw flows)
  SELECT source_id, rule_id, src_ip, dst_ip, proto, dport, src_ep, dst_ep, packets,
         sport_count AS flows, first_seen, last_seen
  FROM rule_flows
  WHERE action = 'Deny'
    AND (getvariable('namespace') IS NULL
         OR src_ep IN (SELECT id FROM endpoints WHERE namespace = getvariable('namespace'))
         OR dst_ep IN (SELECT id FROM endpoints WHERE namespace = getvariable('namespace')))
  ORDER BY packets DESC, last_seen DESC, src_ip, dst_ip, dport  -- the top rows first, then their names
  LIMIT coalesce(getvariable('rows')::INTEGER, 20)
)
SELECT
  CASE WHEN se.type = 'wep' THEN se.namespace || '/' || se.name
       WHEN se.id IS NOT NULL THEN se.type || ':' || coalesce(se.namespace || '/', '') || se.name END AS src,
  d.src_ip,
  CASE WHEN de.type = 'wep' THEN de.namespace || '/' || de.name
       WHEN de.id IS NOT NULL THEN de.type || ':' || coalesce(de.namespace || '/', '') || de.name END AS dst,
  d.dst_ip,
  CASE d.proto WHEN 6 THEN 'tcp' WHEN 17 THEN 'udp' WHEN 1 THEN 'icmp' WHEN 58 THEN 'icmpv6' WHEN 132 THEN 'sctp'
               ELSE d.proto::VARCHAR END AS proto,
  d.dport, coalesce(r.policy, 'unknown rule ' || d.rule_id::VARCHAR) AS policy, s.node,
  d.packets, d.flows, d.first_seen, d.last_seen
FROM denied d
LEFT JOIN sources s ON s.source_id = d.source_id
LEFT JOIN rules r ON r.id = d.rule_id
LEFT JOIN endpoints se ON se.id = d.src_ep
LEFT JOIN endpoints de ON de.id = d.dst_ep
ORDER BY d.packets DESC, d.last_seen DESC, d.src_ip, d.dst_ip, d.dport
LIMIT coalesce(getvariable('rows')::INTEGER, 20);
