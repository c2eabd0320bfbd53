"""What haul asks CRIU to do, as typed options, and their RPC encoding.

An options object is frozen and complete at construction: nothing is set
afterwards. ``to_proto`` fills a ``criu_opts`` message given the directory fds
the caller opened (CRIU resolves them in the caller's fd table).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from pathlib import Path

from haul.criu.proto import rpc_pb2
from haul.errors import ConfigError


class NetworkLock(enum.Enum):
    IPTABLES = rpc_pb2.IPTABLES
    NFTABLES = rpc_pb2.NFTABLES
    SKIP = rpc_pb2.SKIP


class CgroupMode(enum.Enum):
    IGNORE = rpc_pb2.IGNORE
    NONE = rpc_pb2.CG_NONE
    PROPS = rpc_pb2.PROPS
    SOFT = rpc_pb2.SOFT
    FULL = rpc_pb2.FULL
    STRICT = rpc_pb2.STRICT
    DEFAULT = rpc_pb2.DEFAULT


class PreDumpMode(enum.Enum):
    SPLICE = rpc_pb2.SPLICE
    VM_READ = rpc_pb2.VM_READ


@dataclass(frozen=True, slots=True)
class PageServer:
    """A page server endpoint: where a dump sends pages, or where one listens.

    ``address`` "" (:data:`EVERY_ADDRESS`), for a listening page server only:
    CRIU listens on every IPv4 address of the host (it is then given none).
    """

    address: str
    port: int = 0


#: a listening page server's address meaning "every IPv4 address" (CRIU gets none)
EVERY_ADDRESS = ""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Certificates for the TLS page-server channel (PEM files).

    CRIU checks the other end's certificate against ``cacert`` (and ``cacrl``, the
    CA's revocation list, when given) and, unless ``no_cn_verify``, that it names
    CRIU's own ``address``: right for a side that connects (the address is the
    other end's), never for a side that listens (its address is its own, which no
    sender's certificate names), so a listening side takes :meth:`listening`."""

    cacert: Path
    cert: Path
    key: Path
    cacrl: Path | None = None
    no_cn_verify: bool = False

    def listening(self) -> TlsFiles:
        """These files for a side that listens: the sender's certificate is checked
        against the CA (and its revocation list), not against a name."""
        return replace(self, no_cn_verify=True)

    def config_lines(self) -> list[str]:
        """The same as CRIU configuration file lines (for a CRIU runc starts, which
        takes TLS options from nowhere else)."""
        paths = [self.cacert, self.cert, self.key, *([self.cacrl] if self.cacrl else [])]
        for path in paths:
            if any(c.isspace() for c in str(path)):
                raise ConfigError(
                    f"{path}: a CRIU configuration file takes no blanks in a path; "
                    "move the TLS files to a path without"
                )
        lines = ["tls", f"tls-cacert {self.cacert}", f"tls-cert {self.cert}"]
        lines.append(f"tls-key {self.key}")
        if self.cacrl is not None:
            lines.append(f"tls-cacrl {self.cacrl}")
        if self.no_cn_verify:
            lines.append("tls-no-cn-verify")
        return lines


@dataclass(frozen=True, slots=True)
class CgroupRoot:
    path: str
    controller: str | None = None


