"""Hooks through real agents in lab hosts: `haul migrate --hook`, the points in order with
their environment, and a hook that fails before the commit aborting the migration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from haul.lab.operator import count, ps, run_counter, run_haul, verdict, wait_count_above
from haul.lab.spec import LabSpec
from haul.procfs import netns_inode

LOG_EVENT = Path(__file__).resolve().parents[2] / "deploy" / "hooks" / "log-event"


def logging_hook(directory: Path, name: str, log: Path, *, fail_at: str = "") -> Path:
    """deploy/hooks/log-event writing to ``log``; also notes the hook's network namespace;
    fails at ``fail_at`` after logging."""
    path = directory / name
    fail = (
        (
            f'if [ "$1" = {fail_at} ]; then echo "the copy on $HAUL_DEST_HOST is not '
            'wanted" >&2; exit 1; fi\n'
        )
        if fail_at
        else ""
    )
    path.write_text(
        "#!/bin/bash\n"
        f'HAUL_HOOK_LOG={log} {LOG_EVENT} "$@" || exit 1\n'
        f'echo "$1 $(readlink /proc/self/ns/net)" >> {log}.netns\n' + fail
    )
    path.chmod(0o755)
    return path


def events(log: Path) -> list[dict[str, str]]:
    """log-event's lines as dicts: point, then its key=value pairs (reason runs to the end)."""
    found = []
    for line in log.read_text().splitlines():
        _, point, rest = line.split(" ", 2)
        head, _, reason = rest.partition(" reason=")
        entry = dict(pair.split("=", 1) for pair in head.split())
        found.append({"point": point, **entry, "reason": reason})
    return found


def host_netns(lab: LabSpec, host: int) -> str:
    return f"net:[{netns_inode(lab.host(host).netns)}]"


@pytest.mark.parametrize("strategy", ["stop-and-copy", "post-copy"])
def test_a_logging_hook_sees_every_point_in_order(
    lab_with_agents: tuple[LabSpec, Path], tmp_path: Path, strategy: str
) -> None:
    lab, inventory = lab_with_agents
    log = tmp_path / "hooks.log"
    hook = logging_hook(tmp_path, "log", log)
    run_counter(inventory, lab, "web1")
    before = count(lab, "host1", "web1")
    done = run_haul(
        inventory,
        "migrate",
        "web1",
        "--to",
        "host2",
        "--strategy",
        strategy,
        "--hook",
        str(hook),
        "--hook-timeout",
        "20",
        "-o",
        "json",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["outcome"] == "done" and result["problems"] == []
    seen = events(log)
    assert [e["point"] for e in seen] == ["pre-migrate", "pre-freeze", "restored", "post-commit"]
    assert [e["phase"] for e in seen] == ["prepare", "freeze", "restore", "commit"]
    for e in seen:
        assert e == {
            "point": e["point"],
            "phase": e["phase"],
            "id": result["id"],
            "workload": "web1",
            "from": "host1",
            "to": "host2",
            "source_address": str(lab.host(1).address.ip),
            "dest_address": str(lab.host(2).address.ip),
            "strategy": strategy,
            "reason": "",
        }
    # the hooks ran on the source host (its network namespace), whatever the point
    spaces = {line.split()[1] for line in Path(f"{log}.netns").read_text().splitlines()}
    assert spaces == {host_netns(lab, 1)}
    assert [(r["host"], r["name"]) for r in ps(inventory)] == [("host2", "web1")]
    assert wait_count_above(lab, "host2", "web1", before) > before
    assert verdict(lab, inventory, "host2", "web1").startswith("PASS")


def test_a_hook_failing_at_restored_aborts_and_the_workload_stays(
    lab_with_agents: tuple[LabSpec, Path], tmp_path: Path
) -> None:
    lab, inventory = lab_with_agents
    log = tmp_path / "hooks.log"
    run_counter(inventory, lab, "web2")
    veto = logging_hook(tmp_path, "veto", log, fail_at="restored")
    done = run_haul(
        inventory,
        "migrate",
        "web2",
        "--to",
        "host2",
        "--strategy",
        "stop-and-copy",
        "--hook",
        str(veto),
        "-o",
        "json",
    )
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert result["outcome"] == "rolled-back"
    assert result["reason"] == (
        f"rolled back during restore (hooks: hook {veto} at restored exited with status 1: "
        "the copy on host2 is not wanted); web2 runs on host1, nothing kept on host2"
    )
    assert [e["point"] for e in events(log)] == [
        "pre-migrate",
        "pre-freeze",
        "restored",
        "rolled-back",
    ]
    assert events(log)[-1]["reason"].startswith(f"hooks: hook {veto} at restored exited")
    journal = lab.host(1).data_backing / "agent" / "journal" / f"{result['id']}.jsonl"
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [(r["phase"], r["cause"]) for r in records if r["cause"].startswith("hook")] == [
        ("restore", "hook restored failed")
    ]
    # the workload keeps running on the source; the destination kept nothing
    assert [(r["host"], r["name"]) for r in ps(inventory)] == [("host1", "web2")]
    agent2 = lab.host(2).data_backing / "agent"
    assert not list(agent2.glob("incoming/*")) and not (agent2 / "workloads" / "web2").exists()
    n = count(lab, "host1", "web2")
    assert wait_count_above(lab, "host1", "web2", n) > n

    # a hook that cannot run is refused in one line before anything starts
    missing = run_haul(inventory, "migrate", "web2", "--to", "host2", "--hook", "/no/such/hook")
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1
    assert "hook /no/such/hook: no such file on host1" in missing.stderr
    relative = run_haul(inventory, "migrate", "web2", "--to", "host2", "--hook", "hooks/log")
    assert relative.returncode == 2 and "absolute path on the source host" in relative.stderr
    assert len(events(log)) == 4, "neither refused migration called a hook"

    # and the next migration, with a hook that agrees, succeeds
    good = logging_hook(tmp_path, "good", log)
    done = run_haul(
        inventory, "migrate", "web2", "--to", "host2", "--hook", str(good), "-o", "json"
    )
    assert done.returncode == 0, done.stderr
    assert [e["point"] for e in events(log)][4:] == [
        "pre-migrate",
        "pre-freeze",
        "restored",
        "post-commit",
    ]
    assert verdict(lab, inventory, "host2", "web2").startswith("PASS")


def test_a_failing_post_commit_hook_is_reported_and_the_move_stands(
    lab_with_agents: tuple[LabSpec, Path], tmp_path: Path
) -> None:
    lab, inventory = lab_with_agents
    log = tmp_path / "hooks.log"
    run_counter(inventory, lab, "web3", mem_mib=8)
    late = logging_hook(tmp_path, "late", log, fail_at="post-commit")
    done = run_haul(
        inventory, "migrate", "web3", "--to", "host2", "--hook", str(late), "-o", "json"
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["outcome"] == "done"
    assert result["problems"] == [
        f"hooks: post-commit failed: hook {late} at post-commit exited with status 1: "
        "the copy on host2 is not wanted"
    ]
    assert [(r["host"], r["name"]) for r in ps(inventory)] == [("host2", "web3")]
    assert [e["point"] for e in events(log)] == [
        "pre-migrate",
        "pre-freeze",
        "restored",
        "post-commit",
    ]
    assert verdict(lab, inventory, "host2", "web3").startswith("PASS")
