-- hits_per_policy_rule: how often each policy rule decided, logged and counted.
--
-- One row per rule identifier (one rule of one policy revision, or an end-of-tier, profile or
-- default decision point): the NFLOG events it logged and the packets of its flows in the window
-- (`logged`, `packets`: conntrack counts for Allow, one per logged packet otherwise), the packets
-- its nftables counter matched in the window (`counted`: exact even when logging is rate-limited;
-- NULL when no counter was read), and its first and last logged hit. Lists every rule of the
-- latest revision of each policy (zero hits included) and any older rule that was hit.
--
-- Parameters (DuckDB variables, all optional: SET VARIABLE name = 'value'):
--   since      window start: a time ('2026-03-14 12:00') or a duration back from now ('30m', '24h', '7d'); inside a day compacted by retention, that day's start (default: all recorded flows)
--   until      window end, exclusive; same forms as since; inside a compacted day, that day's end (default: no end)
--   now        the time durations count back from (default: the end of the latest flow bucket)
--   policy     only policies whose name matches this LIKE pattern, e.g. 'deny-%' (default: every policy)
--   namespace  only policies of this namespace (default: global and namespaced)
--
-- Example:
--   flowtui query hits_per_policy_rule --param policy='%frontend%'
--   duckdb -readonly flowtui.duckdb -c "SET VARIABLE since = '24h'" -c ".read queries/hits_per_policy_rule.sql"
--
-- Columns: tier, kind, namespace, name, revision, direction, rule, action, policy, rule_id, logged, packets, counted, rate_limited, first_hit, last_hit
WITH win AS (SELECT * FROM query_window),
hits AS (  -- per rule in the window: hourly rollup + raw flows
  SELECT rule_id, events AS logged, packets, first_seen AS first_hit, last_seen AS last_hit FROM rule_hits
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
