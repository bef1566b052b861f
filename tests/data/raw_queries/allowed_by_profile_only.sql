WITH win AS (SELECT * FROM query_window),
uncovered AS (
  SELECT id, direction, name, kind FROM rules WHERE action = 'Allow' AND kind IN ('Profile', 'Default')
),
a AS (
  SELECT f.rule_id, f.src_ip, f.dst_ip, f.proto, f.dport, count(DISTINCT (f.start_time, coalesce(f.sport, -1))) AS flows,
         sum(f.connections_started) AS connections, sum(f.packets) AS packets, sum(f.bytes) AS bytes,
         min(f.first_seen) AS first_seen, max(f.last_seen) AS last_seen,
         any_value(f.src_ep) AS src_ep, any_value(f.dst_ep) AS dst_ep
  FROM flows f, win
  WHERE f.action = 'Allow' AND f.start_time >= win.since_ AND f.start_time < win.until_
    AND f.rule_id IN (SELECT id FROM uncovered)
  GROUP BY f.rule_id, f.src_ip, f.dst_ip, f.proto, f.dport
),
named AS (
  SELECT a.*, u.direction, CASE u.kind WHEN 'Profile' THEN u.name ELSE 'default: ' || u.name END AS profile,
    CASE WHEN se.type = 'wep' THEN se.namespace || '/' || se.name
         WHEN se.id IS NOT NULL THEN se.type || ':' || coalesce(se.namespace || '/', '') || se.name END AS src,
    CASE WHEN de.type = 'wep' THEN de.namespace || '/' || de.name
         WHEN de.id IS NOT NULL THEN de.type || ':' || coalesce(de.namespace || '/', '') || de.name END AS dst,
    CASE WHEN u.direction = 'egress' THEN se.namespace ELSE de.namespace END AS endpoint_namespace
  FROM a
  JOIN uncovered u ON u.id = a.rule_id
  LEFT JOIN endpoints se ON se.id = a.src_ep
  LEFT JOIN endpoints de ON de.id = a.dst_ep
)
SELECT CASE WHEN direction = 'egress' THEN coalesce(src, src_ip) ELSE coalesce(dst, dst_ip) END AS endpoint,
       direction, profile, src, src_ip, dst, dst_ip,
       CASE proto WHEN 6 THEN 'tcp' WHEN 17 THEN 'udp' WHEN 1 THEN 'icmp' WHEN 58 THEN 'icmpv6' WHEN 132 THEN 'sctp'
                  ELSE proto::VARCHAR END AS proto,
       dport, flows, connections, packets, bytes, first_seen, last_seen
FROM named
WHERE getvariable('namespace') IS NULL OR endpoint_namespace = getvariable('namespace')
ORDER BY connections DESC, flows DESC, endpoint, src_ip, dst_ip, dport
LIMIT coalesce(getvariable('rows')::INTEGER, 50);
