-- default_deny_attributions: flows denied by no rule in particular, and the policy that caused it.
--
-- Implicit denies, attributed the way Calico does: end of tier (a tier's policies selected the
-- endpoint but none of their rules matched: `trigger` is the policy that made the tier apply, the
-- last one selecting the endpoint), no profile match (no policy applied and no profile allowed),
-- and dataplane defaults that deny (e.g. an unknown interface). One row per decision point and
-- protected endpoint (the destination for ingress, the source for egress), with the flows
-- (5-tuples per time bucket, counted as `conversations` counts them: a tuple seen in two buckets is
-- two flows, so rollups add up exactly), packets, an example tuple (the one seen first; ties: the
-- smallest text), and first and last seen.
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
WITH implicit AS (
  SELECT id, kind, tier, trigger_kind, namespace, name, direction, policy FROM rules
  WHERE action = 'Deny' AND kind IN ('EndOfTier', 'NoProfileMatch', 'Default')
),
d AS (  -- one row per rule and endpoint address: whole-store totals, or hourly rollups and raw flows merged
  SELECT rule_id, endpoint_ip, ep, flows, packets, example, first_seen, last_seen FROM implicit_denies
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
