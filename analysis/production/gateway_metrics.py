"""The gateway's Prometheus metrics (prometheus-client), in a registry of its own (several gateways may run in
one process, e.g. in tests)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("stopline_requests", "Requests answered, by endpoint and outcome",
                                ["endpoint", "outcome"], registry=r)
        self.early_stops = Counter("stopline_early_stops", "Requests the preset stopped early", ["arm"], registry=r)
        self.tokens_emitted = Counter("stopline_tokens_emitted", "Tokens emitted as the replay counts them: the "
                                      "stop's position plus the answer's tokens (not the usage billed to clients, "
                                      "which also counts the cue written after a stop)", registry=r)
        self.tokens_probed = Counter("stopline_probe_tokens", "Tokens computed by probes (cues and answers)",
                                     registry=r)
        self.tokens_shadow_saved = Counter("stopline_tokens_saved_shadow", "Explore requests: tokens after the "
                                           "position where the preset would have stopped", registry=r)
        self.decision_latency = Histogram("stopline_decision_seconds", "Time to decide at a checkpoint (the "
                                          "probe's answer in hand)", registry=r,
                                          buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .5))
        self.upstream_answers = Counter("stopline_upstream_error_answers", "Requests answered with the trial answer "
                                        "so far after the upstream failed (--on-upstream-error answer)", registry=r)
        self.failovers = Counter("stopline_upstream_failovers", "Traces begun again on another replica after one "
                                 "failed before their first token (that replica set aside)", registry=r)
        self.reload_errors = Counter("stopline_preset_reload_errors", "New preset versions refused", registry=r)

    def finished(self, info: dict) -> None:
        if info["stopped"] and not info.get("cause"):
            self.early_stops.labels(info["arm"]).inc()
        self.tokens_emitted.inc(info["tokens_emitted"])
        self.tokens_probed.inc(info["probe_tokens"])
        if info.get("shadow_position") is not None:
            self.tokens_shadow_saved.inc(max(0, info["position"] - info["shadow_position"]))

    def render(self) -> bytes:
        return generate_latest(self.registry)
