-- loss_report: events lost, by cause and by reader (node), next to what was received.
--
-- Every event the kernel logged is either stored or counted as lost, by cause: kernel_ratelimit
-- (an nft `limit` before `log`, from rule counters), rcvbuf_overrun (socket buffer full: sequence
-- gaps), writer_backlog (received but dropped while the writer was behind), malformed, store_error,
-- collector_down (logged while no collector stored them: in flight when a run died, or before the next
-- run started; booked on the run before the gap when the next one starts).
-- One row per run, reader and cause with its current (latest) count, the events that reader
-- received, and the loss ratio lost / (received + rate-limited + overrun + collector down). Process-wide causes
-- have node `(process)` and are compared with the whole run's received events.
--
-- Parameters (DuckDB variables, all optional: SET VARIABLE name = 'value'):
--   run        a run number, latest, or all (default: latest)
--
-- Example:
--   flowtui query loss_report --param run=all
--   duckdb -readonly flowtui.duckdb -c ".read queries/loss_report.sql"
--
-- Columns: run_id, node, netns, cause, lost, received, loss_ratio, detail, as_of
WITH sel AS (
  SELECT l.* FROM loss_latest l
  WHERE coalesce(getvariable('run')::VARCHAR, 'latest') = 'all'
     OR l.run_id = CASE coalesce(getvariable('run')::VARCHAR, 'latest')
                     WHEN 'latest' THEN (SELECT max(run_id) FROM loss)
                     WHEN 'all' THEN NULL
                     ELSE getvariable('run')::VARCHAR::INTEGER END
),
received AS (
  SELECT run_id, source_id, sum(value) AS received FROM stats_latest WHERE name = 'received' GROUP BY run_id, source_id
),
run_received AS (
  SELECT run_id, sum(received) AS received FROM received GROUP BY run_id
),
offered_loss AS (  -- losses before the reader: they add to what was offered
  SELECT run_id, source_id, sum(events) AS lost FROM sel
  WHERE cause IN ('kernel_ratelimit', 'rcvbuf_overrun', 'collector_down') GROUP BY run_id, source_id
),
run_offered_loss AS (
  SELECT run_id, sum(lost) AS lost FROM offered_loss GROUP BY run_id
)
SELECT l.run_id, CASE WHEN l.source_id IS NULL THEN '(process)' ELSE s.node END AS node, s.netns, l.cause,
       l.events AS lost,
       CASE WHEN l.source_id IS NULL THEN rr.received ELSE coalesce(r.received, 0) END AS received,
       round(l.events / nullif(CASE WHEN l.source_id IS NULL THEN coalesce(rr.received, 0) + coalesce(ro.lost, 0)
                                    ELSE coalesce(r.received, 0) + coalesce(o.lost, 0) END, 0), 6) AS loss_ratio,
       l.detail, l.time AS as_of
FROM sel l
LEFT JOIN sources s ON s.source_id = l.source_id
LEFT JOIN received r ON r.run_id = l.run_id AND r.source_id = l.source_id
LEFT JOIN run_received rr ON rr.run_id = l.run_id
LEFT JOIN offered_loss o ON o.run_id = l.run_id AND o.source_id IS NOT DISTINCT FROM l.source_id
LEFT JOIN run_offered_loss ro ON ro.run_id = l.run_id
ORDER BY l.run_id DESC, l.source_id NULLS FIRST,
         list_position(['kernel_ratelimit', 'rcvbuf_overrun', 'writer_backlog', 'malformed', 'store_error',
                        'collector_down'], l.cause),
         l.cause;
