"""ClusterNetworkPolicies in the dashboard's policies screen: Calico's kube-admin tier first,
kube-baseline after the default tier, each policy under its short kind (kcnp)."""

from __future__ import annotations

from pathlib import Path

from flowtui.cli.common import scenario_dir
from flowtui.tui.control import PolicyControl
from flowtui.tui.screens.policies import PoliciesScreen
from tests.test_tui_app import SIZE, app_for, recording, sync, until

FIXTURE = Path(__file__).parent / "fixtures" / "good" / "cnp-article.yaml"
__all__ = ["recording"]  # the module fixture, shared


@sync
async def test_policies_screen_shows_cluster_network_policy_tiers(recording: Path) -> None:
    control = PolicyControl(files=[str(scenario_dir()), str(FIXTURE)], read_only=True, why_read_only="a recording")
    app, seen = app_for(recording, control)
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await pilot.press("3")
        screen = app.screen
        assert isinstance(screen, PoliciesScreen)
        await until(pilot, lambda: screen.lines)
        names = [ln.text for ln in screen.shown]
        admin, default, baseline = (names.index(f"tier {t}") for t in ("kube-admin", "default", "kube-baseline"))
        assert admin < names.index("kcnp staging-stays-out-of-production") < default < baseline
        assert baseline < names.index("kcnp no-egress-to-documentation-nets")
        tier_orders = {ln.text: ln.order for ln in screen.lines if ln.level == "tier"}
        assert (tier_orders["tier kube-admin"], tier_orders["tier kube-baseline"]) == ("1000", "10000000")
        rules = [ln for ln in screen.lines if ln.level == "rule" and ln.ref and ln.ref.kind == "ClusterNetworkPolicy"]
        assert [(ln.ref.name, ln.direction, ln.action) for ln in rules if ln.ref] == [
            ("staging-stays-out-of-production", "ingress", "Deny"),
            ("staging-stays-out-of-production", "ingress", "Pass"),
            ("no-egress-to-documentation-nets", "egress", "Deny")]
