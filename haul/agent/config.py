"""The agent's configuration: the ``[agent]`` table of haul's TOML file.

The file (default ``/etc/haul/haul.toml``) may hold other tables for other
parts of haul; the agent reads only ``[agent]`` and refuses keys it does not
know there, so a typo is an error, not a silently ignored setting. Relative
paths are taken from the file's own directory. A token file is read once, at
load, and must not be readable by group or others.

Every loading error is one :class:`~haul.errors.ConfigError` line naming the
file and the field: ``/etc/haul/haul.toml: agent.port: ...``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from haul.criu.options import TlsFiles
from haul.errors import ConfigError, UsageError
from haul.install_record import criu_binary, runc_binary
from haul.nsexec import HostNs

DEFAULT_CONFIG_PATH = Path("/etc/haul/haul.toml")
DEFAULT_STATE_DIR = Path("/var/lib/haul/agent")
DEFAULT_SOCKET = Path("/run/haul/agent.sock")
DEFAULT_PORT = 7477
DEFAULT_MIN_FREE_MIB = 512
DEFAULT_HOOK_TIMEOUT_S = 30.0

HOST_NAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_NETNS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")


def _loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


def _host_name(value: str) -> str:
    if not HOST_NAME_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a host name (letters, digits, '-' and '.')")
    return value


def _ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def _netns_name(value: str) -> str:
    if not _NETNS_RE.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"{value!r} is not a network namespace name")
    return value


def _peer_url(value: str) -> str:
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        raise ValueError(f"{value!r} has a bad port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not http(s)://HOST:PORT")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{value!r} must be only http(s)://HOST:PORT (no path, no user)")
    return value.rstrip("/")


def _cgroup_path(value: str) -> str:
    parts = value.split("/")
    if not re.fullmatch(r"(/[A-Za-z0-9_.-]{1,64}){1,8}", value) or "." in parts or ".." in parts:
        raise ValueError(f"{value!r} is not a cgroup path like /haul/host1")
    return value


HostName = Annotated[str, AfterValidator(_host_name)]
IpAddress = Annotated[str, AfterValidator(_ip_address)]
NetnsName = Annotated[str, AfterValidator(_netns_name)]
IfName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,15}$")]
PeerUrl = Annotated[str, AfterValidator(_peer_url)]
CgroupPath = Annotated[str, AfterValidator(_cgroup_path)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Token(_Section):
    """A bearer token: inline, or in a file only root can read (read at load)."""

    token: SecretStr | None = None
    token_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> _Token:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give token or token_file, not both")
        if self.token is not None and not self.token.get_secret_value().strip():
            raise ValueError("token is empty")
        return self

    def bearer_token(self) -> str | None:
        """The token (read from token_file at load), or None."""
        return self.token.get_secret_value().strip() if self.token is not None else None


class AuthConfig(_Token):
    """The operators' credentials besides root on the unix socket (docs/security.md):
    the operator token (``token``/``token_file``), and the names of the client
    certificates that are operators'. A peer's credentials are in its [agent.peers]
    entry, never here: whoever holds these may do everything on this host."""

    #: client certificates (their common name, as ``haul ca issue NAME`` made them)
    #: whose holders are operators
    operators: list[HostName] = Field(default_factory=list, max_length=64)


class TlsConfig(_Section):
    """Mutual TLS on the TCP listener: callers need a certificate signed by ``ca``.

    The same files serve this agent's calls to https peers and, in migrations
    between two agents with certificates, CRIU's page channels (which check
    that a certificate names the address the pages go to: ``cert`` must name
    the advertised address, ``haul ca issue HOST --ip ADDRESS``).
    """

    ca: Path
    cert: Path
    #: must not be readable by group or others (checked at load)
    key: Path
    #: the CA's certificate revocation list (``haul ca revoke`` writes it): a client
    #: certificate it names is refused at the TLS handshake and, the file being read
    #: again when it changes, at every request; CRIU checks it on the page channels
    crl: Path | None = None

    def files(self) -> TlsFiles:
        """The files as CRIU takes them."""
        return TlsFiles(cacert=self.ca, cert=self.cert, key=self.key, cacrl=self.crl)


class PeerConfig(_Token):
    """How this agent reaches another host's agent (for migrations it drives).

    ``url`` is the peer's TCP listener; over https the peer checks this
    agent's own certificate (``[agent.tls]``), so a token is optional there.
    ``token`` is what this agent sends when it calls the peer; ``inbound_token``
    is what the peer sends when it calls this agent, and makes the caller that peer
    (over plain HTTP, where there is no certificate to name it: a lab, or loopback).
    Over TLS the peer is the client certificate whose name is the entry's key.
    """

    url: PeerUrl
    inbound_token: SecretStr | None = None
    inbound_token_file: Path | None = None

    @model_validator(mode="after")
    def _one_inbound_source(self) -> PeerConfig:
        if self.inbound_token is not None and self.inbound_token_file is not None:
            raise ValueError("give inbound_token or inbound_token_file, not both")
        if self.inbound_token is not None and not self.inbound_token.get_secret_value().strip():
            raise ValueError("inbound_token is empty")
        return self

    def inbound(self) -> str | None:
        """The token this peer calls this agent with (read from its file at load), or None."""
        if self.inbound_token is None:
            return None
        return self.inbound_token.get_secret_value().strip()


class HostNsConfig(_Section):
    """The namespaces of the host this agent serves, when it is a lab host."""

    netns: NetnsName | None = None
    mntns: Path | None = None

    def host_ns(self) -> HostNs:
        return HostNs(net=self.netns, mnt=self.mntns)


class HooksConfig(_Section):
    """Hook executables run (on this host) for every migration this agent drives as the
    source, before any ``haul migrate --hook``; see haul/cutover/hooks.py."""

    #: absolute paths (or relative to the config file's directory), run in this order
    scripts: list[Path] = Field(default_factory=list, max_length=32)
    #: each script's time limit; also the default for ``haul migrate --hook``
    timeout_s: float = Field(default=DEFAULT_HOOK_TIMEOUT_S, gt=0, le=3600)


class RuncConfig(_Section):
    """OCI containers run by runc on this host (``haul run --runtime runc``)."""

    #: the directories a container's image layout, bundle or root filesystem may be
    #: in, and the host paths it may bind-mount read-only (``haul run --mount``), as
    #: this host sees them (none: containers can be started from nothing)
    allowed_roots: list[Path] = Field(default_factory=list, max_length=64)
    #: the cgroup every container's own cgroup goes under (``PARENT/NAME``); it must
    #: differ between hosts sharing one machine's cgroups. Default: ``/haul/<host>``
    cgroup_parent: CgroupPath | None = None
    #: runc's state directory for the containers haul starts; default: ``STATE/runc``
    root: Path | None = None
    #: the runc binary; default: the one the installer recorded
    #: (haul.install_record.runc_binary)
    binary: Path | None = None
    #: false: this host runs no containers (process trees only); containers are
    #: neither started nor moved here
    enabled: bool = True


class LimitsConfig(_Section):
    """What the agent takes at once, and how much and how long an incoming migration
    may take (docs/limits.md)."""

    #: incoming migrations open here at once (receiving, or a restored copy waiting for
    #: its source's decision); one more is a 429
    max_incoming: int = Field(default=8, ge=1, le=1024)
    #: migrations this agent runs as their source at once; one more is a 429
    max_migrations: int = Field(default=4, ge=1, le=1024)
    #: an incoming migration that has not restored and made no progress for this long
    #: (nothing arrived, no call about it, no page written) is discarded
    incoming_idle_s: float = Field(default=300.0, gt=0, le=86400, allow_inf_nan=False)
    #: an incoming migration not restored this long after it was opened is discarded
    incoming_deadline_s: float = Field(default=21600.0, gt=0, le=7 * 86400, allow_inf_nan=False)
    #: an incoming migration may hold this many times the bytes its pre-flight claimed
    #: (the workload's memory and files), plus upload_slack_bytes
    upload_margin: float = Field(default=1.25, ge=1.0, le=100.0, allow_inf_nan=False)
    upload_slack_bytes: int = Field(default=64 << 20, ge=0, le=1 << 50)
    #: free space kept in the state directory's file system for the journal: what
    #: arrives for a migration may not take it
    journal_reserve_bytes: int = Field(default=64 << 20, ge=0, le=1 << 50)

    @model_validator(mode="after")
    def _deadline_after_idle(self) -> LimitsConfig:
        if self.incoming_deadline_s < self.incoming_idle_s:
            raise ValueError(
                f"incoming_deadline_s ({self.incoming_deadline_s:g}) is shorter than "
                f"incoming_idle_s ({self.incoming_idle_s:g})"
            )
        return self


class AgentConfig(_Section):
    #: the name this agent answers to (and the name in its certificate)
    host: HostName = Field(default_factory=socket.gethostname)
    #: the TCP listener: address and port (0: any free port)
    address: IpAddress = "0.0.0.0"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    #: the unix socket for local callers (root only, mode 0600)
    socket: Path = DEFAULT_SOCKET
    #: everything the agent writes lives here
    state_dir: Path = DEFAULT_STATE_DIR
    #: the CRIU binary; default: the one the installer recorded (haul.install_record.criu_binary)
    criu: Path | None = None
    #: /readyz fails when the state directory's file system has less free space than this
    min_free_mib: int = Field(default=DEFAULT_MIN_FREE_MIB, ge=0)
    auth: AuthConfig = AuthConfig()
    tls: TlsConfig | None = None
    host_ns: HostNsConfig | None = None
    #: the address other hosts reach this agent at (and send migrated pages to);
    #: default: ``address``, unless that is a wildcard (0.0.0.0 or ::)
    advertise_address: IpAddress | None = None
    #: the other hosts' agents, by host name: how this agent reaches them
    peers: dict[HostName, PeerConfig] = Field(default_factory=dict)
    #: the bridge that workloads with an address of their own are attached to (their
    #: veth's host end); it must hold this host's uplink (see haul/net/spec.py).
    #: None: workloads here share the host's network and cannot be given an address
    bridge: IfName | None = None
    #: hook executables for the migrations this agent drives
    hooks: HooksConfig = HooksConfig()
    #: a copy restored here that has heard neither commit nor abort for this long asks
    #: its source agent what was decided (and so does a restarted agent, at once)
    ask_source_after_s: float = Field(default=30.0, gt=0, le=86400)
    #: per workload: the load balancer its migrations cut over,
    #: ``haproxy:SOCKET:BACKEND/SERVER[,addr]`` (see haul/cutover/lb_spec.py)
    lb: dict[str, str] = Field(default_factory=dict)
    runc: RuncConfig = RuncConfig()
    limits: LimitsConfig = LimitsConfig()
    #: directories where a migration's pages may wait for the destination (``haul migrate
    #: --shared-dir``, which both hosts see): a peer may name only a path inside one
    shared_dirs: list[Path] = Field(default_factory=list, max_length=32)
    #: true only for a lab on one machine: lets the TCP listener go beyond loopback
    #: without TLS, and take tokens there (docs/security.md)
    insecure_lab: bool = False

    @model_validator(mode="after")
    def _operators_are_not_peers(self) -> AgentConfig:
        for name in self.auth.operators:
            if name in self.peers:
                raise ValueError(
                    f"{name} is both an operator (auth.operators) and a peer (peers.{name}); "
                    "a peer's certificate must not be an operator's"
                )
        return self

    @model_validator(mode="after")
    def _tcp_needs_auth(self) -> AgentConfig:
        if self.tls is None and self.auth.token is None and self.auth.token_file is None:
            raise ValueError(
                "the TCP listener needs a way to authenticate callers: "
                "set auth.token, auth.token_file or the [agent.tls] table"
            )
        return self

    @model_validator(mode="after")
    def _plain_tcp_stays_on_loopback(self) -> AgentConfig:
        if self.tls is None and not self.insecure_lab and not _loopback(self.address):
            raise ValueError(
                f"agent.address {self.address} reaches beyond this host and there is no "
                "[agent.tls]: tokens and pages would cross the network in clear text; "
                "set up TLS (haul ca init; haul ca issue HOST --ip ADDRESS), listen on "
                "127.0.0.1, or, for a lab on one machine only, set insecure_lab = true"
            )
        return self

    @model_validator(mode="after")
    def _addresses_and_peers(self) -> AgentConfig:
        if (
            self.advertise_address is not None
            and ipaddress.ip_address(self.advertise_address).is_unspecified
        ):
            raise ValueError(
                f"advertise_address {self.advertise_address} is a wildcard; "
                "give the address other hosts reach this agent at"
            )
        if self.host in self.peers:
            raise ValueError(f"peers: {self.host!r} is this agent's own host name")
        return self

    def advertised_address(self) -> str | None:
        """The address other hosts reach this agent at, or None when it is not known."""
        if self.advertise_address is not None:
            return self.advertise_address
        if ipaddress.ip_address(self.address).is_unspecified:
            return None
        return self.address

    def peer(self, host: str) -> PeerConfig:
        """How to reach ``host``'s agent (raises ConfigError when it is not a peer)."""
        try:
            return self.peers[host]
        except KeyError:
            known = ", ".join(sorted(self.peers)) or "none"
            raise ConfigError(f"agent.peers: no peer {host!r} (known: {known})") from None

    def host_namespaces(self) -> HostNs:
        return self.host_ns.host_ns() if self.host_ns is not None else HostNs()

    def criu_path(self) -> Path:
        """The CRIU binary the agent runs (raises ConfigError when there is none)."""
        if self.criu is None:
            return criu_binary()
        if not (self.criu.is_file() and os.access(self.criu, os.X_OK)):
            raise ConfigError(f"agent.criu: {self.criu} is not an executable file")
        return self.criu

    def runc_path(self) -> Path:
        """The runc binary the agent runs (raises ConfigError when there is none)."""
        if self.runc.binary is None:
            return runc_binary()
        if not (self.runc.binary.is_file() and os.access(self.runc.binary, os.X_OK)):
            raise ConfigError(f"agent.runc.binary: {self.runc.binary} is not an executable file")
        return self.runc.binary

    @property
    def workloads_dir(self) -> Path:
        return self.state_dir / "workloads"

    @property
    def runc_root(self) -> Path:
        return self.runc.root if self.runc.root is not None else self.state_dir / "runc"

    @property
    def cgroup_parent(self) -> str:
        return self.runc.cgroup_parent or f"/haul/{self.host}"

    @property
    def journal_dir(self) -> Path:
        return self.state_dir / "journal"

    @property
    def min_free_bytes(self) -> int:
        return self.min_free_mib * 2**20


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(["agent", *(str(part) for part in loc)])


