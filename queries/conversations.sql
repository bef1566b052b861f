-- conversations: traffic per pair of endpoints, both directions, like a packet analyser's conversations.
--
-- One row per (source endpoint, destination endpoint): pods as `namespace/pod`, other endpoints as
-- `type:name` (hep, node, external, netset, net), unknown addresses as themselves. Flows are
-- counted once each (one 5-tuple in one time bucket, merged across the reporting nodes; denied if
-- either side denied it), with allowed connections opened, packets and bytes in the original and
-- reply directions (conntrack counts), and the protocols/ports used.
--
-- Parameters (DuckDB variables, all optional: SET VARIABLE name = 'value'):
--   since      window start: a time ('2026-03-14 12:00') or a duration back from now ('30m', '24h', '7d'); inside a day compacted by retention, that day's start (default: all recorded flows)
--   until      window end, exclusive; same forms as since; inside a compacted day, that day's end (default: no end)
--   now        the time durations count back from (default: the end of the latest flow bucket)
--   namespace  only conversations with this namespace on either side (default: every namespace)
--   rows       rows returned (default: 50)
--
-- Example:
--   flowtui query conversations --param namespace=production
--   duckdb -readonly flowtui.duckdb -c "SET VARIABLE namespace = 'production'" -c ".read queries/conversations.sql"
--
-- Columns: src, dst, flows, denied, connections, packets, bytes, reply_packets, reply_bytes, ports, first_seen, last_seen
WITH by_ids AS (  -- per endpoint id (or address, when unknown) and port first: names are joined to few rows
  SELECT src_ep, src_ip, dst_ep, dst_ip, proto, dport,
         sum(flows) AS flows, coalesce(sum(flows) FILTER (WHERE denied), 0) AS denied,
         sum(connections) AS connections, sum(packets) AS packets, sum(bytes) AS bytes,
         sum(reply_packets) AS reply_packets, sum(reply_bytes) AS reply_bytes,
         min(first_seen) AS first_seen, max(last_seen) AS last_seen
  FROM flow_pairs  -- flows_once (each flow once, both nodes merged) per pair and port: hourly rollups + raw flows
  GROUP BY ALL
),
named AS (
  SELECT b.*,
    coalesce(CASE WHEN se.type = 'wep' THEN se.namespace || '/' || se.name
                  WHEN se.id IS NOT NULL THEN se.type || ':' || coalesce(se.namespace || '/', '') || se.name END,
             b.src_ip) AS src,
    coalesce(CASE WHEN de.type = 'wep' THEN de.namespace || '/' || de.name
                  WHEN de.id IS NOT NULL THEN de.type || ':' || coalesce(de.namespace || '/', '') || de.name END,
             b.dst_ip) AS dst,
    se.namespace AS src_namespace, de.namespace AS dst_namespace,
    CASE b.proto WHEN 6 THEN 'tcp' WHEN 17 THEN 'udp' WHEN 1 THEN 'icmp' WHEN 58 THEN 'icmpv6' WHEN 132 THEN 'sctp'
                 ELSE b.proto::VARCHAR END || coalesce('/' || b.dport::VARCHAR, '') AS port
  FROM by_ids b
  LEFT JOIN endpoints se ON se.id = b.src_ep
  LEFT JOIN endpoints de ON de.id = b.dst_ep
)
SELECT src, dst, sum(flows) AS flows, sum(denied) AS denied, sum(connections) AS connections,
       sum(packets) AS packets, sum(bytes) AS bytes, sum(reply_packets) AS reply_packets,
       sum(reply_bytes) AS reply_bytes, list_sort(list(DISTINCT port))[1:10] AS ports,
       min(first_seen) AS first_seen, max(last_seen) AS last_seen
FROM named
WHERE getvariable('namespace') IS NULL OR getvariable('namespace') IN (src_namespace, dst_namespace)
GROUP BY src, dst
ORDER BY sum(packets) + sum(reply_packets) DESC, flows DESC, src, dst
LIMIT coalesce(getvariable('rows')::INTEGER, 50);
