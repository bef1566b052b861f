-- allowed_by_profile_only: traffic that no policy covers, allowed only by a profile or a default.
--
-- Candidates for policy: allowed flows whose deciding rule is a profile (Calico's per-namespace
-- `kns.<namespace>` or the default-allow profile: no policy selected the endpoint in that
-- direction) or a dataplane default that accepts (e.g. DefaultEndpointToHostAction=Accept).
-- Failsafe ports are left out: they bypass policy on purpose. `endpoint` is the endpoint left
-- uncovered (the destination for ingress, the source for egress); one row per endpoint,
-- direction, deciding profile, source, destination, protocol and port. `flows` counts source ports
-- per time bucket (a flow is a 5-tuple in a time bucket, as `conversations` counts them), so the
-- hourly rollups add up exactly.
--
-- Parameters (DuckDB variables, all optional: SET VARIABLE name = 'value'):
--   since      window start: a time ('2026-03-14 12:00') or a duration back from now ('30m', '24h', '7d') (default: all recorded flows)
--   until      window end, exclusive; same forms as since (default: no end)
--   now        the time durations count back from (default: the end of the latest flow bucket)
--   namespace  only uncovered endpoints of this namespace (default: every namespace)
--   rows       rows returned (default: 50)
--
-- Example:
--   flowtui query allowed_by_profile_only --param namespace=staging
--   duckdb -readonly flowtui.duckdb -c "SET VARIABLE namespace = 'staging'" -c ".read queries/allowed_by_profile_only.sql"
--
-- Columns: endpoint, direction, profile, src, src_ip, dst, dst_ip, proto, dport, flows, connections, packets, bytes, first_seen, last_seen
WITH uncovered AS (
  SELECT id, direction, name, kind FROM rules WHERE action = 'Allow' AND kind IN ('Profile', 'Default')
),
a AS (  -- one row per rule, source, destination, protocol and port: whole-store totals, or hourly rollups
  SELECT rule_id, src_ip, dst_ip, proto, dport, flows, connections, packets, bytes, first_seen, last_seen,
         src_ep, dst_ep
  FROM profile_allows  -- and raw flows merged
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
