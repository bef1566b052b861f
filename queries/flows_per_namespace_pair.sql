-- flows_per_namespace_pair: who talks to whom, by namespace, allowed and denied.
--
-- Flows counted once each: a flow is one 5-tuple in one time bucket, merged across the nodes
-- that reported it (the source's egress and the destination's ingress decision), and denied if
-- either side denied it. Namespace `-` is everything outside a namespace (hosts, outside
-- addresses, global network sets). `connections` are allowed connections opened; packets and
-- bytes are in the original direction (conntrack counts for allowed flows, the dropped packets
-- for denied ones).
--
-- Parameters (DuckDB variables, all optional: SET VARIABLE name = 'value'):
--   since      window start: a time ('2026-03-14 12:00') or a duration back from now ('30m', '24h', '7d'); inside a day compacted by retention, that day's start (default: all recorded flows)
--   until      window end, exclusive; same forms as since; inside a compacted day, that day's end (default: no end)
--   now        the time durations count back from (default: the end of the latest flow bucket)
--   namespace  only pairs with this namespace on either side (default: every namespace)
--
-- Example:
--   flowtui query flows_per_namespace_pair --param since=24h -o csv
--   duckdb -readonly flowtui.duckdb -c ".read queries/flows_per_namespace_pair.sql"
--
-- Columns: src_namespace, dst_namespace, action, flows, connections, packets, bytes, src_endpoints, dst_endpoints, first_seen, last_seen
WITH by_ids AS (  -- per endpoint id (or address, when unknown) first: names are joined to few rows
  SELECT src_ep, src_ip, dst_ep, dst_ip, denied,
         sum(flows) AS flows, sum(connections) AS connections, sum(packets) AS packets, sum(bytes) AS bytes,
         min(first_seen) AS first_seen, max(last_seen) AS last_seen
  FROM flow_pairs  -- flows_once (each flow once, both nodes merged) per pair: hourly rollups + raw flows
  GROUP BY ALL
),
named AS (
  SELECT coalesce(se.namespace, '-') AS src_namespace, coalesce(de.namespace, '-') AS dst_namespace,
         CASE WHEN b.denied THEN 'Deny' ELSE 'Allow' END AS action,
         coalesce(se.type || ':' || se.name, b.src_ip) AS src, coalesce(de.type || ':' || de.name, b.dst_ip) AS dst,
         b.flows, b.connections, b.packets, b.bytes, b.first_seen, b.last_seen, se.namespace AS sns, de.namespace AS dns
  FROM by_ids b
  LEFT JOIN endpoints se ON se.id = b.src_ep
  LEFT JOIN endpoints de ON de.id = b.dst_ep
)
SELECT src_namespace, dst_namespace, action, sum(flows) AS flows, sum(connections) AS connections,
       sum(packets) AS packets, sum(bytes) AS bytes, count(DISTINCT src) AS src_endpoints,
       count(DISTINCT dst) AS dst_endpoints, min(first_seen) AS first_seen, max(last_seen) AS last_seen
FROM named
WHERE getvariable('namespace') IS NULL OR getvariable('namespace') IN (sns, dns)
GROUP BY src_namespace, dst_namespace, action
ORDER BY flows DESC, src_namespace, dst_namespace, action;
