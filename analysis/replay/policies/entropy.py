"""Entropy after the cue (EAT): stop when the moving variance of the after-cue entropy settles."""
import numpy as np

from analysis.replay.policies.base import Param, Policy, register


@register
class Entropy(Policy):
    name = "entropy"
    label = "Entropy settling (EAT)"
    description = ("Track an exponential moving average (rate alpha) of the next-token entropy right after the "
                   "cue; stop when its moving variance falls below delta, after at least min_steps checkpoints and two "
                   "entropies (one has no variance yet); a checkpoint without an entropy never stops.")
    source = "EAT (alpha = 0.2, delta = 1e-4)"
    recalibrate_step = 3             # one recalibration moves at most 3 places toward fewer tokens
    requires = ("entropy",)
    params = (
        Param("alpha", "float", 0.2, "EMA rate", low=0.01, high=1.0, grid=(0.1, 0.2, 0.3, 0.5)),
        Param("delta", "float", 1e-4, "variance threshold", low=1e-8, high=10.0, log=True,
              grid=(1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)),
        Param("min_steps", "int", 3, "never stop before this many checkpoints", low=1, high=64,
              grid=(2, 3, 5, 8), label="min checkpoints"),
    )

    @classmethod
    def fires(cls, t, params):
        """Never where the entropy is missing (a missing signal never fires a rule), nor before the second
        entropy recorded (the variance is NaN until then, whatever min_steps allows)."""
        _, var = t.ema_var(params["alpha"])
        step = np.arange(t.m)[None, :] + 1
        return (var < params["delta"]) & (step >= params["min_steps"]) & ~np.isnan(t.entropy)
