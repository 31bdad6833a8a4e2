"""Budget forcing (s1): stop at the first checkpoint at or past B tokens."""
import numpy as np

from analysis.replay.policies.base import Param, Policy, register


@register
class Budget(Policy):
    name = "budget"
    label = "Token budget"
    description = "Stop at the first checkpoint at or past B tokens, whatever the model is saying."
    source = "s1 budget forcing"
    recalibrate_step = 3             # one recalibration moves at most 3 places toward fewer tokens
    requires = ()
    needs_probes = False             # it reads positions only
    params = (Param("B", "int", 256, "token budget: stop at the first checkpoint at or past this many tokens",
                    low=1, high=32768, log=True, label="budget B (tokens)"),)

    @classmethod
    def grid(cls, t):
        # Budgets at the quantiles of where checkpoints actually fall in this run.
        pos = t.pos[t.valid]
        qs = np.unique(np.quantile(pos, np.linspace(0.01, 1.0, 80)).round().astype(int))
        return [{"B": int(max(1, b))} for b in qs]

    @classmethod
    def defaults_for(cls, t):
        # the declared 256 can lie past every trace (then nothing stops early): start where a budget bites
        return {"B": max(1, int(round(0.6 * float(t.full_tokens.mean()))))}

    @classmethod
    def fires(cls, t, params):
        return t.pos >= params["B"]
