"""`flowtui demo`: the article's scenarios, decided and explained."""

from __future__ import annotations

import click

from flowtui.cli.common import scenario_dir
from flowtui.demo.evaluate_only import decide_probes, render


@click.command()
def demo() -> None:
    """Decide representative flows of the Calico article's five scenarios and explain them.

    Loads the shipped scenarios (two namespaces with frontend and transaction tiers, a favorite
    worker node protected by a host endpoint policy, a DoS deny list) and shows, for each flow,
    the verdict and the exact policy and rule behind it.
    """
    path = scenario_dir()
    click.echo(f"Scenarios: {path}\n")
    click.echo(render(decide_probes(path)))
