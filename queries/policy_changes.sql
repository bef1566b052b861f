-- policy_changes: every revision of every policy, the rule ids it got, and how much each was hit.
--
-- The rule table records one identifier per rule of each policy revision (identifiers are never
-- reused), so each revision is listed with when the collector first saw it, when a newer
-- revision replaced it (`superseded_at`, NULL for the current one), its rules by direction, the
-- actions they take, its rule ids, and the NFLOG events attributed to those ids (`hits`) with the
-- last one: which revision was in force when a flow was decided, and whether a change took effect.
--
-- Parameters (DuckDB variables, all optional: SET VARIABLE name = 'value'):
--   policy     only policies whose name matches this LIKE pattern (default: every policy)
--   namespace  only policies of this namespace (default: global and namespaced)
--   since      only revisions first seen since: a time or a duration back from now (default: every revision)
--   now        the time durations count back from (default: the end of the latest flow bucket)
--
-- Example:
--   flowtui query policy_changes --param policy=log-and-deny-frontend
--   duckdb -readonly flowtui.duckdb -c "SET VARIABLE policy = 'deny-%'" -c ".read queries/policy_changes.sql"
--
-- Columns: tier, kind, namespace, name, revision, first_seen, superseded_at, rules, ingress_rules, egress_rules, actions, rule_ids, hits, last_hit
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
hits AS (
  SELECT rule_id, sum(events) AS hits, max(last_seen) AS last_hit FROM flows GROUP BY rule_id
),
revs AS (
  SELECT r.tier, r.kind, r.namespace, r.name, r.revision, min(r.first_seen) AS first_seen, count(*) AS rules,
         count(*) FILTER (WHERE r.direction = 'ingress') AS ingress_rules,
         count(*) FILTER (WHERE r.direction = 'egress') AS egress_rules,
         list_sort(list(DISTINCT r.action)) AS actions, list_sort(list(r.id)) AS rule_ids,
         coalesce(sum(h.hits), 0) AS hits, max(h.last_hit) AS last_hit
  FROM rules r LEFT JOIN hits h ON h.rule_id = r.id
  WHERE r.kind NOT IN ('EndOfTier', 'NoProfileMatch', 'Default', 'Failsafe')
  GROUP BY r.tier, r.kind, r.namespace, r.name, r.revision
),
ordered AS (
  SELECT *, lead(first_seen) OVER (PARTITION BY kind, namespace, name ORDER BY revision) AS superseded_at FROM revs
)
SELECT o.tier, o.kind, o.namespace, o.name, o.revision, o.first_seen, o.superseded_at, o.rules, o.ingress_rules,
       o.egress_rules, o.actions, o.rule_ids, o.hits, o.last_hit
FROM ordered o, win
WHERE o.first_seen >= win.since_
  AND (getvariable('policy') IS NULL OR o.name LIKE getvariable('policy'))
  AND (getvariable('namespace') IS NULL OR o.namespace = getvariable('namespace'))
ORDER BY o.tier NULLS LAST, o.kind, o.namespace NULLS FIRST, o.name, o.revision;
