"""Evaluation: decide a flow exactly as Calico would, with an explanation."""

from enforcer.evaluate.evaluator import Decision, Evaluator, Hit, StageResult, Verdict
from enforcer.evaluate.explain import decision_json, decision_text
from enforcer.evaluate.flow import Flow, Peer, RefError, peer_for_address, resolve_ref

__all__ = [
    "Decision",
    "Evaluator",
    "Flow",
    "Hit",
    "Peer",
    "RefError",
    "StageResult",
    "Verdict",
    "decision_json",
    "decision_text",
    "peer_for_address",
    "resolve_ref",
]
