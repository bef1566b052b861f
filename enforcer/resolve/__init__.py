"""Resolution: from validated resources to cluster state (endpoints, ordered tiers, memberships)."""

from enforcer.resolve.endpoints import Endpoint
from enforcer.resolve.state import ClusterState, OrderedTier

__all__ = ["ClusterState", "Endpoint", "OrderedTier"]
