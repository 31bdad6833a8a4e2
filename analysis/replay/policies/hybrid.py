"""Hybrid: two rules combined with AND / OR, with a floor (never before m tokens) and a cap (always by M)."""
from analysis.replay.policies.base import Param, Policy, PresetError, Setting, register

_A = {"family": "confidence", "params": {"tau": 0.9}}
_B = {"family": "consistency", "params": {"k": 3}}


@register
class Hybrid(Policy):
    name = "hybrid"
    label = "Hybrid (AND / OR, floor, cap)"
    description = ("Combine two rules with AND or OR; never stop before `floor` tokens; always stop by `cap` "
                   "tokens (0 = no cap).")
    source = "CoDE-Stop combines confidence and its dynamics"
    needs_probes = False             # its own floor and cap read positions; its parts say what they need
    nestable = False
    params = (
        Param("a", "setting", _A, "first rule"),
        Param("b", "setting", _B, "second rule"),
        Param("op", "choice", "or", "how the two rules combine", choices=("or", "and")),
        Param("floor", "int", 0, "never stop before this many tokens", low=0, high=32768,
              grid=(0, 64, 128)),
        Param("cap", "int", 0, "always stop by this many tokens (0: no cap)", low=0, high=32768),
    )

    @classmethod
    def validate(cls, params, where="params"):
        # the rule is checked on the parts' family names before validating them: validating first would
        # recurse once per level of a hybrid nested in a hybrid (RecursionError at a few hundred levels)
        if isinstance(params, dict):
            for k in ("a", "b"):
                part = params.get(k)
                fam = part.family if isinstance(part, Setting) else part.get("family") if isinstance(part, dict) else None
                if fam == "hybrid":
                    raise PresetError("a hybrid's parts cannot themselves be hybrids", field=f"{where}.{k}.family")
        out = super().validate(params, where)
        for k in ("a", "b"):
            if not isinstance(out[k], Setting):
                out[k] = Setting.from_dict(out[k], f"{where}.{k}")
            if not out[k].policy.nestable:
                raise PresetError("a hybrid's parts cannot themselves be hybrids", field=f"{where}.{k}.family")
            if out[k].schedule:
                raise PresetError("a hybrid's parts probe on the hybrid's schedule: set it on the hybrid",
                                  field=f"{where}.{k}.schedule")
        return out

    @classmethod
    def required_signals(cls, params):
        a, b = Setting.from_dict(params["a"]), Setting.from_dict(params["b"])
        return tuple(dict.fromkeys(a.policy.required_signals(a.params) + b.policy.required_signals(b.params)))

    @classmethod
    def grid(cls, t):
        out = []
        for tau in (0.8, 0.9, 0.95, 0.99):
            for k in (2, 3, 4):
                for op in ("or", "and"):
                    for floor in (0, 64, 128):
                        out.append({"a": Setting.make("confidence", tau=tau), "b": Setting.make("consistency", k=k),
                                    "op": op, "floor": floor, "cap": 0})
        return out

    @classmethod
    def fires(cls, t, params):
        a, b = Setting.from_dict(params["a"]), Setting.from_dict(params["b"])
        fa, fb = a.policy.fires(t, a.params), b.policy.fires(t, b.params)
        f = (fa | fb) if params["op"] == "or" else (fa & fb)
        f &= t.pos >= params["floor"]
        if params["cap"] > 0:
            f |= t.pos >= params["cap"]
        return f
