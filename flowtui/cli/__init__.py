"""The `flowtui` command line."""

from flowtui.cli.main import main

__all__ = ["main"]
