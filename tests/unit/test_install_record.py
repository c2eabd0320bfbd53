"""haul.install_record: the installer's record and which CRIU binary haul runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from haul import install_record
from haul.errors import ConfigError


@pytest.fixture
def record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where HAUL_INSTALL_RECORD points (nothing written there yet); HAUL_CRIU unset."""
    path = tmp_path / "install.toml"
    monkeypatch.setenv("HAUL_INSTALL_RECORD", str(path))
    monkeypatch.delenv("HAUL_CRIU", raising=False)
    monkeypatch.delenv("HAUL_CRIU_SOURCE", raising=False)
    monkeypatch.delenv("HAUL_RUNC", raising=False)
    return path


def _executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_record_is_read_from_haul_install_record(record: Path) -> None:
    record.write_text(
        '[criu]\npath = "/opt/criu/sbin/criu"\nversion = "4.1.1"\n'
        'source = "/usr/local/src/haul/criu-4.1.1"\n'
    )
    assert install_record.install_record_path() == record
    assert install_record.read_install_record() == install_record.InstallRecord(
        criu_path=Path("/opt/criu/sbin/criu"),
        criu_version="4.1.1",
        criu_source=Path("/usr/local/src/haul/criu-4.1.1"),
    )


def test_an_explicit_path_wins_over_the_environment(record: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text('[criu]\npath = "/other/criu"\n')
    assert install_record.read_install_record(other) == install_record.InstallRecord(
        criu_path=Path("/other/criu"), criu_version="", criu_source=None
    )


@pytest.mark.parametrize("source_line", ["", 'source = ""\n', "source = 3\n"])
def test_record_without_a_usable_source(record: Path, source_line: str) -> None:
    record.write_text(f'[criu]\npath = "/usr/local/sbin/criu"\nversion = 4\n{source_line}')
    got = install_record.read_install_record()
    assert got is not None
    assert got.criu_source is None
    assert got.criu_version == "4"


def test_missing_record_is_none(record: Path) -> None:
    assert install_record.read_install_record() is None


@pytest.mark.parametrize(
    "text",
    [
        "[criu\npath = 1",  # not TOML
        'path = "/usr/local/sbin/criu"\n',  # no [criu] table
        'criu = "/usr/local/sbin/criu"\n',  # criu is not a table
        "[criu]\nversion = '4.1'\n",  # no path
        "[criu]\npath = 42\n",  # path is not a string
        'runc = 3\n[criu]\npath = "/c"\n',  # runc is not a table
        '[criu]\npath = "/c"\n[runc]\npath = 3\n',  # runc's path is not a string
    ],
)
def test_malformed_record_is_a_config_error(record: Path, text: str) -> None:
    record.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(str(record))):
        install_record.read_install_record()


def test_unreadable_record_is_a_config_error(record: Path) -> None:
    record.mkdir()
    with pytest.raises(ConfigError, match="cannot read"):
        install_record.read_install_record()


def test_haul_criu_overrides_the_record(
    record: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = _executable(tmp_path / "recorded-criu")
    record.write_text(f'[criu]\npath = "{recorded}"\n')
    override = _executable(tmp_path / "dev-criu")
    monkeypatch.setenv("HAUL_CRIU", str(override))
    assert install_record.criu_binary() == override


def test_haul_criu_must_be_executable(
    record: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = tmp_path / "criu"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    monkeypatch.setenv("HAUL_CRIU", str(plain))
    with pytest.raises(ConfigError, match="not an executable"):
        install_record.criu_binary()


def test_haul_criu_must_exist(
    record: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HAUL_CRIU", str(tmp_path / "no-such-criu"))
    with pytest.raises(ConfigError, match="no-such-criu"):
        install_record.criu_binary()


def test_a_directory_is_not_a_criu_binary(
    record: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HAUL_CRIU", str(tmp_path))
    with pytest.raises(ConfigError):
        install_record.criu_binary()


def test_without_override_the_recorded_binary_is_used(
    record: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = _executable(tmp_path / "recorded-criu")
    record.write_text(f'[criu]\npath = "{recorded}"\n')
    # a criu on PATH must not win over the record
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _executable(bindir / "criu")
    monkeypatch.setenv("PATH", str(bindir))
    assert install_record.criu_binary() == recorded


def test_recorded_binary_must_be_executable(record: Path, tmp_path: Path) -> None:
    record.write_text(f'[criu]\npath = "{tmp_path / "gone"}"\n')
    with pytest.raises(ConfigError, match="not an executable"):
        install_record.criu_binary()


def test_without_a_record_criu_on_path_is_used(
    record: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    on_path = _executable(bindir / "criu")
    monkeypatch.setenv("PATH", str(bindir))
    assert install_record.criu_binary() == on_path


def test_no_criu_anywhere_is_a_config_error(
    record: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="no CRIU"):
        install_record.criu_binary()


def test_criu_source_comes_from_the_record_or_the_override(
    record: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert install_record.criu_source() is None
    record.write_text('[criu]\npath = "/c"\nsource = "/src/criu"\n')
    assert install_record.criu_source() == Path("/src/criu")
    monkeypatch.setenv("HAUL_CRIU_SOURCE", str(tmp_path / "mine"))
    assert install_record.criu_source() == tmp_path / "mine"


def test_runc_is_recorded_with_its_version(record: Path) -> None:
    record.write_text(
        '[criu]\npath = "/c"\n\n[runc]\npath = "/usr/sbin/runc"\nversion = "1.1.5+ds1"\n'
    )
    got = install_record.read_install_record()
    assert got is not None
    assert (got.runc_path, got.runc_version) == (Path("/usr/sbin/runc"), "1.1.5+ds1")


def test_a_record_from_before_runc_has_none(record: Path) -> None:
    record.write_text('[criu]\npath = "/c"\n')
    got = install_record.read_install_record()
    assert got is not None
    assert (got.runc_path, got.runc_version) == (None, "")


def test_runc_binary_is_the_recorded_one_unless_overridden(
    record: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = _executable(tmp_path / "recorded-runc")
    record.write_text(f'[criu]\npath = "/c"\n[runc]\npath = "{recorded}"\n')
    assert install_record.runc_binary() == recorded
    override = _executable(tmp_path / "dev-runc")
    monkeypatch.setenv("HAUL_RUNC", str(override))
    assert install_record.runc_binary() == override


def test_a_recorded_runc_that_is_gone_is_a_config_error(record: Path, tmp_path: Path) -> None:
    record.write_text(f'[criu]\npath = "/c"\n[runc]\npath = "{tmp_path / "gone"}"\n')
    with pytest.raises(ConfigError, match="gone is not an executable"):
        install_record.runc_binary()
