"""bundle.Fields, the lean dataclass of RunOptions and the pod plans (dataclasses costs ~10 ms to import)."""
from __future__ import annotations

import pytest
from hanok.runtime.bundle import RunOptions
from hanok.runtime.pod import ContainerPlan, PodPlan


def test_defaults_are_fresh_for_each_instance() -> None:
    a, b = RunOptions(), RunOptions()
    a.env.append("A=1")
    a.labels["k"] = "v"
    assert (b.env, b.labels, RunOptions.env, RunOptions.labels) == ([], {}, [], {})
    plan = PodPlan(name="web")
    plan.containers.append(ContainerPlan(name="c", options=RunOptions(image="img")))
    assert PodPlan(name="db").containers == []


def test_given_values_are_kept_and_unknown_fields_refused() -> None:
    options = RunOptions(image="img", command=["sh"], cpus=0.5)
    assert (options.image, options.command, options.cpus, options.network) == ("img", ["sh"], 0.5, "bridge")
    with pytest.raises(TypeError, match="RunOptions has no field colour, size"):
        RunOptions(size=1, colour="red")


def test_to_dict_copies_and_round_trips() -> None:
    options = RunOptions(image="img", volumes=["/a:/b"], labels={"k": "v"})
    record = options.to_dict()
    record["volumes"].append("/c:/d")
    record["labels"]["x"] = "y"
    assert (options.volumes, options.labels) == (["/a:/b"], {"k": "v"})
    assert RunOptions(**options.to_dict()) == options
    assert set(record) == set(RunOptions.__annotations__)


def test_replace_equality_and_repr() -> None:
    options = RunOptions(image="img", name="a")
    renamed = options.replace(name="b")
    assert (options.name, renamed.name, renamed.image) == ("a", "b", "img")
    assert renamed != options and renamed == RunOptions(image="img", name="b")
    assert RunOptions() != PodPlan()
    assert repr(RunOptions(image="img")).startswith("RunOptions(image='img', command=[], ")
    with pytest.raises(TypeError):
        hash(options)
