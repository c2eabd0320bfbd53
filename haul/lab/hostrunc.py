"""runc containers in lab hosts, seen and removed from outside: for tests and ``lab down``.

Each lab host's agent keeps its containers under its own runc root, ``<data path>/agent/runc``
as the host sees it, and their cgroups under :func:`haul.lab.agents.lab_cgroup_parent`.
:func:`host_runc` runs ``runc`` inside a host's namespaces (network and mount, entered
with nsenter: ``ip netns exec`` would remount /sys and hide the cgroup hierarchies)
against that root, with haul's CRIU. :func:`remove_containers` deletes every container of
a lab's hosts and their cgroups: a container in a network namespace of its own is in
none of the lab's namespaces, so killing those would miss it.

For tests of containers someone started with plain runc: :func:`plain_bundle` unpacks an
image by hand into a bundle, as an operator would, and :func:`run_plain` runs it with
``runc run -d`` (its stdio /dev/null); :func:`left_on` says what of a container is
still on a host, :func:`cgroup_value` reads one of its cgroup files there.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

from haul.errors import ConfigError, LabError
from haul.install_record import criu_binary, runc_binary
from haul.lab.agents import lab_cgroup_parent
from haul.lab.operator import agent_pid
from haul.lab.spec import HostSpec, LabSpec
from haul.net.spec import host_ifname
from haul.runtime.bundle import cgroup_mounts
from haul.runtime.images import UMOCI, ImageRef

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


# -- containers started outside haul, and what a container leaves behind ----------------


def plain_bundle(spec: LabSpec, host: str, image: ImageRef, name: str) -> Path:
    """A bundle unpacked by hand from ``image`` (``umoci unpack``) into the lab's
    directory, as someone would for ``runc run``: no terminal, the host's network, a
    cgroup under ``host``'s parent; no ``org.criu.config`` annotation."""
    bundle = spec.root_dir / "plain" / name
    bundle.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [str(UMOCI), "unpack", "--image", image.umoci_image, str(bundle)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise LabError(f"umoci unpack {image}: {done.stderr.strip()}")
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    config["linux"]["namespaces"] = [
        ns for ns in config["linux"]["namespaces"] if ns["type"] != "network"
    ]
    config["linux"]["cgroupsPath"] = f"{lab_cgroup_parent(spec, host)}/{name}"
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def run_plain(spec: LabSpec, host: str, bundle: Path, cid: str, root: Path) -> None:
    """``runc run -d`` of ``bundle`` as container ``cid`` under ``root`` in ``host``, its
    standard streams /dev/null (what haul can adopt); runc logs next to the bundle."""
    log = bundle.with_name(f"{bundle.name}.runc.log")
    argv = host_runc_argv(
        spec,
        spec.member(host),
        "--log",
        str(log),
        "run",
        "-d",
        "--bundle",
        str(bundle),
        cid,
        root=root,
    )
    done = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # the container keeps what runc had: nothing to wait on
        stderr=subprocess.DEVNULL,
        timeout=RUNC_TIMEOUT_S,
    )
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        raise LabError(f"runc run {cid} in {host} failed: {tail[0] if tail else 'no message'}")


def left_on(spec: LabSpec, host: str, name: str, root: Path | None = None) -> list[str]:
    """What of container ``name`` is on ``host``: runc's state of it (under the agent's
    root, or ``root`` too), mounts and its directory in the agent's state directory,
    its cgroup in any hierarchy."""
    roots = [None, root] if root is not None else [None]
    left = [
        f"runc state under {r or 'the agent root'}"
        for r in roots
        if name in container_ids(spec, host, r)
    ]
    state = str(spec.data_path / "agent" / "containers" / name) + "/"
    mounts = Path(f"/proc/{agent_pid(spec, host)}/mountinfo").read_text().splitlines()
    left += [f"mount {m.split()[4]}" for m in mounts if (m.split()[4] + "/").startswith(state)]
    if (spec.member(host).data_backing / "agent" / "containers" / name).exists():
        left.append("its directory")
    parent = lab_cgroup_parent(spec, host).strip("/")
    left += [f"cgroup {m / parent / name}" for m in cgroup_mounts() if (m / parent / name).exists()]
    return left


def cgroup_value(spec: LabSpec, host: str, name: str, controller: str, file: str) -> str:
    """One cgroup v1 file of container ``name`` on ``host`` (its cgroup under the host's
    parent), e.g. ``("memory", "memory.limit_in_bytes")``."""
    directory = Path("/sys/fs/cgroup") / controller / lab_cgroup_parent(spec, host).strip("/")
    return (directory / name / file).read_text().strip()
