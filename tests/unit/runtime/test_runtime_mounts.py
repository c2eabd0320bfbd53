"""haul.runtime.mounts without root: --mount's syntax, the entries config.json gets,
the allowed roots a source must lie in, a destination mounted twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from haul.errors import UsageError
from haul.runtime.mounts import BindMount, add_mounts, bind_mounts, check_sources


@pytest.mark.parametrize(
    ("text", "source", "destination"),
    [("/usr:/usr", "/usr", "/usr"), ("/srv/app:/opt/app:ro", "/srv/app", "/opt/app")],
)
def test_a_mount_is_src_dst_and_read_only(text: str, source: str, destination: str) -> None:
    assert BindMount.parse(text) == BindMount(Path(source), destination)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("/srv:/srv:rw", "only read-only mounts"),
        ("/srv", "give SRC:DST or SRC:DST:ro"),
        ("/a:/b:ro:x", "give SRC:DST or SRC:DST:ro"),
        ("srv:/srv", "SRC must be an absolute path"),
        ("/srv:opt", "DST must be an absolute path"),
        ("/srv/../etc:/x", "SRC must not hold '.' or '..'"),
        ("/srv:/opt/./x", "DST must not hold '.' or '..'"),
    ],
)
def test_a_bad_mount_is_one_line(text: str, says: str) -> None:
    with pytest.raises(UsageError, match=says.replace(".", r"\.")):
        BindMount.parse(text)


def test_config_json_gets_a_read_only_bind_mount() -> None:
    config: dict[str, Any] = {"mounts": [{"destination": "/proc", "type": "proc"}]}
    add_mounts(config, [BindMount(Path("/usr"), "/usr")])
    assert config["mounts"][1] == {
        "destination": "/usr",
        "type": "bind",
        "source": "/usr",
        "options": ["bind", "ro", "nosuid", "nodev"],
    }
    assert bind_mounts(config) == [BindMount(Path("/usr"), "/usr")]  # proc is no bind mount


def test_bind_mounts_are_found_by_type_or_option() -> None:
    config = {
        "mounts": [
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/a", "type": "bind", "source": "/srv/a"},
            {"destination": "/b", "source": "/srv/b", "options": ["rbind", "ro"]},
            {"destination": "/c", "type": "none", "source": "/srv/c", "options": ["bind"]},
        ]
    }
    assert [m.destination for m in bind_mounts(config)] == ["/a", "/b", "/c"]
    assert bind_mounts({}) == []


@pytest.mark.parametrize("destination", ["/proc", "/proc/", "/", "/x"])
def test_a_destination_is_mounted_once(destination: str) -> None:
    config: dict[str, Any] = {"mounts": [{"destination": "/proc", "type": "proc"}]}
    mounts = [BindMount(Path("/srv"), destination)]
    if destination == "/x":  # free, but not twice in one request
        mounts.append(BindMount(Path("/srv2"), "/x/"))
    with pytest.raises(UsageError, match="mount"):
        add_mounts(config, mounts)


def test_a_source_must_lie_in_an_allowed_root_and_exist(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "app").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (allowed / "link").symlink_to(allowed / "app")
    (allowed / "escape").symlink_to(tmp_path / "elsewhere")
    # links are resolved: config.json names the real path
    assert check_sources([BindMount(allowed / "link", "/opt")], [allowed]) == [
        BindMount(allowed / "app", "/opt")
    ]
    for outside in (tmp_path / "elsewhere", allowed / "escape"):
        with pytest.raises(UsageError, match="outside the directories this agent allows"):
            check_sources([BindMount(outside, "/opt")], [allowed])
    with pytest.raises(UsageError, match="does not exist on this host"):
        check_sources([BindMount(allowed / "gone", "/opt")], [allowed])
    with pytest.raises(UsageError, match="allowed_roots: none configured"):
        check_sources([BindMount(allowed / "app", "/opt")], [])