@dataclass(frozen=True, slots=True)
class CriuOptions:
    """Options for one CRIU request.

    ``images_dir`` must exist. ``work_dir`` (logs, stats) defaults to it.
    ``log_file`` is a bare file name inside ``work_dir``.
    ``external`` entries use CRIU's --external syntax (``veth[eth0]:hostif``,
    ``mnt[/path]:key``, ``unix[ino]``, ...).
    """

    images_dir: Path
    work_dir: Path | None = None
    log_file: str = "criu.log"
    log_level: int = 4
    pid: int | None = None
    leave_running: bool = False
    leave_stopped: bool = False
    shell_job: bool = False
    file_locks: bool = False
    link_remap: bool = False
    ext_unix_sk: bool = False
    evasive_devices: bool = False
    tcp_established: bool = False
    tcp_close: bool = False
    tcp_skip_in_flight: bool = False
    weak_sysctls: bool = False
    network_lock: NetworkLock | None = None
    external: tuple[str, ...] = ()
    page_server: PageServer | None = None
    lazy_pages: bool = False
    tls: TlsFiles | None = None
    parent_img: str | None = None
    track_mem: bool = False
    auto_dedup: bool = False
    pre_dump_mode: PreDumpMode | None = None
    manage_cgroups_mode: CgroupMode | None = None
    cgroup_roots: tuple[CgroupRoot, ...] = ()
    rst_sibling: bool = False
    root: str | None = None
    inherit_fds: tuple[tuple[str, int], ...] = ()
    skip_mounts: tuple[str, ...] = ()
    ghost_limit_bytes: int | None = None
    timeout_s: int | None = None
    config_file: Path | None = None
    orphan_pts_master: bool = False
    notify_scripts: bool = field(default=True)

    def __post_init__(self) -> None:
        if "/" in self.log_file or self.log_file in ("", ".", ".."):
            raise ValueError(f"log_file must be a bare file name, not {self.log_file!r}")
        if self.leave_running and self.leave_stopped:
            raise ValueError("leave_running and leave_stopped exclude each other")

    @property
    def log_path(self) -> Path:
        return (self.work_dir or self.images_dir) / self.log_file

    def to_proto(self, images_dir_fd: int, work_dir_fd: int | None) -> rpc_pb2.criu_opts:
        o = rpc_pb2.criu_opts(images_dir_fd=images_dir_fd)
        if work_dir_fd is not None:
            o.work_dir_fd = work_dir_fd
        o.log_file = self.log_file
        o.log_level = self.log_level
        if self.pid is not None:
            o.pid = self.pid
        for name in (
            "leave_running",
            "leave_stopped",
            "shell_job",
            "file_locks",
            "link_remap",
            "ext_unix_sk",
            "evasive_devices",
            "tcp_established",
            "tcp_close",
            "tcp_skip_in_flight",
            "weak_sysctls",
            "lazy_pages",
            "track_mem",
            "auto_dedup",
            "rst_sibling",
            "orphan_pts_master",
            "notify_scripts",
        ):
            if getattr(self, name):
                setattr(o, name, True)
        if self.network_lock is not None:
            o.network_lock = self.network_lock.value
        o.external.extend(self.external)
        if self.page_server is not None:
            if self.page_server.address != EVERY_ADDRESS:
                o.ps.address = self.page_server.address
            o.ps.port = self.page_server.port
        if self.tls is not None:
            o.tls = True
            o.tls_cacert = str(self.tls.cacert)
            o.tls_cert = str(self.tls.cert)
            o.tls_key = str(self.tls.key)
            if self.tls.cacrl is not None:
                o.tls_cacrl = str(self.tls.cacrl)
            if self.tls.no_cn_verify:
                o.tls_no_cn_verify = True
        if self.parent_img is not None:
            o.parent_img = self.parent_img
        if self.pre_dump_mode is not None:
            o.pre_dump_mode = self.pre_dump_mode.value
        if self.manage_cgroups_mode is not None:
            o.manage_cgroups = True
            o.manage_cgroups_mode = self.manage_cgroups_mode.value
        for root in self.cgroup_roots:
            entry = o.cg_root.add(path=root.path)
            if root.controller is not None:
                entry.ctrl = root.controller
        if self.root is not None:
            o.root = self.root
        for key, fd in self.inherit_fds:
            o.inherit_fd.add(key=key, fd=fd)
        o.skip_mnt.extend(self.skip_mounts)
        if self.ghost_limit_bytes is not None:
            o.ghost_limit = self.ghost_limit_bytes
        if self.timeout_s is not None:
            o.timeout = self.timeout_s
        if self.config_file is not None:
            o.config_file = str(self.config_file)
        return o
