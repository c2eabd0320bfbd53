"""A ``haul agent`` in every lab host, and the hosts inventory that names them.

Each host's agent runs inside the host's namespaces, as it would on a machine
of its own, so every path in its configuration is as the host sees it:

- its state directory is ``<data path>/agent``, inside the host's own data
  directory (a workload's files sit at the same path on every host);
- its TCP listener is the host's lab address, port 7477; the lab token (one
  random token per lab) is its operator token (docs/security.md);
- its unix socket is ``<lab state dir>/<prefix>/agents/<host>.sock``: /run
  is shared by every mount namespace, so haul's CLI reaches it from outside;
- every other host is a peer, at ``http://<its address>:7477``. A plain lab's
  agents are ``insecure_lab``: plain HTTP beyond loopback. Each ordered pair of
  hosts has a token of its own (:func:`pair_token`, derived from the lab token):
  what one sends the other names it as that peer there, never as an operator;
- pages may wait in the lab's shared directory (``<lab dir>/shared``,
  ``haul migrate --shared-dir``), the one a peer may name.

With ``tls``, the lab also has a CA of its own in ``<lab state dir>/<prefix>/pki``
(also on /run), a certificate for each host naming its name and address, one
for the operator's CLI (``haul-cli``, the agents' one operator certificate) and
a revocation list (``crl.pem``, empty). Each agent's listener then does mutual
TLS with its host's certificate, its peers are at ``https://<address>:7477`` and
known by their certificates, and migrations between them send pages over TLS.
The inventory keeps each agent's unix socket as ``url`` (this machine's own
network namespace cannot reach the lab's addresses) and adds the CA and the
CLI's certificate for ``peer_url``: from the lab's client namespace, an
inventory with ``url = peer_url`` reaches the agents over mutual TLS.

Its configuration (mode 0600) and its log are in the host's work directory.
``up`` records each agent's PID in the ledger as soon as it is started, and
the inventory it wrote with the token's hash; ``down`` stops the agents
(SIGTERM, then SIGKILL), removes their sockets, and removes the inventory if
it still names only this lab's agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from haul.agent.ca import CA_CRL, ca_files, host_files, init_ca, issue, write_crl
from haul.agent.client import AgentAccess
from haul.agent.config import parse_config
from haul.errors import ConfigError, HaulError, LabError, UsageError
from haul.inventory import HostEntry, Inventory, load_inventory, write_inventory
from haul.lab.ledger import Ledger, state_dir
from haul.lab.spec import HOST_BRIDGE, HostSpec, LabSpec
from haul.procfs import alive, netns_inode, ns_inode, wait_gone

log = logging.getLogger(__name__)

AGENT_PORT = 7477
#: how long each agent has to answer GET /healthz on its socket after it is started
START_TIMEOUT_S = 20.0
#: how long ``down`` gives the agents to stop after SIGTERM, before SIGKILL
STOP_TIMEOUT_S = 10.0
KILL_TIMEOUT_S = 5.0
LOG_TAIL_LINES = 12
#: the certificate (in the lab's pki directory) the operator's CLI presents
CLI_CERT = "haul-cli"
_POLL_S = 0.1
#: what a lab's containers may bind-mount read-only besides the lab's directory: the
#: machine's programs and libraries, which every lab host shares (haul run --mount)
LAB_SYSTEM_ROOTS = (Path("/usr"), Path("/lib"), Path("/lib64"))


def lab_dir(prefix: str) -> Path:
    """The lab's directory under the lab state directory (on /run, seen by every host)."""
    return state_dir() / prefix


def sockets_dir(prefix: str) -> Path:
    return lab_dir(prefix) / "agents"


def agent_socket(prefix: str, host: str) -> Path:
    return sockets_dir(prefix) / f"{host}.sock"


def agent_config_path(host: HostSpec) -> Path:
    """The agent's configuration file, as haul sees it (the host sees the same path)."""
    return host.workdir / "agent.toml"


def agent_log_path(host: HostSpec) -> Path:
    return host.workdir / "agent.log"


def peer_url(host: HostSpec, tls: bool = False) -> str:
    """How the other hosts (and the client) reach this host's agent."""
    return f"{'https' if tls else 'http'}://{host.address.ip}:{AGENT_PORT}"


def pki_dir(prefix: str) -> Path:
    """The lab's CA and certificates (on /run, seen by every host)."""
    return lab_dir(prefix) / "pki"


