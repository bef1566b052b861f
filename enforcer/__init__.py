"""enforcer: Calico policy semantics, evaluated in Python and compiled to nftables.

Headless: nothing here imports Textual or the flowtui package.
"""

from enforcer.selector import Selector, SelectorError, parse_selector

__all__ = ["Selector", "SelectorError", "parse_selector"]
