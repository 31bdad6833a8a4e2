"""Answer consistency (Answer Convergence; Dynasor): stop when the last k trial answers agree."""
from analysis.replay.policies.base import Param, Policy, register


@register
class Consistency(Policy):
    name = "consistency"
    label = "Answer consistency"
    description = "Stop when the last k trial answers are identical and non-empty (and at least min_tokens in)."
    source = "Answer Convergence (Liu & Wang 2025); Dynasor (k = 2..8)"
    requires = ()                    # trial answers only: a text import can replay it
    params = (
        Param("k", "int", 3, "how many consecutive identical trial answers", low=2, high=16, grid=(2, 3, 4, 5, 6, 7, 8)),
        Param("min_tokens", "int", 0, "never stop before this many tokens", low=0, high=8192,
              grid=(0, 32, 64, 128, 256, 512), label="min tokens"),
    )

    @classmethod
    def fires(cls, t, params):
        return (t.run_length() >= params["k"]) & (t.pos >= params["min_tokens"])
