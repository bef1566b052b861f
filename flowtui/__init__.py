"""flowtui: the collector, the flow store, the CLI and the terminal dashboard."""
