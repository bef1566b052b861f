WITH win AS (
  SELECT now_,
    coalesce(try_cast(getvariable('since')::VARCHAR AS TIMESTAMP),
             now_ - try_cast(getvariable('since')::VARCHAR AS INTERVAL),
             CASE WHEN getvariable('since') IS NULL THEN TIMESTAMP '-infinity'
                  ELSE error('since: not a time or a duration: ' || getvariable('since')::VARCHAR) END::TIMESTAMP) AS since_
  FROM (SELECT coalesce(try_cast(getvariable('now')::VARCHAR AS TIMESTAMP),
                        CASE WHEN getvariable('now') IS NOT NULL
                             THEN error('now: not a time: ' || getvariable('now')::VARCHAR) END::TIMESTAMP,
                        (SELECT max(end_time) FROM flows),
                        current_timestamp AT TIME ZONE 'UTC') AS now_)
),
current_rules AS (
  SELECT r.* FROM rules r
  JOIN (SELECT kind, namespace, name, max(revision) AS revision FROM rules
        WHERE kind NOT IN ('Profile', 'EndOfTier', 'NoProfileMatch', 'Default', 'Failsafe')
        GROUP BY kind, namespace, name) l
    ON l.kind = r.kind AND l.namespace IS NOT DISTINCT FROM r.namespace AND l.name = r.name AND l.revision = r.revision
),
counter_steps AS (  -- a reading above the previous one (same run, reader and nft rule) means hits up to that reading
  SELECT rule_id, time, coalesce(run_packets, packets) AS n,
         lag(coalesce(run_packets, packets)) OVER (PARTITION BY run_id, source_id, nft_rule ORDER BY time) AS before
  FROM rule_counters
),
seen AS (
  SELECT rule_id, max(t) AS last_hit FROM (
    SELECT rule_id, max(last_seen) AS t FROM flows WHERE events > 0 OR packets > 0 GROUP BY rule_id
    UNION ALL SELECT rule_id, max(time) FROM events GROUP BY rule_id
    UNION ALL SELECT rule_id, max(time) FROM counter_steps WHERE n > coalesce(before, 0) GROUP BY rule_id
  ) WHERE rule_id IS NOT NULL GROUP BY rule_id
),
by_rule AS (  -- the same rule across revisions
  SELECT r.kind, r.namespace, r.name, r.direction, r.rule, max(s.last_hit) AS last_hit
  FROM rules r JOIN seen s ON s.rule_id = r.id
  GROUP BY r.kind, r.namespace, r.name, r.direction, r.rule
),
revisions AS (
  SELECT kind, namespace, name, revision, min(first_seen) AS first_seen FROM rules GROUP BY kind, namespace, name, revision
)
SELECT c.tier, c.kind, c.namespace, c.name, c.revision, c.direction, c.rule, c.action, c.policy, c.id AS rule_id,
       v.first_seen AS revision_first_seen, s.last_hit, b.last_hit AS last_hit_any_revision
FROM current_rules c
CROSS JOIN win
LEFT JOIN seen s ON s.rule_id = c.id
LEFT JOIN by_rule b ON b.kind = c.kind AND b.namespace IS NOT DISTINCT FROM c.namespace AND b.name = c.name
                   AND b.direction = c.direction AND b.rule = c.rule
LEFT JOIN revisions v ON v.kind = c.kind AND v.namespace IS NOT DISTINCT FROM c.namespace AND v.name = c.name
                     AND v.revision = c.revision
WHERE (s.last_hit IS NULL OR s.last_hit < win.since_)
  AND (getvariable('policy') IS NULL OR c.name LIKE getvariable('policy'))
  AND (getvariable('namespace') IS NULL OR c.namespace = getvariable('namespace'))
ORDER BY c.tier NULLS LAST, c.kind, c.namespace NULLS FIRST, c.name, c.direction, c.rule;
