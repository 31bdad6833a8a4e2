"""Every registry of declared parts has one shape (core/registry.Registry): families, dataset sources, import
formats, packaged models and CLI commands; an unknown name gets an error that lists the known ones."""
import argparse

import pytest

from analysis.backend.models import PACKAGED
from analysis.cli.main import COMMANDS, build_parser
from analysis.core.errors import StoplineError
from analysis.core.registry import Registry, UnknownName
from analysis.ingest.datasets import DATASETS, load_dataset
from analysis.ingest.importer import FORMATS, spec_for_format
from analysis.replay.policies.base import FAMILIES, families, get_family


def test_one_shape_for_every_registry():
    families()                                           # loads the family modules
    for reg in (FAMILIES, DATASETS, FORMATS, PACKAGED, COMMANDS):
        assert isinstance(reg, Registry) and len(reg) >= 2
        for name, entry in reg.items():
            assert getattr(entry, "name") == name and (getattr(entry, "about", None) or entry.description)


@pytest.mark.parametrize("lookup, words", [
    (lambda: get_family("nope"), "unknown policy family 'nope'"),
    (lambda: load_dataset("nope:x"), "unknown dataset prefix 'nope'"),
    (lambda: spec_for_format("nope"), "unknown import format 'nope'"),
    (lambda: PACKAGED["nope"], "unknown packaged model 'nope'"),
])
def test_an_unknown_name_is_an_error_that_lists_the_known_ones(lookup, words):
    with pytest.raises(StoplineError) as e:
        lookup()
    assert str(e.value).startswith(words) and "hint:" in str(e.value)
    assert isinstance(e.value, KeyError)                 # old callers that catch KeyError still do


def test_a_name_registered_twice_is_refused_and_order_can_be_set():
    r = Registry("thing")
    r.add("a", 1)
    r.add("b", 2)
    with pytest.raises(ValueError, match="thing 'a' is registered twice"):
        r.add("a", 3)
    r.order(["b"])
    assert list(r) == ["b", "a"] and r["a"] == 1 and "c" not in r
    with pytest.raises(UnknownName, match="things: b, a"):
        r.get("c")


def test_the_cli_offers_exactly_the_registered_import_formats():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    fmt = next(a for a in sub.choices["import"]._actions if a.dest == "format")
    assert list(fmt.choices) == list(FORMATS)
    assert list(sub.choices) == list(COMMANDS)
