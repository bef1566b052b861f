WITH win AS (SELECT * FROM query_window),
denied AS (
  SELECT f.source_id, f.rule_id, f.src_ip, f.dst_ip, f.proto, f.dport,
         any_value(f.src_ep) AS src_ep, any_value(f.dst_ep) AS dst_ep,
         sum(f.packets) AS packets, count(DISTINCT coalesce(f.sport, -1)) AS flows,
         min(f.first_seen) AS first_seen, max(f.last_seen) AS last_seen
  FROM flows f, win
  WHERE f.action = 'Deny' AND f.start_time >= win.since_ AND f.start_time < win.until_
  GROUP BY f.source_id, f.rule_id, f.src_ip, f.dst_ip, f.proto, f.dport
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
WHERE getvariable('namespace') IS NULL OR getvariable('namespace') IN (se.namespace, de.namespace)
ORDER BY d.packets DESC, d.last_seen DESC, d.src_ip, d.dst_ip, d.dport
LIMIT coalesce(getvariable('rows')::INTEGER, 20);
