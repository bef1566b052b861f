"""`flowtui`: one group; each family of commands lives in its own module."""

from __future__ import annotations

import click

from flowtui.cli.agent import agent_cmd
from flowtui.cli.collect import collect_cmd, status_cmd
from flowtui.cli.datastore import datastore_group
from flowtui.cli.demo import demo
from flowtui.cli.export import export_cmd
from flowtui.cli.imports import import_calico_cmd  # noqa: F401  (adds `import hubble|calico` to the group)
from flowtui.cli.lab import lab
from flowtui.cli.policy import check, eval_cmd
from flowtui.cli.query import query_cmd
from flowtui.cli.state import apply, delete, get, policy_group
from flowtui.cli.tui import tui
from flowtui.cli.whatif import import_group, propose, whatif


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="flowtui")
def cli() -> None:
    """flowtui: Calico network policy enforced with nftables, and made visible.

    Validate and evaluate Calico and Kubernetes policy exactly as Calico does, enforce it with
    nftables in a lab of network namespaces, collect every verdict into a flow store, and watch,
    query and what-if it from the terminal. Run `flowtui demo` to see it all on the article's
    five scenarios.
    """


for command in (
    check, eval_cmd, demo,  # policy: validate, decide, explain
    apply, delete, get, policy_group, lab, datastore_group, agent_cmd,  # enforcement, the lab, the datastore
    collect_cmd, status_cmd, query_cmd, export_cmd,  # the flow store
    whatif, propose, import_group,  # what-if
    tui,  # the dashboard
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="flowtui")