def make_lab_pki(spec: LabSpec) -> Path:
    """A CA for the lab, a certificate for each host (its name and address) and one
    for the CLI; returns the directory. Fails if it exists."""
    directory = pki_dir(spec.prefix)
    if directory.exists():
        raise LabError(f"{directory} exists; is a lab with this prefix up?")
    lab_dir(spec.prefix).mkdir(parents=True, exist_ok=True)
    init_ca(directory, name=f"haul lab {spec.prefix} CA")
    for i in range(1, spec.hosts + 1):
        host = spec.host(i)
        issue(directory, host.name, [str(host.address.ip)])
    issue(directory, CLI_CERT, [])
    write_crl(directory)
    return directory


def shared_dir(prefix: str) -> Path:
    """Where a lab's migrations may leave their pages for the destination (on /run,
    seen by every host): the one directory its agents let a peer name."""
    return lab_dir(prefix) / "shared"


def pair_token(token: str, sender: str, receiver: str) -> str:
    """The token ``sender``'s agent calls ``receiver``'s with in a plain lab: derived
    from the lab token, so each pair has its own and none is the operator token."""
    mac = hmac.new(token.encode(), f"peer {sender} -> {receiver}".encode(), hashlib.sha256)
    return mac.hexdigest()


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _toml_str(value: object) -> str:
    # A JSON string of printable text is a valid TOML basic string.
    return json.dumps(str(value))


def agent_config_toml(
    spec: LabSpec,
    index: int,
    token: str,
    *,
    tls: bool = False,
    runc_binary: Path | None = None,
    runs_containers: bool = True,
) -> str:
    """The ``[agent]`` table for host ``index``: every path as that host sees it.
    With ``tls``, the lab's certificates (:func:`make_lab_pki`) must exist.
    ``runc_binary`` and ``runs_containers``: its ``[agent.runc]`` binary and enabled
    (default: the installer's runc; it runs containers)."""
    host = spec.host(index)
    lines = [
        "# written by 'haul lab up'; removed by 'haul lab down'",
        "[agent]",
        f"host = {_toml_str(host.name)}",
        f"address = {_toml_str(host.address.ip)}",
        f"advertise_address = {_toml_str(host.address.ip)}",
        f"port = {AGENT_PORT}",
        f"socket = {_toml_str(agent_socket(spec.prefix, host.name))}",
        f"state_dir = {_toml_str(spec.data_path / 'agent')}",
        f"bridge = {_toml_str(HOST_BRIDGE)}",
        f"shared_dirs = [{_toml_str(shared_dir(spec.prefix))}]",
        # plain HTTP beyond loopback: a lab on one machine, and nothing else
        *([] if tls else ["insecure_lab = true"]),
        "",
        "[agent.auth]",
        f"token = {_toml_str(token)}",
        *([f"operators = [{_toml_str(CLI_CERT)}]"] if tls else []),
        "",
        # containers may come from anywhere in the lab's directory (images, bundles)
        # or its shared one (a writable layer or rootfs used in place, --shared-dir)
        # and mount the machine's programs read-only (the demo's runs its Python);
        # hosts share this machine's cgroups, so each has a parent of its own
        "[agent.runc]",
        "allowed_roots = ["
        + ", ".join(
            _toml_str(p) for p in (spec.root_dir, shared_dir(spec.prefix), *LAB_SYSTEM_ROOTS)
        )
        + "]",
        f"cgroup_parent = {_toml_str(lab_cgroup_parent(spec, host.name))}",
    ]
    if runc_binary is not None:
        lines.append(f"binary = {_toml_str(runc_binary)}")
    if not runs_containers:
        lines.append("enabled = false")
    if tls:
        pki = pki_dir(spec.prefix)
        own = host_files(pki, host.name)
        lines += [
            "",
            "[agent.tls]",
            f"ca = {_toml_str(ca_files(pki).cert)}",
            f"cert = {_toml_str(own.cert)}",
            f"key = {_toml_str(own.key)}",
            f"crl = {_toml_str(pki / CA_CRL)}",
        ]
    for i in range(1, spec.hosts + 1):
        if i == index:
            continue
        peer = spec.host(i)
        lines += ["", f"[agent.peers.{peer.name}]", f"url = {_toml_str(peer_url(peer, tls))}"]
        if not tls:  # with TLS, each knows the other by its certificate
            lines += [
                f"token = {_toml_str(pair_token(token, host.name, peer.name))}",
                f"inbound_token = {_toml_str(pair_token(token, peer.name, host.name))}",
            ]
    return "\n".join(lines) + "\n"


def lab_cgroup_parent(spec: LabSpec, host: str) -> str:
    """The cgroup a lab host's containers go under: unique per lab and host."""
    return f"/haul/{spec.prefix}-{host}"


