"""Policy families. Each module defines one family with @register; base.py holds the machinery."""
from analysis.replay.policies.base import Param, Policy, Setting, check_signals, families, get_family, register

__all__ = ["Param", "Policy", "Setting", "check_signals", "families", "get_family", "register"]
