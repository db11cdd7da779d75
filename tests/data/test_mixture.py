"""Mixtures of data sources (`jaxtar.data.mixture`): the spec, the counts (the official TAR bio retain set is pile-bio
retain plus half as many magpie rows), and loading a mixture as one role."""

from __future__ import annotations

import pytest

from jaxtar.config import DataConfig
from jaxtar.data.mixture import Component, mix, mixture_counts, parse_mixture
from jaxtar.defenses._inputs import data_identity, load_role
from jaxtar.errors import InputError


def test_spec_parses_weights_and_leaves_single_sources_and_plus_in_paths_alone():
    assert parse_mixture("a*2 + b*1e0") == [Component("a", 2.0), Component("b", 1.0)]
    assert parse_mixture("toy:retain + toy:forget") == [Component("toy:retain", None), Component("toy:forget", None)]
    assert parse_mixture("pile-bio-retain") is None
    assert parse_mixture("/data/owner+name/file.parquet") is None  # '+' without spaces is part of a path
    assert parse_mixture("magpie-bio-filtered@/x.parquet*0.5 + y*0.5")[0] == Component(
        "magpie-bio-filtered@/x.parquet", 0.5
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [("a*2 + b", "every component a weight"), ("a*0 + b*1", "positive"), ("a + a", "twice"), (" + b", "empty")],
)
def test_bad_specs_are_refused_by_name(spec, message):
    with pytest.raises(InputError, match=message):
        parse_mixture(spec)


def test_counts_are_the_largest_mixture_with_the_given_shares():
    assert mixture_counts([9000, 20000], [2.0, 1.0]) == [9000, 4500]  # official bio: all retain + half as many
    assert mixture_counts([9000, 3000], [2.0, 1.0]) == [6000, 3000]  # magpie scarce: retain cut to keep 2 : 1
    assert mixture_counts([10, 7], [None, None]) == [10, 7]
    with pytest.raises(InputError, match="empty"):
        mixture_counts([1000, 1], [1.0, 1e-6])
    assert list(mix([[1, 2, 3, 4], [5, 6]], [1.0, 1.0])) == [1, 2, 5, 6]


def test_a_mixture_loads_as_one_role_and_identifies_each_source():
    forget, retain = list(load_role("toy:forget")), list(load_role("toy:retain"))
    mixed = load_role("toy:retain*2 + toy:forget*1")
    n = min(len(retain), 2 * len(forget)) // 2
    assert list(mixed) == retain[: 2 * n] + forget[:n]
    assert list(load_role("toy:retain + toy:forget")) == retain + forget
    assert list(load_role("toy:retain + toy:forget", limit=3)) == retain[:3] + forget[:3]  # the limit is per source
    identity = data_identity(DataConfig(retain="toy:retain*2 + toy:forget*1"))
    assert identity["retain"] == "toy:retain*2 + toy:forget*1"
    with pytest.raises(InputError, match="unknown toy role"):
        load_role("toy:retain + toy:nothing")
