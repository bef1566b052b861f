"""What-if: replay recorded flows against edited policy, fast; propose policy from flows.

Headless (never imports Textual). The stages, in order of dependency:

* `frames`     the flow-frame contract and readers: Parquet, Hubble JSON; `storeread` (the DuckDB
               flow store) and `pcap` (packet captures, scapy) feed the same shape;
* `edits`      the current policy set (datastore or files), edits merged over it, deletions, and
               what changed between two sets;
* `classes`    equivalence classes of addresses and ports: flows the evaluator cannot tell apart;
* `keys`       rows -> keys, vectorised: dictionary-encoded addresses, class lookups, packed keys;
* `sharing`    two cluster states / evaluators that share what an edit cannot change;
* `engine`     one real `Evaluator.decide` per key, joined back: decisions per row
               (`decide_frame`) or for two sets, only where an edit can matter (`compare`);
* `report`     newly denied / newly allowed / changed attribution / pending, grouped, as JSON or
               a table;
* `propose`    least-privilege NetworkPolicies from observed allowed flows;
* `progress`   progress bars (rich) for the CLI.

    from flowtui.whatif.engine import compare
    from flowtui.whatif.report import build_report, render_table

    report = build_report(compare(frame, current, edited))
    print(render_table(report))
"""
