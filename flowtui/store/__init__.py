"""The flow store: DuckDB with a documented schema (`schema`), one batched writer and
read-only snapshots for concurrent readers (`duckdb_store`). Headless: never imports the UI."""