def _first_line(text: str) -> str:
    return " ".join(text.split())


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        msg = _first_line(str(error["msg"])).removeprefix("Value error, ")
        parts.append(f"{_loc(error['loc'])}: {msg}" if error["loc"] else f"agent: {msg}")
    return "; ".join(parts)


def _resolve(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else base / path


def _with_paths_from(config: AgentConfig, base: Path) -> AgentConfig:
    """Take every relative path in ``config`` from ``base`` (the config file's directory)."""
    update: dict[str, Any] = {
        "socket": _resolve(base, config.socket),
        "state_dir": _resolve(base, config.state_dir),
    }
    if config.criu is not None:
        update["criu"] = _resolve(base, config.criu)
    if config.auth.token_file is not None:
        update["auth"] = config.auth.model_copy(
            update={"token_file": _resolve(base, config.auth.token_file)}
        )
    if config.tls is not None:
        update["tls"] = TlsConfig(
            ca=_resolve(base, config.tls.ca),
            cert=_resolve(base, config.tls.cert),
            key=_resolve(base, config.tls.key),
            crl=_resolve(base, config.tls.crl) if config.tls.crl is not None else None,
        )
    if config.host_ns is not None and config.host_ns.mntns is not None:
        update["host_ns"] = config.host_ns.model_copy(
            update={"mntns": _resolve(base, config.host_ns.mntns)}
        )
    runc = config.runc
    if runc.allowed_roots or runc.root is not None or runc.binary is not None:
        update["runc"] = runc.model_copy(
            update={
                "allowed_roots": [_resolve(base, p) for p in runc.allowed_roots],
                "root": _resolve(base, runc.root) if runc.root else None,
                "binary": _resolve(base, runc.binary) if runc.binary else None,
            }
        )
    if config.shared_dirs:
        update["shared_dirs"] = [_resolve(base, p) for p in config.shared_dirs]
    if config.hooks.scripts:
        update["hooks"] = config.hooks.model_copy(
            update={"scripts": [_resolve(base, p) for p in config.hooks.scripts]}
        )
    if any(
        peer.token_file is not None or peer.inbound_token_file is not None
        for peer in config.peers.values()
    ):
        update["peers"] = {
            name: peer.model_copy(
                update={
                    "token_file": _resolve(base, peer.token_file) if peer.token_file else None,
                    "inbound_token_file": _resolve(base, peer.inbound_token_file)
                    if peer.inbound_token_file
                    else None,
                }
            )
            for name, peer in config.peers.items()
        }
    return config.model_copy(update=update)


def check_private(where: str, field: str, path: Path) -> None:
    """A secret's file (a token, a private key) must not be open to group or others."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"{where}: {field}: cannot read {path}: {exc.strerror}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{where}: {field}: {path} is readable by others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it"
        )


def _read_token_file(where: str, path: Path, field: str = "agent.auth.token_file") -> str:
    check_private(where, field, path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{where}: {field}: cannot read {path}: {exc.strerror}") from exc
    token = text.strip()
    if not token:
        raise ConfigError(f"{where}: {field}: {path} is empty")
    return token


def _check_tls_files(where: str, tls: TlsConfig) -> None:
    for field in ("ca", "cert", "key", "crl"):
        path: Path | None = getattr(tls, field)
        if path is not None and not path.is_file():
            raise ConfigError(f"{where}: agent.tls.{field}: {path} is not a file")
    check_private(where, "agent.tls.key", tls.key)
    if tls.crl is not None:
        from haul.agent.ca import crl_serials

        try:
            crl_serials(tls.crl, tls.ca)
        except ConfigError as exc:
            raise ConfigError(f"{where}: agent.tls.crl: {exc.message}") from None


def _check_hooks(where: str, config: AgentConfig) -> None:
    from haul.cutover.hooks import check_hook_path

    for i, path in enumerate(config.hooks.scripts):
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(f"{where}: agent.hooks.scripts.{i}: {path} is not an executable file")
        try:
            check_hook_path(path, host=config.host)
        except UsageError as exc:
            raise ConfigError(f"{where}: agent.hooks.scripts.{i}: {exc.message}") from None


def _read_inbound_tokens(where: str, config: AgentConfig) -> AgentConfig:
    """Each peer's inbound token read from its file; each must be the peer's own."""
    peers = {}
    for name, peer in config.peers.items():
        if peer.inbound_token_file is not None:
            field = f"agent.peers.{name}.inbound_token_file"
            read = _read_token_file(where, peer.inbound_token_file, field)
            peer = peer.model_copy(update={"inbound_token": SecretStr(read)})
        peers[name] = peer
    operator = config.auth.bearer_token()
    seen: dict[str, str] = {}
    for name, peer in peers.items():
        if operator is not None and peer.bearer_token() == operator:
            raise ConfigError(
                f"{where}: agent.peers.{name}.token is this agent's operator token: agents "
                "sharing one are each other's operators; give each pair a token of its own "
                f"(the inbound_token of this host's entry on {name})"
            )
        token = peer.inbound()
        if token is None:
            continue
        if operator is not None and token == operator:
            raise ConfigError(
                f"{where}: agent.peers.{name}.inbound_token is the operator token "
                "(agent.auth); give each peer a token of its own"
            )
        if token in seen:
            raise ConfigError(
                f"{where}: agent.peers: {seen[token]} and {name} present the same "
                "inbound_token; give each peer a token of its own"
            )
        seen[token] = name
    return config.model_copy(update={"peers": peers})


def certificate_addresses(path: Path) -> set[str]:
    """The IP addresses a PEM certificate names (its subject alternative names)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a PEM certificate: {exc}") from exc
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def _check_cert_names(where: str, config: AgentConfig) -> None:
    """The agent's certificate must name the address other hosts reach it at: agents
    calling it over https check that, and so does CRIU on every TLS page channel."""
    if config.tls is None:
        return
    address = config.advertised_address()
    if address is None:
        return
    try:
        named = certificate_addresses(config.tls.cert)
    except ConfigError as exc:
        raise ConfigError(f"{where}: agent.tls.cert: {exc.message}") from None
    if address not in named:
        raise ConfigError(
            f"{where}: agent.tls.cert: {config.tls.cert} does not name {address}, the "
            f"address other hosts reach this agent at (it names "
            f"{', '.join(sorted(named)) or 'no address'}); issue one that does: "
            f"haul ca issue {config.host} --ip {address}"
        )


def parse_config(
    data: dict[str, Any], *, where: str = "config", base: Path | None = None
) -> AgentConfig:
    """Validate a parsed TOML document (its ``[agent]`` table) into an AgentConfig.

    ``where`` names the source in error messages; ``base`` is the directory
    relative paths are taken from (default: the current directory).
    """
    section = data.get("agent", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: agent: must be a table ([agent])")
    try:
        config = AgentConfig.model_validate(section)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_describe(exc)}") from None
    config = _with_paths_from(config, base if base is not None else Path.cwd())
    if config.auth.token_file is not None:
        token = _read_token_file(where, config.auth.token_file)
        config = config.model_copy(
            update={"auth": config.auth.model_copy(update={"token": SecretStr(token)})}
        )
    if any(peer.token_file is not None for peer in config.peers.values()):
        peers = {}
        for name, peer in config.peers.items():
            if peer.token_file is not None:
                token = _read_token_file(where, peer.token_file, f"agent.peers.{name}.token_file")
                peer = peer.model_copy(update={"token": SecretStr(token)})
            peers[name] = peer
        config = config.model_copy(update={"peers": peers})
    config = _read_inbound_tokens(where, config)
    if config.tls is not None:
        _check_tls_files(where, config.tls)
        _check_cert_names(where, config)
    _check_hooks(where, config)
    return config


def load_config(path: Path | None = None) -> AgentConfig:
    """Read and validate the agent's configuration from ``path`` (default /etc/haul/haul.toml)."""
    path = path if path is not None else DEFAULT_CONFIG_PATH
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file (the agent's configuration; see deploy/haul.toml.example)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {_first_line(str(exc))}") from None
    return parse_config(data, where=str(path), base=path.parent.absolute())
