"""How ``haul demo`` starts its web service, and where it finds the service's outfile.

The service is haul/lab/samples/web.py with ``--outfile``: ``ready ...`` once it
listens, its verdict after SIGTERM. It runs as one of two workloads:

- ``process``: a process tree the host's agent starts with haul's own Python; its
  outfile is in the workload's data directory (``STATE/workloads/web``), which moves
  with it.
- ``runc``: a runc container of the lab's busybox image (haul/lab/images.py), which has
  no Python. The host's Python is lent to it read-only (docs/containers.md): bind
  mounts of ``/usr``, ``/lib`` and ``/lib64`` (on these machines the last two resolve
  into ``/usr``), and of a directory in the lab holding a copy of web.py, at
  ``/opt/web``. It runs ``/usr/bin/python3`` (Debian's, found at the same path on every
  host), writes its outfile to ``/data/verdict`` inside the container, which lands in
  the container's writable layer (``STATE/containers/web/upper``): the layer that moves
  with it. The lab's agents allow those sources (haul/lab/agents.py).
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path

from haul.agent.client import AgentClient
from haul.agent.models import MountSpec, NetSpec, Runtime, WorkloadView
from haul.errors import LabError
from haul.lab.images import ensure_busybox_image
from haul.lab.samples import WEB
from haul.lab.spec import LabSpec
from haul.runtime.bundle import ContainerDirs

SERVICE = "web"
#: the interpreter the container runs, from the host's /usr
CONTAINER_PYTHON = Path("/usr/bin/python3")
#: where the copy of web.py is mounted in the container
CONTAINER_APP_DIR = "/opt/web"
#: the host's directories Python needs, mounted read-only at the same paths
SYSTEM_MOUNTS = ("/usr", "/lib", "/lib64")
#: the outfile inside the container (its image has /data for what it writes)
CONTAINER_OUTFILE = "/data/verdict"


@dataclass(frozen=True, slots=True)
class DemoService:
    """The demo's web service for one runtime, in lab ``spec``."""

    spec: LabSpec
    runtime: Runtime
    mem_mib: int
    port: int
    address: str

    def _args(self, script: str, outfile: str) -> list[str]:
        return [
            "-S",
            "-E",
            script,
            "--outfile",
            outfile,
            "--port",
            str(self.port),
            "--mem-mib",
            str(self.mem_mib),
        ]

    async def start(self, agent: AgentClient, python: str) -> WorkloadView:
        """Start it through ``agent`` (host1's); ``python``: the process tree's interpreter."""
        net = NetSpec(address=self.address, port=self.port)
        if self.runtime == "process":
            return await agent.start_workload(
                SERVICE, [python, *self._args(str(WEB), "verdict")], net=net
            )
        image = await asyncio.to_thread(
            ensure_busybox_image, self.spec.root_dir / "images" / "busybox"
        )
        apps = await asyncio.to_thread(self._copy_app)
        if not CONTAINER_PYTHON.is_file():
            raise LabError(
                f"the runc demo runs the host's {CONTAINER_PYTHON} in its container; "
                "there is none (apt-get install python3)"
            )
        mounts = [MountSpec(source=p, destination=p) for p in SYSTEM_MOUNTS if Path(p).exists()]
        mounts.append(MountSpec(source=str(apps), destination=CONTAINER_APP_DIR))
        argv = [
            str(CONTAINER_PYTHON),
            *self._args(f"{CONTAINER_APP_DIR}/{WEB.name}", CONTAINER_OUTFILE),
        ]
        return await agent.start_workload(
            SERVICE, argv, net=net, runtime="runc", image=str(image), mounts=mounts
        )

    def _copy_app(self) -> Path:
        """web.py copied into the lab's directory (which its agents allow, and which
        ``lab down`` removes)."""
        apps = self.spec.root_dir / "apps" / SERVICE
        apps.mkdir(parents=True, exist_ok=True)
        shutil.copy2(WEB, apps / WEB.name)
        return apps

    def outfile(self, host: str) -> Path:
        """Where the service's outfile is while it runs on ``host``, as haul sees it."""
        state = self.spec.member(host).data_backing / "agent"
        if self.runtime == "process":
            return state / "workloads" / SERVICE / "verdict"
        upper = ContainerDirs(state / "containers" / SERVICE).upper
        return upper / CONTAINER_OUTFILE.lstrip("/")
