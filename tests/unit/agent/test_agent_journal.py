"""haul.agent.journal: durable appends, reading back, torn last lines, open migrations."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from haul.agent.journal import Journal, JournalError, OpenMigration
from haul.engine.phases import Phase
from haul.engine.ports import JournalPort, JournalRecord
from haul.errors import UsageError


def _rec(mid: str, phase: Phase, cause: str = "x", detail: str = "") -> JournalRecord:
    return JournalRecord(migration_id=mid, phase=phase, cause=cause, detail=detail)


@pytest.mark.asyncio
async def test_appends_are_fsynced_before_append_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(tmp_path / "journal")
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        real_fsync(fd)
        synced.append(target)

    monkeypatch.setattr(os, "fsync", spy)
    path = journal.path("m1")
    await journal.append(_rec("m1", Phase.PREFLIGHT, "MigrationRequested"))
    # the file, then (new file) its directory
    assert synced == [str(path), str(path.parent)]
    assert len(path.read_bytes().splitlines()) == 1
    synced.clear()
    await journal.append(_rec("m1", Phase.PRECOPY, "PreflightPassed"))
    assert synced == [str(path)]
    assert len(path.read_bytes().splitlines()) == 2


@pytest.mark.asyncio
async def test_records_read_back_in_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    port: JournalPort = journal  # the engine's port
    records = [
        _rec("m1", Phase.PREFLIGHT, "MigrationRequested"),
        _rec("m1", Phase.FREEZE, "PreCopyConverged", "3 iterations, 120 pages left"),
        _rec("m1", Phase.COMMIT, "commit", "dest pid 4242 restored; ünïcode ok"),
    ]
    for r in records:
        await port.append(r)
    entries = journal.read("m1")
    assert [e.record for e in entries] == records
    assert all(e.time_s > 0 for e in entries)
    assert entries[0].time_s <= entries[1].time_s <= entries[2].time_s
    lines = (tmp_path / "m1.jsonl").read_text().splitlines()
    assert json.loads(lines[1]) == {
        "time_s": entries[1].time_s,
        "migration_id": "m1",
        "phase": "freeze",
        "cause": "PreCopyConverged",
        "detail": "3 iterations, 120 pages left",
    }
    assert journal.read("never") == []
    assert os.stat(tmp_path / "m1.jsonl").st_mode & 0o077 == 0


@pytest.mark.asyncio
async def test_open_migrations_are_those_not_in_a_terminal_phase(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal")
    assert journal.open_migrations() == []  # no directory yet
    for mid, phases in {
        "done": [Phase.PREFLIGHT, Phase.COMMIT, Phase.DONE],
        "rolled": [Phase.PREFLIGHT, Phase.FREEZE, Phase.ROLLING_BACK, Phase.ROLLED_BACK],
        "refused": [Phase.PREFLIGHT, Phase.REFUSED],
        "frozen": [Phase.PREFLIGHT, Phase.FREEZE],
        "committed": [Phase.PREFLIGHT, Phase.COMMIT],
    }.items():
        for phase in phases:
            await journal.append(_rec(mid, phase))
    (tmp_path / "journal" / "notes.txt").write_text("not a journal")
    found = journal.open_migrations()
    assert [(m.migration_id, m.phase) for m in found] == [
        ("committed", Phase.COMMIT),
        ("frozen", Phase.FREEZE),
    ]
    assert isinstance(found[0], OpenMigration)


@pytest.mark.asyncio
async def test_a_torn_last_line_is_skipped_then_cut(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    await journal.append(_rec("m", Phase.PREFLIGHT))
    await journal.append(_rec("m", Phase.FREEZE))
    path = journal.path("m")
    with path.open("ab") as f:
        f.write(b'{"time_s": 1.0, "migration_id": "m", "pha')  # the crash
    assert [e.record.phase for e in journal.read("m")] == [Phase.PREFLIGHT, Phase.FREEZE]
    assert [m.phase for m in journal.open_migrations()] == [Phase.FREEZE]
    restarted = Journal(tmp_path)
    await restarted.append(_rec("m", Phase.ROLLING_BACK))
    assert [e.record.phase for e in restarted.read("m")] == [
        Phase.PREFLIGHT,
        Phase.FREEZE,
        Phase.ROLLING_BACK,
    ]
    assert path.read_bytes().endswith(b"\n")


@pytest.mark.asyncio
async def test_a_torn_first_line_leaves_an_empty_journal(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_bytes(b'{"time_s": 1')
    journal = Journal(tmp_path)
    assert journal.read("m") == []
    await journal.append(_rec("m", Phase.PREFLIGHT))
    assert [e.record.phase for e in journal.read("m")] == [Phase.PREFLIGHT]


def test_a_damaged_middle_line_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text(
        'garbage\n{"time_s": 1, "migration_id": "m", "phase": "done", "cause": "c"}\n'
    )
    with pytest.raises(JournalError, match="damaged at line 1"):
        Journal(tmp_path).read("m")
    (tmp_path / "n.jsonl").write_text(
        '{"time_s": 1, "migration_id": "n", "phase": "nope", "cause": "c"}\n'
    )
    with pytest.raises(JournalError, match="'nope' is not a valid Phase"):
        Journal(tmp_path).read("n")


@pytest.mark.asyncio
@pytest.mark.parametrize("mid", ["../x", "a/b", "", ".hidden", "x" * 129])
async def test_migration_ids_that_are_not_file_names_are_refused(tmp_path: Path, mid: str) -> None:
    journal = Journal(tmp_path / "journal")
    with pytest.raises(UsageError, match="bad migration id"):
        await journal.append(_rec(mid, Phase.PREFLIGHT))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.asyncio
async def test_an_unwritable_journal_raises_one_line(tmp_path: Path) -> None:
    (tmp_path / "journal").write_text("a file where the directory should be")
    with pytest.raises(JournalError, match="cannot append to the journal"):
        await Journal(tmp_path / "journal").append(_rec("m", Phase.PREFLIGHT))
