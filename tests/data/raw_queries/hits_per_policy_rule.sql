WITH win AS (SELECT * FROM query_window),
hits AS (
  SELECT f.rule_id, sum(f.events) AS logged, sum(f.packets) AS packets,
         min(f.first_seen) AS first_hit, max(f.last_seen) AS last_hit
  FROM flows f, win
  WHERE f.rule_id IS NOT NULL AND f.start_time >= win.since_ AND f.start_time < win.until_
  GROUP BY f.rule_id
),
counters AS (  -- counters are cumulative per run: the window's count is the reading before until minus the one before since
  SELECT rule_id, sum(in_window) AS counted, bool_or(rate_limited) AS rate_limited
  FROM (
    SELECT arg_max(c.rule_id, c.time) AS rule_id, bool_or(c.rate_limited) AS rate_limited,
           coalesce(max(coalesce(c.run_packets, c.packets)) FILTER (WHERE c.time < win.until_), 0)
           - coalesce(max(coalesce(c.run_packets, c.packets)) FILTER (WHERE c.time < win.since_), 0) AS in_window
    FROM rule_counters c, win
    GROUP BY c.run_id, c.source_id, c.nft_rule
  )
  GROUP BY rule_id
),
latest AS (
  SELECT kind, namespace, name, max(revision) AS revision FROM rules GROUP BY kind, namespace, name
)
SELECT r.tier, r.kind, r.namespace, r.name, r.revision, r.direction, r.rule, r.action, r.policy, r.id AS rule_id,
       coalesce(h.logged, 0) AS logged, coalesce(h.packets, 0) AS packets, c.counted, c.rate_limited,
       h.first_hit, h.last_hit
FROM rules r
LEFT JOIN hits h ON h.rule_id = r.id
LEFT JOIN counters c ON c.rule_id = r.id
LEFT JOIN latest l ON l.kind = r.kind AND l.namespace IS NOT DISTINCT FROM r.namespace AND l.name = r.name
                  AND l.revision = r.revision
WHERE (h.rule_id IS NOT NULL OR c.counted > 0 OR l.revision IS NOT NULL)
  AND (getvariable('policy') IS NULL OR r.name LIKE getvariable('policy'))
  AND (getvariable('namespace') IS NULL OR r.namespace = getvariable('namespace'))
ORDER BY r.tier NULLS LAST, r.kind, r.namespace NULLS FIRST, r.name, r.revision, r.direction, r.rule, r.id;
