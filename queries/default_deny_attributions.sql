-- default_deny_attributions: flows denied by no rule in particular, and the policy that caused it.
--
-- Implicit denies, attributed the way Calico does: end of tier (a tier's policies selected the
-- endpoint but none of their rules matched: `trigger` is the policy that made the tier apply, the
-- last one selecting the endpoint), no profile match (no policy applied and no profile allowed),
-- and dataplane defaults that deny (e.g. an unknown interface). One row per decision point and
-- protected endpoint (the destination for ingress, the source for egress), with the flows
-- (distinct 5-tuples), packets, an example tuple, and first and last seen.
--
-- Parameters (DuckDB variables, all optional: SET VARIABLE name = 'value'):
--   since      window start: a time ('2026-03-14 12:00') or a duration back from now ('30m', '24h', '7d') (default: all recorded flows)
--   until      window end, exclusive; same forms as since (default: no end)
--   now        the time durations count back from (default: the end of the latest flow bucket)
--   namespace  only endpoints of this namespace (default: every endpoint)
--   rows       rows returned (default: 50)
--
-- Example:
--   flowtui query default_deny_attributions --param since=1h
--   duckdb -readonly flowtui.duckdb -c ".read queries/default_deny_attributions.sql"
--
-- Columns: kind, tier, trigger_kind, trigger, direction, endpoint, endpoint_ip, policy, flows, packets, example, first_seen, last_seen
WITH win AS (SELECT * FROM query_window),
implicit AS (
  SELECT id, kind, tier, trigger_kind, namespace, name, direction, policy FROM rules
  WHERE action = 'Deny' AND kind IN ('EndOfTier', 'NoProfileMatch', 'Default')
),
per_tuple AS (  -- per 5-tuple first: counting its rows then equals count(DISTINCT tuple), at a fraction of the cost
  SELECT f.rule_id, any_value(i.direction) AS direction, f.proto, f.src_ip, f.dst_ip, f.sport, f.dport,
         any_value(CASE WHEN i.direction = 'egress' THEN f.src_ep ELSE f.dst_ep END) AS ep,
         sum(f.packets) AS packets, min(f.first_seen) AS first_seen, max(f.last_seen) AS last_seen
  FROM flows f
  JOIN implicit i ON i.id = f.rule_id
  CROSS JOIN win
  WHERE f.action = 'Deny' AND f.start_time >= win.since_ AND f.start_time < win.until_
  GROUP BY f.rule_id, f.proto, f.src_ip, f.dst_ip, f.sport, f.dport
),
d AS (
  SELECT rule_id, CASE WHEN direction = 'egress' THEN src_ip ELSE dst_ip END AS endpoint_ip, any_value(ep) AS ep,
         count(*) AS flows, sum(packets) AS packets,
         arg_min(CASE proto WHEN 6 THEN 'tcp' WHEN 17 THEN 'udp' WHEN 1 THEN 'icmp' WHEN 58 THEN 'icmpv6'
                            WHEN 132 THEN 'sctp' ELSE proto::VARCHAR END
                 || ' ' || src_ip || coalesce(':' || sport::VARCHAR, '')
                 || ' -> ' || dst_ip || coalesce(':' || dport::VARCHAR, ''), first_seen) AS example,
         min(first_seen) AS first_seen, max(last_seen) AS last_seen
  FROM per_tuple
  GROUP BY rule_id, endpoint_ip
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
