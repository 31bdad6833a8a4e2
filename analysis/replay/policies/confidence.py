"""Answer confidence (DEER): stop when the trial answer's token probabilities reach tau."""
from analysis.replay.policies.base import Param, Policy, register

AGG = {"mean": "p_mean", "geometric": "p_geo", "min": "p_min", "first": "p_first"}


@register
class Confidence(Policy):
    name = "confidence"
    label = "Answer confidence"
    description = ("Stop when the trial answer's confidence (mean, geometric mean or minimum of its token "
                   "probabilities) reaches tau; optionally only at transition-word checkpoints, as DEER does.")
    source = "DEER (tau = 0.95 on the mean)"
    recalibrate_step = 3             # one recalibration moves at most 3 places toward fewer tokens
    requires = ("p_mean",)           # the default aggregate's; required_signals names the picked one's
    params = (
        Param("tau", "float", 0.95, "confidence threshold", low=0.0, high=1.0,
              grid=(0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.95, 0.96,
                    0.97, 0.98, 0.99, 0.995)),
        Param("aggregate", "choice", "mean", "how the answer's token probabilities are combined",
              choices=tuple(AGG)),
        Param("transition_only", "bool", False, "only consider checkpoints at transition words (Wait, ...)",
              label="only at transition words"),
    )

    @classmethod
    def probes_at(cls, params, sched):
        # only at transition words: a probe anywhere else can never stop it
        return {**sched, "every": 0, "at_steps": False} if params.get("transition_only") else sched

    @classmethod
    def required_signals(cls, params):
        return (AGG[params["aggregate"]],)

    @classmethod
    def fires(cls, t, params):
        p = getattr(t, AGG[params["aggregate"]])
        f = (p >= params["tau"]) & t.has_answer     # NaN (no probe) never reaches tau
        if params["transition_only"]:
            f &= t.is_transition
        return f
