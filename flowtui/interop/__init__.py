"""Foreign formats, one home: flows out of the store and into it.

- `parquet`: the store's tables as Parquet, hive-partitioned by day and node (readable by any
  engine), and the reverse: a directory of such files (or one `<table>.parquet` per table, like
  `sample-logs/`) attached to DuckDB as the store's tables and views.
- `jsonl`: flow records with names joined in, one JSON object per line.
- `hubble`: flow rows <-> `hubble observe -o json` flow objects, both directions
  (`flowtui import hubble` brings Cilium users' flows into a store).
- `calico`: Whisker / Goldmane flow records (Calico v3.30+ flow logs) out of the store;
  `calico_logs`: Calico's flow logs (Enterprise flows.log, Goldmane, whisker) in.
- `observed`: what every import parses into, and the one writer that stores it; `imports`: what
  a file is (by content) and its import, keyed by content.

Everything here reads through a DuckDB connection that has the store's tables and views
(`flowtui.query.run.open_source`), so it works the same on a live store's snapshot, a store file
and a Parquet export. Headless: no UI imports.
"""