def lab_inventory(spec: LabSpec, token: str, *, tls: bool = False) -> Inventory:
    """The inventory naming every host's agent: its socket here, its address for peers
    (and with ``tls`` the CA and the CLI's certificate for that address)."""
    pki = pki_dir(spec.prefix)
    cli = host_files(pki, CLI_CERT)
    return Inventory(
        hosts={
            h.name: HostEntry(
                url=f"unix://{agent_socket(spec.prefix, h.name)}",
                peer_url=peer_url(h, tls),
                token=token,
                ca=ca_files(pki).cert if tls else None,
                cert=cli.cert if tls else None,
                key=cli.key if tls else None,
            )
            for h in (spec.host(i) for i in range(1, spec.hosts + 1))
        }
    )


def _is_lab_inventory(path: Path) -> bool:
    """Whether ``path`` holds an inventory some lab wrote (every agent on a lab socket)."""
    try:
        inventory = load_inventory(path)
    except ConfigError:
        return False
    lab_urls = f"unix://{state_dir()}/"
    return bool(inventory.hosts) and all(
        h.url.startswith(lab_urls) for h in inventory.hosts.values()
    )


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(tail) or "(empty log)"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _spawn(host: HostSpec, config: Path) -> _Polled:
    """Start the host's agent. Not an asyncio child: the agent outlives the event loop
    (and the command) that started it."""
    argv = [*host.ns.prefix(), sys.executable, "-m", "haul", "agent", "--config", str(config)]
    with agent_log_path(host).open("ab") as logfile:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            cwd="/",
            start_new_session=True,  # not in the terminal's process group: Ctrl-C spares it
        )
    _SPAWNED.append(proc)  # kept, so it is reaped and never collected while running
    return _Polled(proc)


class _HasReturncode(Protocol):
    @property
    def returncode(self) -> int | None: ...


