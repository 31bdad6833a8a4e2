"""Policy families. Each module defines one family with @register; base.py holds the machinery."""
from analysis.replay.policies.base import (Param, Policy, Setting, available_families, check_signals, deployable_families,
                                           families, get_family, register)

__all__ = ["Param", "Policy", "Setting", "available_families", "check_signals", "deployable_families", "families",
           "get_family", "register"]
