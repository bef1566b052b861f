WITH p AS (
  SELECT now_, now_ - coalesce(getvariable('minutes')::DOUBLE, 15) * INTERVAL 1 minute AS new_since
  FROM (SELECT coalesce(try_cast(getvariable('now')::VARCHAR AS TIMESTAMP),
                        CASE WHEN getvariable('now') IS NOT NULL
                             THEN error('now: not a time: ' || getvariable('now')::VARCHAR) END::TIMESTAMP,
                        (SELECT max(end_time) FROM flows),
                        current_timestamp AT TIME ZONE 'UTC') AS now_)
),
pairs AS (
  SELECT f.src_ip, f.dst_ip, f.proto, f.dport,
         min(coalesce(f.first_seen, f.start_time)) AS first_seen, max(coalesce(f.last_seen, f.end_time)) AS last_seen,
         list_sort(list(DISTINCT f.action)) AS actions, count(DISTINCT coalesce(f.sport, -1)) AS flows,
         sum(f.packets) AS packets, any_value(f.src_ep) AS src_ep, any_value(f.dst_ep) AS dst_ep
  FROM flows f, p
  WHERE f.action IN ('Allow', 'Deny') AND coalesce(f.first_seen, f.start_time) <= p.now_
  GROUP BY f.src_ip, f.dst_ip, f.proto, f.dport
)
SELECT t.first_seen,
  CASE WHEN se.type = 'wep' THEN se.namespace || '/' || se.name
       WHEN se.id IS NOT NULL THEN se.type || ':' || coalesce(se.namespace || '/', '') || se.name END AS src,
  t.src_ip,
  CASE WHEN de.type = 'wep' THEN de.namespace || '/' || de.name
       WHEN de.id IS NOT NULL THEN de.type || ':' || coalesce(de.namespace || '/', '') || de.name END AS dst,
  t.dst_ip,
  CASE t.proto WHEN 6 THEN 'tcp' WHEN 17 THEN 'udp' WHEN 1 THEN 'icmp' WHEN 58 THEN 'icmpv6' WHEN 132 THEN 'sctp'
               ELSE t.proto::VARCHAR END AS proto,
  t.dport, t.actions, t.flows, t.packets, t.last_seen
FROM pairs t
CROSS JOIN p
LEFT JOIN endpoints se ON se.id = t.src_ep
LEFT JOIN endpoints de ON de.id = t.dst_ep
WHERE t.first_seen >= p.new_since
  AND (getvariable('namespace') IS NULL OR getvariable('namespace') IN (se.namespace, de.namespace))
ORDER BY t.first_seen DESC, t.src_ip, t.dst_ip, t.dport
LIMIT coalesce(getvariable('rows')::INTEGER, 100);
