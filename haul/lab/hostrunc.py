"""runc containers in lab hosts, seen and removed from outside: for tests and ``lab down``.

Each lab host's agent keeps its containers under its own runc root, ``<data path>/agent/runc``
as the host sees it, and their cgroups under :func:`haul.lab.agents.lab_cgroup_parent`.
:func:`host_runc` runs ``runc`` inside a host's namespaces (network and mount, entered
with nsenter: ``ip netns exec`` would remount /sys and hide the cgroup hierarchies)
against that root, with haul's CRIU. :func:`remove_containers` deletes every container of
a lab's hosts and their cgroups: a container in a network namespace of its own is in
none of the lab's namespaces, so killing those would miss it.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

from haul.errors import ConfigError
from haul.install_record import criu_binary, runc_binary
from haul.lab.agents import lab_cgroup_parent
from haul.lab.spec import HostSpec, LabSpec
from haul.net.spec import host_ifname
from haul.runtime.bundle import cgroup_mounts

RUNC_TIMEOUT_S = 60.0


def host_runc_root(spec: LabSpec) -> Path:
    """A lab host's agent's runc root, as the host sees it (the same path in every host)."""
    return spec.data_path / "agent" / "runc"


def host_runc_argv(
    spec: LabSpec, host: HostSpec, *args: str, root: Path | None = None
) -> list[str]:
    """``runc --root ROOT --criu CRIU ARGS`` inside ``host``'s namespaces."""
    return [
        *host.ns.prefix(),
        str(runc_binary()),
        "--root",
        str(root if root is not None else host_runc_root(spec)),
        "--criu",
        str(criu_binary()),
        *args,
    ]


def host_runc(
    spec: LabSpec, host: str, *args: str, root: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run runc in ``host`` (stdio of what it starts: /dev/null); its output as text."""
    return subprocess.run(
        host_runc_argv(spec, spec.member(host), *args, root=root),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUNC_TIMEOUT_S,
    )


def container_ids(spec: LabSpec, host: str, root: Path | None = None) -> list[str]:
    """The IDs runc lists under ``host``'s agent's root (or ``root``)."""
    done = host_runc(spec, host, "list", "--format", "json", root=root)
    if done.returncode != 0:
        return []
    rows = json.loads(done.stdout) if done.stdout.strip() else None
    return [str(r["id"]) for r in rows or []]


def container_leftovers(spec: LabSpec, host: str, name: str) -> list[str]:
    """What of container ``name`` is on ``host`` (which should have none of it): runc's
    state of it, any mount under the host's agent state directory, its directory there,
    its cgroup, the host end of its veth, what the agent keeps of incoming migrations."""
    member = spec.member(host)
    left = [f"runc state {c}" for c in container_ids(spec, host) if c == name]
    state = str(spec.data_path / "agent") + "/"
    mounts = subprocess.run(
        [*member.ns.prefix(), "cat", "/proc/self/mountinfo"],
        capture_output=True,
        text=True,
        check=True,
        timeout=RUNC_TIMEOUT_S,
    ).stdout.splitlines()
    left += [f"mount {m.split()[4]}" for m in mounts if m.split()[4].startswith(state)]
    agent_dir = member.data_backing / "agent"
    if (agent_dir / "containers" / name).exists():
        left.append(f"directory containers/{name}")
    left += [f"incoming/{p.name}" for p in sorted((agent_dir / "incoming").glob("*"))]
    parent = lab_cgroup_parent(spec, host).strip("/")
    left += [f"cgroup {m / parent / name}" for m in cgroup_mounts() if (m / parent / name).exists()]
    veth = subprocess.run(
        [*member.ns.prefix(), "ip", "link", "show", host_ifname(name)],
        capture_output=True,
        timeout=RUNC_TIMEOUT_S,
    )
    if veth.returncode == 0:
        left.append(f"veth {host_ifname(name)}")
    return left


def cgroup_tree(path: str) -> list[Path]:
    """Every directory of cgroup ``path`` and below it, in every hierarchy, deepest first."""
    found: list[Path] = []
    for mount in cgroup_mounts():
        top = mount / path.strip("/")
        if top.is_dir():
            found += [p for p in top.rglob("*") if p.is_dir()] + [top]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def remove_containers(spec: LabSpec) -> list[str]:
    """Delete (``runc delete --force``) every container of the lab's hosts, then their
    cgroups; return what could not be done. The hosts' namespaces must still exist."""
    problems: list[str] = []
    for index in range(1, spec.hosts + 1):
        host = spec.host(index)
        if host.ns.missing() is None:
            try:
                ids = container_ids(spec, host.name)
            except (ConfigError, OSError, subprocess.TimeoutExpired) as exc:
                problems.append(f"{host.name}: runc list: {exc}")
                ids = []
            for cid in ids:
                done = host_runc(spec, host.name, "delete", "--force", cid)
                if done.returncode != 0:
                    problems.append(f"{host.name}: runc delete {cid}: {done.stderr.strip()}")
        for directory in cgroup_tree(lab_cgroup_parent(spec, host.name)):
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                problems.append(f"cgroup {directory}: {exc.strerror}")
    # the parents' common top (/haul) goes too when no other lab or host uses it
    top = lab_cgroup_parent(spec, "host1").strip("/").split("/")[0]
    for mount in cgroup_mounts():
        with contextlib.suppress(OSError):
            (mount / top).rmdir()
    return problems
