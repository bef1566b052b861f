"""Foreign formats, one home: flows out of the store and into it.

- `parquet`: the store's tables as Parquet, hive-partitioned by day and node (readable by any
  engine), and the reverse: a directory of such files (or one `<table>.parquet` per table, like
  `sample-logs/`) attached to DuckDB as the store's tables and views.
- `jsonl`: flow records with names joined in, one JSON object per line.
- `hubble`: flow rows <-> `hubble observe -o json` flow objects, both directions
  (`flowtui import hubble` brings Cilium users' flows into a store).
- `calico`: Whisker / Goldmane flow records (Calico v3.30+ flow logs).

Everything here reads through a DuckDB connection that has the store's tables and views
(`flowtui.query.run.open_source`), so it works the same on a live store's snapshot, a store file
and a Parquet export. Headless: no UI imports.
"""
