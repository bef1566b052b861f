"""`flowtui`: one group; each family of commands lives in its own module."""

from __future__ import annotations

import click

from flowtui.cli.demo import demo
from flowtui.cli.lab import lab
from flowtui.cli.policy import check, eval_cmd
from flowtui.cli.state import apply, delete, get, policy_group


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="flowtui")
def cli() -> None:
    """flowtui: Calico network policy enforced with nftables, and made visible.

    Validate and evaluate Calico and Kubernetes policy exactly as Calico does, and explain every
    verdict. Run `flowtui demo` to see it on the article's five scenarios.
    """


cli.add_command(check)
cli.add_command(eval_cmd)
cli.add_command(demo)
cli.add_command(apply)
cli.add_command(delete)
cli.add_command(get)
cli.add_command(policy_group)
cli.add_command(lab)


def main() -> None:
    cli(prog_name="flowtui")
