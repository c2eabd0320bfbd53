"""haul migrate between agents that have certificates: the agents call each other over
mutual TLS, and so does CRIU for the pages (the destination's page server and the
source's dump; post-copy, the source's lazy page server and the destination's
lazy-pages daemon), for process trees and runc containers alike. A certificate of the
lab's CA is not enough by itself: a peer's may call only what peers may, and a revoked
one nothing.

What crossed the wire is captured on the destination's port of the lab's bridge
(wiresniff.py): with TLS, every connection between the hosts starts with a TLS
handshake record and a marker that sits in the workload's memory appears in none;
without TLS (the control), the same capture finds the marker in the page stream."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from haul.agent.ca import init_ca, issue, revoke
from haul.lab.agents import AGENT_PORT, CLI_CERT, agent_config_path, pki_dir, restart_agent
from haul.lab.hostrunc import container_ids, host_runc
from haul.lab.operator import run_haul
from haul.lab.spec import LabSpec
from haul.runtime.images import ImageRef

COUNTER = Path(__file__).resolve().parents[2] / "haul" / "lab" / "samples" / "counter.py"
SNIFFER = Path(__file__).resolve().parent / "wiresniff.py"
MEM_MIB = 16
TLS_RECORD = "1603"  # a handshake record, TLS 1.0-1.3 framing


@dataclass
class Counter:
    """The sample counter, its state file named after a marker that therefore sits in
    its memory (argv, and Python's copy of it)."""

    lab: LabSpec
    inventory: Path
    name: str
    marker: str

    @property
    def state_name(self) -> str:
        return f"state-{self.marker}"

    def state(self, host: str) -> Path:
        return (
            self.lab.member(host).data_backing / "agent" / "workloads" / self.name / self.state_name
        )

    def count(self, host: str) -> int:
        return int(self.state(host).read_text().split()[1])

    def wait_count_above(self, host: str, n: int, timeout_s: float = 20) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if (now := self.count(host)) > n:
                    return now
            except (FileNotFoundError, ValueError, IndexError):
                pass
            time.sleep(0.02)
        raise AssertionError(f"{self.name} on {host} did not count past {n}")

    def where(self) -> list[tuple[str, str]]:
        done = run_haul(self.inventory, "ps", "-o", "json")
        assert done.returncode == 0, done.stderr
        return [
            (str(r["host"]), str(r["name"]))
            for r in json.loads(done.stdout)
            if r.get("status") != "gone"
        ]

    def verdict(self, host: str) -> str:
        done = run_haul(self.inventory, "ps", "--host", host, "-o", "json")
        rows = [r for r in json.loads(done.stdout) if r["name"] == self.name]
        os.kill(int(rows[0]["root_pid"]), signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = self.state(host).read_text()
            if text.startswith(("PASS", "FAIL")):
                return text.strip()
            time.sleep(0.05)
        raise AssertionError("no verdict")


def start_counter(lab: LabSpec, inventory: Path, name: str) -> Counter:
    counter = Counter(lab, inventory, name, "haulmark" + secrets.token_hex(8))
    done = run_haul(
        inventory,
        "run",
        "--name",
        name,
        "--host",
        "host1",
        "--",
        sys.executable,
        "-S",
        "-E",
        str(COUNTER),
        counter.state_name,
        "--mem-mib",
        str(MEM_MIB),
    )
    assert done.returncode == 0, done.stderr
    counter.wait_count_above("host1", 2)
    return counter


def migrate(counter: Counter, src: str, dst: str, strategy: str) -> dict[str, object]:
    before = counter.count(src)
    done = run_haul(
        counter.inventory,
        "migrate",
        counter.name,
        "--to",
        dst,
        "--strategy",
        strategy,
        "-o",
        "json",
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    assert result["outcome"] == "done" and result["strategy"] == strategy
    assert counter.where() == [(dst, counter.name)], "exactly one copy, on the destination"
    assert not counter.state(src).exists(), "nothing left on the source"
    assert counter.wait_count_above(dst, before) > before
    return result


@dataclass
class Capture:
    flows: dict[str, dict[str, object]]
    drops: int

    def between(self, a: str, b: str) -> dict[str, dict[str, object]]:
        """The connections' directions between the two addresses."""
        return {
            k: v
            for k, v in self.flows.items()
            if {k.split(">")[0].split(":")[0], k.split(">")[1].split(":")[0]} == {a, b}
        }

    def pages(self, a: str, b: str) -> dict[str, dict[str, object]]:
        """Directions between a and b that are not the agents' API."""
        return {k: v for k, v in self.between(a, b).items() if not _port_is(k, AGENT_PORT)}


def _port_is(key: str, port: int) -> bool:
    src, dst = key.split(">")
    return int(src.split(":")[1]) == port or int(dst.split(":")[1]) == port


@contextmanager
def sniffing(lab: LabSpec, host: str, marker: str, tmp: Path) -> Iterator[list[Capture]]:
    """Capture on ``host``'s port of the bridge while the block runs."""
    out, ready = tmp / f"capture-{secrets.token_hex(3)}.json", tmp / "sniffer.ready"
    errors = tmp / "sniffer.err"
    ready.unlink(missing_ok=True)
    with errors.open("w") as stderr:
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                lab.switch_netns,
                sys.executable,
                str(SNIFFER),
                lab.member(host).switch_port,
                marker.encode().hex(),
                str(out),
                str(ready),
            ],
            stderr=stderr,
        )
    captured: list[Capture] = []
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert proc.poll() is None, f"the sniffer failed: {errors.read_text()}"
            assert time.monotonic() < deadline, "the sniffer did not start"
            time.sleep(0.02)
        yield captured
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, errors.read_text()
        data = json.loads(out.read_text())
        captured.append(Capture(flows=data["flows"], drops=int(data["drops"])))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def assert_all_tls(capture: Capture, src: str, dst: str) -> None:
    flows = capture.between(src, dst)
    assert flows, "nothing was captured between the hosts"
    for key, flow in flows.items():
        if int(flow["bytes"]) > 0:  # type: ignore[call-overload]
            assert str(flow["head"]).startswith(TLS_RECORD), f"{key} is not TLS: {flow}"
        assert flow["marker"] is False, f"{key} carried the workload's memory in clear"
    assert capture.drops == 0, "the capture missed frames"


@pytest.mark.parametrize("strategy", ["stop-and-copy", "post-copy"])
def test_tls_agents_move_the_counter_with_every_page_over_tls(
    tls_lab: tuple[LabSpec, Path],
    tmp_path: Path,
    strategy: str,
) -> None:
    lab, inventory = tls_lab
    src, dst = str(lab.host(1).address.ip), str(lab.host(2).address.ip)
    counter = start_counter(lab, inventory, "web1")
    with sniffing(lab, "host2", counter.marker, tmp_path) as captured:
        result = migrate(counter, "host1", "host2", strategy)
    capture = captured[0]
    assert_all_tls(capture, src, dst)
    pages = capture.pages(src, dst)
    if strategy == "stop-and-copy":
        # the source's dump -> the destination's page server
        carried = [v for k, v in pages.items() if k.startswith(f"{src}:")]
    else:
        # the source's lazy page server -> the destination's lazy-pages daemon
        carried = [
            v
            for k, v in pages.items()
            if k.startswith(f"{src}:") and 20000 <= int(k.split(">")[0].split(":")[1]) < 40000
        ]
    assert sum(int(v["bytes"]) for v in carried) >= MEM_MIB << 20, (  # type: ignore[call-overload]
        f"the workload's memory did not cross on a page channel: {pages}"
    )
    assert int(result["downtime_ms"]) > 0  # type: ignore[call-overload]
    migrate(counter, "host2", "host1", strategy)  # and back
    assert counter.verdict("host1").startswith("PASS")


def test_without_tls_the_capture_sees_the_memory_in_clear(
    lab_with_agents: tuple[LabSpec, Path],
    tmp_path: Path,
) -> None:
    """The control: the capture above can tell clear pages from encrypted ones."""
    lab, inventory = lab_with_agents
    src, dst = str(lab.host(1).address.ip), str(lab.host(2).address.ip)
    counter = start_counter(lab, inventory, "web0")
    with sniffing(lab, "host2", counter.marker, tmp_path) as captured:
        migrate(counter, "host1", "host2", "stop-and-copy")
    pages = captured[0].pages(src, dst)
    clear = [k for k, v in pages.items() if v["marker"] is True]
    assert clear, f"the marker was not seen in the page stream: {pages}"
    assert not any(str(pages[k]["head"]).startswith(TLS_RECORD) for k in clear)
    assert counter.verdict("host2").startswith("PASS")


def _stranger(tmp_path: Path, host: str, ip: str | None = None) -> tuple[Path, Path, Path]:
    """A certificate for ``host`` from a CA of its own (ca, cert, key)."""
    pki = tmp_path / "stranger"
    if not (pki / "ca.crt").exists():
        init_ca(pki, name="not the lab's CA")
    pair = issue(pki, host, [ip] if ip else [])
    return pki / "ca.crt", pair.cert, pair.key


def test_a_certificate_from_another_ca_is_refused_and_nothing_moves(
    tls_lab: tuple[LabSpec, Path],
    tmp_path: Path,
) -> None:
    lab, inventory = tls_lab
    counter = start_counter(lab, inventory, "web2")
    hosts = tomllib.loads(inventory.read_text())["hosts"]

    def over_tcp(cert: Path, key: Path, name: str) -> Path:
        """An inventory for the lab's client namespace: the agents' https URLs."""
        lines = []
        for host, entry in hosts.items():
            lines += [
                f"[hosts.{host}]",
                f'url = "{entry["peer_url"]}"',
                f'ca = "{entry["ca"]}"',
                f'cert = "{cert}"',
                f'key = "{key}"',
                "",
            ]
        path = tmp_path / name
        path.write_text("\n".join(lines))
        return path

    # The CLI with the lab's certificate, over TCP from the client namespace: it works.
    lab_cli = over_tcp(Path(hosts["host1"]["cert"]), Path(hosts["host1"]["key"]), "cli.toml")
    assert Path(hosts["host1"]["cert"]).name == f"{CLI_CERT}.crt"
    done = run_haul(lab_cli, "ps", "-o", "json", netns=lab.client.netns)
    assert done.returncode == 0, done.stderr
    assert [(r["host"], r["name"]) for r in json.loads(done.stdout)] == [("host1", "web2")]

    # The same with a certificate from another CA: refused, in one line; nothing moves.
    _, cert, key = _stranger(tmp_path, CLI_CERT)
    done = run_haul(
        over_tcp(cert, key, "stranger.toml"),
        "migrate",
        "web2",
        "--to",
        "host2",
        "--from",
        "host1",
        netns=lab.client.netns,
    )
    assert done.returncode != 0 and done.stderr.count("\n") == 1, done.stderr
    assert "10.77.0.1" in done.stderr  # the agent that refused it
    assert "refuses a client certificate" in done.stderr, done.stderr
    assert counter.where() == [("host1", "web2")]
    n = counter.count("host1")
    assert counter.wait_count_above("host1", n) > n

    # host1's own agent with a certificate from another CA (naming its address): host2's
    # agent refuses it, so a migration it drives fails before anything is touched.
    config_path = agent_config_path(lab.host(1))
    good = config_path.read_text()
    _, cert, key = _stranger(tmp_path, "host1", str(lab.host(1).address.ip))
    own = tomllib.loads(good)["agent"]["tls"]
    config_path.write_text(good.replace(own["cert"], str(cert)).replace(own["key"], str(key)))
    asyncio.run(restart_agent(lab, "host1"))
    done = run_haul(inventory, "migrate", "web2", "--to", "host2", "-o", "json")
    assert done.returncode in (1, 3), done.stderr
    assert json.loads(done.stdout)["outcome"] in ("refused", "rolled-back")
    assert counter.where() == [("host1", "web2")]
    assert not list((lab.host(2).data_backing / "agent").glob("incoming/*")), "host2 is clean"
    n = counter.count("host1")
    assert counter.wait_count_above("host1", n) > n

    # With its own certificate back, the next migration goes through.
    config_path.write_text(good)
    asyncio.run(restart_agent(lab, "host1"))
    migrate(counter, "host1", "host2", "stop-and-copy")
    assert counter.verdict("host2").startswith("PASS")


def test_a_peers_certificate_is_only_a_peer_and_a_revoked_one_nothing(
    tls_lab: tuple[LabSpec, Path],
    tmp_path: Path,
) -> None:
    """Any certificate of the lab's CA is not enough (docs/security.md): host2's own,
    used from the client namespace, may not run or list anything on host1; once host1's
    certificate is revoked, host2 takes nothing from host1's agent, so a migration it
    drives is refused before anything is touched; a new certificate lets it through."""
    lab, inventory = tls_lab
    counter = start_counter(lab, inventory, "web3")
    pki = pki_dir(lab.prefix)
    hosts = tomllib.loads(inventory.read_text())["hosts"]
    as_host2 = tmp_path / "as-host2.toml"
    as_host2.write_text(
        f'[hosts.host1]\nurl = "{hosts["host1"]["peer_url"]}"\nca = "{pki / "ca.crt"}"\n'
        f'cert = "{pki / "host2.crt"}"\nkey = "{pki / "host2.key"}"\n'
    )
    ran = run_haul(
        as_host2, "run", "--name", "evil", "--host", "host1", "--", "true", netns=lab.client.netns
    )
    assert ran.returncode != 0 and ran.stderr.count("\n") == 1, ran.stderr
    assert "peer host2 may not call POST /v1/workloads" in ran.stderr
    listed = run_haul(as_host2, "ps", "--host", "host1", netns=lab.client.netns)
    assert listed.returncode != 0 and "peer host2 may not call" in listed.stderr
    assert counter.where() == [("host1", "web3")], "nothing was started"

    revoke(pki, "host1")  # host2's agent reads the list again at its next request
    refused = run_haul(inventory, "migrate", "web3", "--to", "host2", "-o", "json")
    assert refused.returncode in (1, 3), refused.stderr
    assert "revoked" in refused.stderr + refused.stdout
    assert counter.where() == [("host1", "web3")]
    assert not list((lab.host(2).data_backing / "agent").glob("incoming/*")), "host2 is clean"
    n = counter.count("host1")
    assert counter.wait_count_above("host1", n) > n

    issue(pki, "host1", [str(lab.host(1).address.ip)], overwrite=True)  # a new serial
    asyncio.run(restart_agent(lab, "host1"))
    migrate(counter, "host1", "host2", "stop-and-copy")
    assert counter.verdict("host2").startswith("PASS")


@pytest.mark.parametrize("strategy", ["stop-and-copy", "post-copy"])
def test_a_container_moves_between_tls_agents_with_its_pages_over_tls(
    tls_lab: tuple[LabSpec, Path],
    busybox_image: ImageRef,
    tmp_path: Path,
    strategy: str,
) -> None:
    """runc gives CRIU no TLS options; haul's CRIU configuration files do, so a
    container's pages cross encrypted too, and a marker in its shell's memory is seen on
    no connection between the hosts."""
    lab, inventory = tls_lab
    layout = lab.root_dir / "images" / "busybox"
    shutil.copytree(busybox_image.layout, layout)
    marker = "haulmark" + secrets.token_hex(8)
    script = f"m={marker}; i=0; while true; do i=$((i+1)); echo $i > /data/count; sleep 0.1; done"
    done = run_haul(
        inventory,
        "run",
        "--name",
        "tc1",
        "--host",
        "host1",
        "--runtime",
        "runc",
        "--image",
        f"oci:{layout}",
        "--",
        "/bin/sh",
        "-c",
        script,
    )
    assert done.returncode == 0, done.stderr
    src, dst = str(lab.host(1).address.ip), str(lab.host(2).address.ip)
    with sniffing(lab, "host2", marker, tmp_path) as captured:
        moved = run_haul(
            inventory, "migrate", "tc1", "--to", "host2", "--strategy", strategy, "-o", "json"
        )
    assert moved.returncode == 0, moved.stderr + moved.stdout
    assert json.loads(moved.stdout)["outcome"] == "done"
    assert container_ids(lab, "host2") == ["tc1"] and container_ids(lab, "host1") == []
    capture = captured[0]
    assert_all_tls(capture, src, dst)
    pages = capture.pages(src, dst)
    assert any(int(v["bytes"]) > 0 for v in pages.values()), f"no page channel: {pages}"  # type: ignore[call-overload]
    counted = host_runc(lab, "host2", "exec", "tc1", "/bin/cat", "/data/count")
    assert counted.returncode == 0 and int(counted.stdout.strip()) > 0
    killed = run_haul(inventory, "kill", "tc1", "--host", "host2")
    assert killed.returncode == 0, killed.stderr
