WITH win AS (SELECT * FROM query_window),
implicit AS (
  SELECT id, kind, tier, trigger_kind, namespace, name, direction, policy FROM rules
  WHERE action = 'Deny' AND kind IN ('EndOfTier', 'NoProfileMatch', 'Default')
),
d AS (
  SELECT f.rule_id, CASE WHEN i.direction = 'egress' THEN f.src_ip ELSE f.dst_ip END AS endpoint_ip,
         any_value(CASE WHEN i.direction = 'egress' THEN f.src_ep ELSE f.dst_ep END) AS ep,
         count(DISTINCT (f.start_time, f.proto, f.src_ip, f.dst_ip, f.sport, f.dport)) AS flows, sum(f.packets) AS packets,
         arg_min(CASE f.proto WHEN 6 THEN 'tcp' WHEN 17 THEN 'udp' WHEN 1 THEN 'icmp' WHEN 58 THEN 'icmpv6'
                              WHEN 132 THEN 'sctp' ELSE f.proto::VARCHAR END
                 || ' ' || f.src_ip || coalesce(':' || f.sport::VARCHAR, '')
                 || ' -> ' || f.dst_ip || coalesce(':' || f.dport::VARCHAR, ''),
                 (f.first_seen, CASE f.proto WHEN 6 THEN 'tcp' WHEN 17 THEN 'udp' WHEN 1 THEN 'icmp'
                                  WHEN 58 THEN 'icmpv6' WHEN 132 THEN 'sctp' ELSE f.proto::VARCHAR END
                  || ' ' || f.src_ip || coalesce(':' || f.sport::VARCHAR, '')
                  || ' -> ' || f.dst_ip || coalesce(':' || f.dport::VARCHAR, ''))) AS example,
         min(f.first_seen) AS first_seen, max(f.last_seen) AS last_seen
  FROM flows f
  JOIN implicit i ON i.id = f.rule_id
  CROSS JOIN win
  WHERE f.action = 'Deny' AND f.start_time >= win.since_ AND f.start_time < win.until_
  GROUP BY f.rule_id, endpoint_ip
)
SELECT i.kind, i.tier, i.trigger_kind,
       CASE WHEN i.kind = 'EndOfTier' THEN coalesce(i.namespace || '/', '') || i.name END AS trigger,
       i.direction,
       CASE WHEN e.type = 'wep' THEN e.namespace || '/' || e.name
            WHEN e.id IS NOT NULL THEN e.type || ':' || coalesce(e.namespace || '/', '') || e.name END AS endpoint,
       d.endpoint_ip, i.policy, d.flows, d.packets, d.example, d.first_seen, d.last_seen
FROM d
JOIN implicit i ON i.id = d.rule_id
LEFT JOIN endpoints e ON e.id = d.ep
WHERE getvariable('namespace') IS NULL OR e.namespace = getvariable('namespace')
ORDER BY d.packets DESC, d.flows DESC, i.kind, trigger, endpoint_ip
LIMIT coalesce(getvariable('rows')::INTEGER, 50);
