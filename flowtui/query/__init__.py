"""The query library: named SQL files (`queries/*.sql`) over the flow store. Headless.

- `library`: find the files, parse their header comments (what each answers, its parameters with
  defaults, an example, the columns it returns).
- `run`: open a store (DuckDB file or its snapshot, a Parquet export, `sample-logs/`), set the
  parameters as DuckDB variables and execute a file exactly as `duckdb -c ".read FILE"` would.
- `output`: results as an aligned table, CSV, JSON or Parquet.
"""
