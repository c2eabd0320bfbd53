"""The pre-flight's runtime rule: a container moves only to a host that runs its runtime,
at the source's version or a newer one; a process tree needs none."""

from __future__ import annotations

import dataclasses

import pytest

from haul.engine.commands import Finish
from haul.engine.events import MigrationStarted, PreflightFinished
from haul.engine.fakes import FULL, RESIDENT_BYTES
from haul.engine.figures import Capabilities, ContainerRuntime, PreflightReport
from haul.engine.machine import Migration, runtime_problems
from haul.engine.phases import Phase
from haul.engine.spec import MigrationSpec
from haul.engine.versions import older, version_key

CONTAINER = MigrationSpec("m1", "c1", "host1", "host2", container_runtime="runc")
TREE = MigrationSpec("m2", "web1", "host1", "host2")


def runc(version: str) -> Capabilities:
    return dataclasses.replace(FULL, runtime=ContainerRuntime("runc", version))


NONE = dataclasses.replace(FULL, no_runtime="runc at /nowhere/runc is not an executable file")


def report(source: Capabilities, dest: Capabilities) -> PreflightReport:
    return PreflightReport(source, dest, (), RESIDENT_BYTES)


@pytest.mark.parametrize(
    ("older_one", "newer_one"),
    [
        ("1.1.4", "1.1.5"),
        ("1.1.5", "1.2.0"),
        ("1.1.12", "1.2"),
        ("1.1.9", "1.1.10"),  # numbers, not text
        ("1.2.0-rc.1", "1.2.0"),  # a pre-release comes before its release
        ("1.2.0-rc.2", "1.2.0-rc.10"),
        ("1.0.0-rc92", "1.0.0"),
        ("0.9", "v1.0"),
    ],
)
def test_versions_order_as_their_age(older_one: str, newer_one: str) -> None:
    assert older(older_one, newer_one) is True
    assert older(newer_one, older_one) is False


@pytest.mark.parametrize(
    ("a", "b"), [("1.1.5+ds1", "1.1.5"), ("1.2", "1.2.0"), ("1.1.5+ds1", "1.1.5+ds2")]
)
def test_build_metadata_and_trailing_zeros_do_not_count(a: str, b: str) -> None:
    assert version_key(a) == version_key(b)
    assert older(a, b) is False and older(b, a) is False


@pytest.mark.parametrize("text", ["", "unknown", "1.x", "runc version 1.1.5", "1..2"])
def test_what_is_no_version_is_not_compared(text: str) -> None:
    assert version_key(text) is None
    assert older(text, "1.1.5") is None and older("1.1.5", text) is None


@pytest.mark.parametrize(
    ("source", "dest", "expected"),
    [
        (runc("1.1.5+ds1"), runc("1.1.5+ds1"), ()),
        (runc("1.1.5+ds1"), runc("1.2.0"), ()),
        (
            runc("1.1.5+ds1"),
            runc("1.0.0"),
            (
                "host2's runc 1.0.0 is older than host1's 1.1.5+ds1 (the destination's "
                "must be the same or newer)",
            ),
        ),
        (
            runc("1.1.5"),
            NONE,
            ("host2 runs no containers (runc at /nowhere/runc is not an executable file)",),
        ),
        (runc("1.1.5"), FULL, ("host2 runs no containers",)),
        (
            runc("1.1.5"),
            dataclasses.replace(FULL, runtime=ContainerRuntime("crun", "1.8")),
            ("host2 runs containers with crun, not runc",),
        ),
        (
            NONE,
            runc("1.1.5"),
            ("host1 cannot run runc now (runc at /nowhere/runc is not an executable file)",),
        ),
        (
            runc("1.1.5"),
            runc("dev"),
            ("cannot compare host1's runc version '1.1.5' with host2's 'dev'",),
        ),
    ],
)
def test_a_container_needs_its_runtime_there_at_the_same_version_or_newer(
    source: Capabilities, dest: Capabilities, expected: tuple[str, ...]
) -> None:
    assert runtime_problems(CONTAINER, report(source, dest)) == expected


def test_a_process_tree_needs_no_runtime_anywhere() -> None:
    assert runtime_problems(TREE, report(NONE, NONE)) == ()
    assert runtime_problems(TREE, report(runc("1.2"), runc("1.0"))) == ()


def test_the_machine_refuses_at_the_preflight_and_says_why() -> None:
    m = Migration(CONTAINER)
    m.handle(MigrationStarted())
    (finish,) = m.handle(PreflightFinished(report(runc("1.1.5"), runc("1.0.0"))))
    assert m.phase is Phase.REFUSED
    assert m.refused_for == runtime_problems(CONTAINER, report(runc("1.1.5"), runc("1.0.0")))
    assert isinstance(finish, Finish)
    assert finish.reason == (
        f"refused: {m.refused_for[0]}; nothing was touched, c1 is as it was on host1"
    )


def test_the_ports_problems_come_first_and_the_runtimes_are_added() -> None:
    m = Migration(CONTAINER)
    m.handle(MigrationStarted())
    ports = PreflightReport(runc("1.1.5"), NONE, ("destination host2: name taken",), 0)
    m.handle(PreflightFinished(ports))
    assert m.refused_for == (
        "destination host2: name taken",
        "host2 runs no containers (runc at /nowhere/runc is not an executable file)",
    )


def test_a_container_with_its_runtime_on_both_ends_goes_on() -> None:
    m = Migration(CONTAINER)
    m.handle(MigrationStarted())
    m.handle(PreflightFinished(report(runc("1.1.5+ds1"), runc("1.1.5+ds1"))))
    assert m.phase is Phase.PREPARE and m.refused_for == ()


def test_an_empty_runtime_name_is_refused_by_the_spec() -> None:
    with pytest.raises(ValueError, match="container_runtime"):
        MigrationSpec("m1", "c1", "host1", "host2", container_runtime="")