async def _wait_healthy(
    host: HostSpec, proc: _HasReturncode, socket: Path, timeout_s: float
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with AgentAccess(f"unix://{socket}", timeout_s=2.0).client() as agent:
        while True:
            if proc.returncode is not None:
                raise LabError(
                    f"the agent on {host.name} exited with status {proc.returncode}: "
                    f"{log_tail(agent_log_path(host))}"
                )
            with contextlib.suppress(HaulError):
                if (await agent.health()).ok:
                    return
            if loop.time() >= deadline:
                raise LabError(
                    f"the agent on {host.name} did not answer on {socket} within "
                    f"{timeout_s:.0f} s: {log_tail(agent_log_path(host))}"
                )
            await asyncio.sleep(_POLL_S)


async def _wait_all_healthy(
    waits: Sequence[tuple[HostSpec, _HasReturncode, Path]], timeout_s: float
) -> None:
    try:
        async with asyncio.TaskGroup() as tg:
            for host, proc, socket in waits:
                tg.create_task(_wait_healthy(host, proc, socket, timeout_s))
    except* LabError as group:
        raise group.exceptions[0] from None


async def start_agents(
    spec: LabSpec,
    ledger: Ledger,
    *,
    inventory: Path | None = None,
    tls: bool = False,
    timeout_s: float = START_TIMEOUT_S,
) -> None:
    """Start an agent in each host and wait until each answers; write the inventory.
    With ``tls``, make the lab's CA and certificates first; the agents do mutual TLS.

    The lab's namespaces and directories must exist. Everything made is in the
    ledger before it is made, so ``lab_down`` undoes a failure half way.
    """
    if inventory is not None and inventory.exists() and not _is_lab_inventory(inventory):
        raise LabError(
            f"{inventory} exists and is not a lab's inventory; give another path or move it away"
        )
    token = secrets.token_urlsafe(32)
    ledger.token_sha256 = token_digest(token)
    ledger.record_dir(lab_dir(spec.prefix))
    sockets_dir(spec.prefix).mkdir(parents=True, exist_ok=True, mode=0o755)
    shared_dir(spec.prefix).mkdir(parents=True, exist_ok=True, mode=0o700)
    if tls:
        try:
            make_lab_pki(spec)
        except HaulError as exc:
            raise LabError(f"the lab's certificates could not be made: {exc.one_line()}") from exc
    hosts = [spec.host(i) for i in range(1, spec.hosts + 1)]
    configs: list[Path] = []
    for i, host in enumerate(hosts, start=1):
        text = agent_config_toml(spec, i, token, tls=tls)
        path = agent_config_path(host)
        try:  # a config the agent would refuse is haul's bug: say so here, not in a log
            parse_config(tomllib.loads(text), where=str(path), base=host.workdir)
        except (ConfigError, tomllib.TOMLDecodeError) as exc:
            raise LabError(f"the agent config for {host.name} is invalid: {exc}") from exc
        _write_private(path, text)
        configs.append(path)
    waits = []
    for host, config in zip(hosts, configs, strict=True):
        proc = _spawn(host, config)
        ledger.agents[host.name] = proc.pid
        ledger.save()
        waits.append((host, proc, agent_socket(spec.prefix, host.name)))
    await _wait_all_healthy(waits, timeout_s)
    log.info("lab %s: agents up on %s", spec.prefix, ", ".join(h.name for h in hosts))
    if inventory is not None:
        ledger.inventory = str(inventory)
        ledger.save()
        write_inventory(inventory, lab_inventory(spec, token, tls=tls))


def _our_agents(ledger: Ledger) -> list[int]:
    """The recorded agent PIDs that still run inside their host's network namespace."""
    spec = LabSpec(prefix=ledger.prefix, hosts=ledger.hosts)
    pids = []
    for name, pid in ledger.agents.items():
        try:
            host = spec.member(name)
        except UsageError:
            continue
        inode = netns_inode(host.netns)
        if inode is not None and ns_inode(pid, "net") == inode:  # not a reused PID
            pids.append(pid)
    return pids


def _signal(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _forget_inventory(ledger: Ledger) -> list[str]:
    """Remove the inventory ``up`` wrote if every entry still holds this lab's token."""
    if ledger.inventory is None or ledger.token_sha256 is None:
        return []
    path = Path(ledger.inventory)
    if not path.exists():
        return []
    try:
        inventory = load_inventory(path)
    except ConfigError:
        return []  # someone else's now
    entries = inventory.hosts.values()
    if entries and all(
        h.token is not None and token_digest(h.token) == ledger.token_sha256 for h in entries
    ):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            return [f"inventory {path}: {exc.strerror}"]
    return []


def stop_agents(ledger: Ledger) -> list[str]:
    """Stop the lab's agents (SIGTERM, then SIGKILL), remove their sockets and the
    inventory ``up`` wrote; return what could not be done."""
    problems: list[str] = []
    pids = _our_agents(ledger)
    _signal(pids, signal.SIGTERM)
    stubborn = wait_gone(pids, STOP_TIMEOUT_S)
    if stubborn:
        log.warning("lab %s: agents %s ignored SIGTERM; killing them", ledger.prefix, stubborn)
        _signal(stubborn, signal.SIGKILL)
        left = wait_gone(stubborn, KILL_TIMEOUT_S)
        if left:
            problems.append(f"agents {left} survived SIGKILL")
    for name in ledger.agents:
        with contextlib.suppress(FileNotFoundError):
            agent_socket(ledger.prefix, name).unlink()
    problems += _forget_inventory(ledger)
    return problems


async def restart_agent(
    spec: LabSpec, name: str, *, kill_only: bool = False, timeout_s: float = START_TIMEOUT_S
) -> int | None:
    """Kill one lab host's agent (SIGKILL, as a crash would) and, unless ``kill_only``,
    start it again with the same config; return the new PID."""
    ledger = Ledger.load(spec.prefix)
    if ledger is None:
        raise LabError(f"lab {spec.prefix!r} is not up")
    host = spec.member(name)
    old = ledger.agents.get(name)
    if old is not None and old in _our_agents(ledger):
        _signal([old], signal.SIGKILL)
        for _ in range(500):
            if not alive(old):
                break
            await asyncio.sleep(0.01)
    agent_socket(spec.prefix, name).unlink(missing_ok=True)
    if kill_only:
        return None
    proc = _spawn(host, agent_config_path(host))
    ledger.agents[name] = proc.pid
    ledger.save()
    await _wait_healthy(host, proc, agent_socket(spec.prefix, name), timeout_s)
    return proc.pid


async def reconfigure_agent(
    spec: LabSpec, name: str, *, runc_binary: Path | None = None, runs_containers: bool = True
) -> int | None:
    """Write host ``name``'s agent configuration again with these ``[agent.runc]``
    settings (its token and TLS as they were) and restart the agent; its new PID.
    Tests use it to make a host whose runc is missing, another one, or none at all."""
    path = agent_config_path(spec.member(name))
    try:
        agent = tomllib.loads(path.read_text())["agent"]
        token = str(agent["auth"]["token"])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise LabError(f"cannot read the agent config {path}: {exc}") from exc
    index = next(i for i in range(1, spec.hosts + 1) if spec.host(i).name == name)
    text = agent_config_toml(
        spec,
        index,
        token,
        tls="tls" in agent,
        runc_binary=runc_binary,
        runs_containers=runs_containers,
    )
    parse_config(tomllib.loads(text), where=str(path), base=path.parent)
    _write_private(path, text)
    return await restart_agent(spec, name)


_SPAWNED: list[subprocess.Popen[bytes]] = []


class _Polled:
    """A Popen seen through what _wait_healthy and the ledger read."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        self.pid = proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()
