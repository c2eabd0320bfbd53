"""The lab ledger: what a lab made, persisted before it is made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from haul.errors import LabError
from haul.lab.ledger import Ledger, known_prefixes


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "state" / "lab"  # not created yet: save() must make it
    monkeypatch.setenv("HAUL_LAB_STATE_DIR", str(d))
    return d


def test_save_then_load_round_trips(state: Path) -> None:
    ledger = Ledger(
        prefix="rt",
        hosts=3,
        netns=["rt-sw", "rt-host1"],
        sysctls={"net.ipv4.ip_forward": "0", "kernel.ns_last_pid": "300"},
        dirs=["/var/lib/haul/lab/rt/host1"],
    )
    ledger.save()
    assert ledger.path == state / "rt.json"
    assert ledger.path.is_file()
    assert Ledger.load("rt") == ledger


def test_save_leaves_no_temporary_file(state: Path) -> None:
    Ledger(prefix="tmp", hosts=1).save()
    assert sorted(p.name for p in state.iterdir()) == ["tmp.json"]


def test_load_of_an_unknown_prefix_is_none(state: Path) -> None:
    assert Ledger.load("nolab") is None


def test_record_netns_persists_at_once_and_dedupes(state: Path) -> None:
    ledger = Ledger(prefix="ns", hosts=2)
    ledger.record_netns("ns-sw")
    # on disk already, without an explicit save
    loaded = Ledger.load("ns")
    assert loaded is not None and loaded.netns == ["ns-sw"]
    ledger.record_netns("ns-host1")
    ledger.record_netns("ns-sw")
    assert ledger.netns == ["ns-sw", "ns-host1"]
    loaded = Ledger.load("ns")
    assert loaded is not None and loaded.netns == ["ns-sw", "ns-host1"]


def test_record_dir_persists_at_once_and_dedupes(state: Path, tmp_path: Path) -> None:
    ledger = Ledger(prefix="d", hosts=1)
    ledger.record_dir(tmp_path / "lab" / "host1")
    loaded = Ledger.load("d")
    assert loaded is not None and loaded.dirs == [str(tmp_path / "lab" / "host1")]
    ledger.record_dir(tmp_path / "lab" / "client")
    ledger.record_dir(tmp_path / "lab" / "host1")
    expected = [str(tmp_path / "lab" / "host1"), str(tmp_path / "lab" / "client")]
    assert ledger.dirs == expected
    loaded = Ledger.load("d")
    assert loaded is not None and loaded.dirs == expected


def test_a_repeated_record_does_not_rewrite_the_ledger(state: Path) -> None:
    ledger = Ledger(prefix="same", hosts=1)
    ledger.record_netns("same-sw")
    ledger.path.write_text(ledger.path.read_text() + "\n")  # a marker save() would drop
    ledger.record_netns("same-sw")
    assert ledger.path.read_text().endswith("}\n")


@pytest.mark.parametrize("text", ["{not json", "", '{"prefix": "c", "hosts": 2'])
def test_corrupt_ledger_is_a_lab_error(state: Path, text: str) -> None:
    state.mkdir(parents=True)
    (state / "c.json").write_text(text)
    with pytest.raises(LabError, match="unreadable"):
        Ledger.load("c")


@pytest.mark.parametrize("text", ["[1, 2]", '{"hosts": 2}', '{"prefix": "c", "hosts": "two"}'])
def test_ledger_of_the_wrong_shape_is_a_lab_error(state: Path, text: str) -> None:
    state.mkdir(parents=True)
    (state / "c.json").write_text(text)
    with pytest.raises(LabError):
        Ledger.load("c")


def test_load_tolerates_missing_optional_lists(state: Path) -> None:
    state.mkdir(parents=True)
    (state / "old.json").write_text(json.dumps({"prefix": "old", "hosts": 2}))
    assert Ledger.load("old") == Ledger(prefix="old", hosts=2)


def test_known_prefixes(state: Path) -> None:
    assert known_prefixes() == []  # no state directory at all
    Ledger(prefix="zeta", hosts=1).save()
    Ledger(prefix="alpha", hosts=2).save()
    (state / "stray.tmp").write_text("{}")
    (state / "notes.txt").write_text("")
    assert known_prefixes() == ["alpha", "zeta"]


def test_delete_forgets_the_lab(state: Path) -> None:
    ledger = Ledger(prefix="gone", hosts=1)
    ledger.save()
    ledger.delete()
    assert Ledger.load("gone") is None
    assert known_prefixes() == []
    ledger.delete()  # deleting twice is fine


def test_services_are_recorded_at_once_and_forgotten(state: Path) -> None:
    ledger = Ledger(prefix="svc", hosts=1)
    ledger.record_service("haproxy@client", 4242)
    loaded = Ledger.load("svc")
    assert loaded is not None and loaded.services == {"haproxy@client": 4242}
    ledger.forget_service("haproxy@client")
    ledger.forget_service("haproxy@client")  # twice is fine
    loaded = Ledger.load("svc")
    assert loaded is not None and loaded.services == {}
