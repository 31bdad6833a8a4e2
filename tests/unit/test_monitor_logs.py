"""The monitor and check-log on the logs production writes: the bundled serve-demo log with some of its labels."""
import json

import pytest

from analysis.production.monitor import _labelled, monitor, monitor_inputs, read_labels, read_log
from tests.helpers import ROOT

DEMO_LOG = ROOT / "data" / "demo-logs" / "serve-demo.jsonl"
DEMO_LABELS = DEMO_LOG.with_suffix(".labels.jsonl")


# --- labels for some of the requests ---------------------------------------------------------------------------
def _some_labels(tmp_path, n_first: int, extra=()):
    """The first ``n_first`` lines of the demo's labels, and the lines of the requests ``extra``."""
    lines = DEMO_LABELS.read_text().splitlines()
    keep = lines[:n_first] + [x for x in lines[n_first:] if json.loads(x)["request"] in set(extra)]
    path = tmp_path / "some.labels.jsonl"
    path.write_text("\n".join(keep) + "\n")
    return path, {json.loads(x)["request"] for x in keep}


def test_requests_without_a_label_are_unlabelled_not_wrong(tmp_path, cli):
    """With labels for a few requests, only those are labelled (a request the labels leave out was scored against
    "nan" before: EM 0, and counted as labelled); EM and its check are computed on the labelled ones alone."""
    _, _, fin = read_log(DEMO_LOG)
    full = _labelled(fin, read_labels(DEMO_LABELS), "number")
    right = full[(full["arm"] == "champion") & (full["em"] == 1)]["request"].tolist()
    assert len(right) >= 2
    some, ids = _some_labels(tmp_path, 5, right[:2])
    t, p = monitor_inputs([DEMO_LOG])
    res = monitor([DEMO_LOG], t, p, [some], propose=False)
    champ = full[(full["arm"] == "champion") & full["request"].isin(ids)]
    assert res["labelled"] == len(ids) == 7, res["labelled"]
    assert res["observed"]["n_labelled"] == len(champ) and res["observed"]["em"] == pytest.approx(champ["em"].mean())
    assert res["observed"]["em"] > 0
    # the EM check, with enough labels: on the labelled champion requests only
    some, ids = _some_labels(tmp_path, 20)
    res = monitor([DEMO_LOG], t, p, [some], propose=False)
    n = int(((full["arm"] == "champion") & full["request"].isin(ids)).sum())
    assert res["labelled"] == 20 and res["checks"]["em"]["n_labelled"] == n < 26
    code, out, err = cli("monitor", "--log", DEMO_LOG, "--labels", _some_labels(tmp_path, 5)[0])
    assert code in (0, None), err
    assert "5 labelled" in out and "EM 0.000 on 4 labelled" in out, out
