-- new_talkers: who started talking to whom in the last N minutes, never seen before.
--
-- Pairs of (source address, destination address, protocol, destination port) whose first flow
-- in the whole store is within the last `minutes` before `now`, whatever the verdict: a new
-- client of a service, a pod calling somewhere it never did, a scanner. With the endpoints, the
-- verdicts the pair got, its flows (distinct source ports), packets, and first and last time seen.
--
-- Parameters (DuckDB variables, all optional: SET VARIABLE name = 'value'):
--   minutes    how far back "new" goes, in minutes (default: 15)
--   now        the end of that period: a time (default: the end of the latest flow bucket)
--   namespace  only pairs with this namespace on either side (default: every namespace)
--   rows       rows returned (default: 100)
--
-- Example:
--   flowtui query new_talkers --param minutes=5
--   duckdb -readonly flowtui.duckdb -c "SET VARIABLE minutes = 5" -c ".read queries/new_talkers.sql"
--
-- Columns: first_seen, src, src_ip, dst, dst_ip, proto, dport, actions, flows, packets, last_seen
WITH p AS MATERIALIZED (
  SELECT now_, now_ - coalesce(getvariable('minutes')::DOUBLE, 15) * INTERVAL 1 minute AS new_since
  FROM (SELECT coalesce(try_cast(getvariable('now')::VARCHAR AS TIMESTAMP),
                        CASE WHEN getvariable('now') IS NOT NULL
                             THEN error('now: not a time: ' || getvariable('now')::VARCHAR) END::TIMESTAMP,
                        (SELECT max(end_time) FROM flows),
                        current_timestamp AT TIME ZONE 'UTC') AS now_)
),
fresh AS (  -- first seen per talker, kept by the store (`talkers` rollup + the raw flows after it)
  SELECT t.src_ip, t.dst_ip, t.proto, t.dport FROM talkers_seen t, p
  WHERE t.first_seen >= p.new_since AND t.first_seen <= p.now_
),
recent AS MATERIALIZED (  -- no flow of a new talker starts before new_since: only the last minutes are read
  SELECT f.src_ip, f.dst_ip, f.proto, f.dport, f.sport, f.action, f.packets, f.src_ep, f.dst_ep,
         coalesce(f.first_seen, f.start_time) AS first_seen, coalesce(f.last_seen, f.end_time) AS last_seen
  FROM flows f
  WHERE f.action IN ('Allow', 'Deny') AND coalesce(f.first_seen, f.start_time) <= (SELECT now_ FROM p)
    AND (f.first_seen >= (SELECT new_since FROM p)  -- scalars, so the time-ordered scan prunes
         OR f.first_seen IS NULL AND f.start_time >= (SELECT new_since FROM p))
),
pairs AS (
  SELECT f.src_ip, f.dst_ip, f.proto, f.dport, min(f.first_seen) AS first_seen, max(f.last_seen) AS last_seen,
         list_sort(list(DISTINCT f.action)) AS actions, count(DISTINCT coalesce(f.sport, -1)) AS flows,
         sum(f.packets) AS packets, any_value(f.src_ep) AS src_ep, any_value(f.dst_ep) AS dst_ep
  FROM recent f
  SEMI JOIN fresh n ON n.src_ip = f.src_ip AND n.dst_ip = f.dst_ip AND n.proto IS NOT DISTINCT FROM f.proto
                   AND n.dport IS NOT DISTINCT FROM f.dport
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
