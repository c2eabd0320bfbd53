"""`haul run` and `haul adopt` refuse what cannot be meant before asking any agent; the
table's short image names."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from haul.cli import app
from haul.cli_workloads import parse_bytes, short_image
from haul.errors import UsageError


@pytest.mark.parametrize(
    ("image", "shown"),
    [
        ("oci:/srv/images/web:v1", "web:v1"),
        ("oci:/var/lib/haul/lab/t1/images/busybox:latest", "busybox:latest"),
        (None, "-"),
    ],
)
def test_the_table_shows_an_images_layout_name_and_tag(image: str | None, shown: str) -> None:
    assert short_image(image) == shown


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--image", "oci:/i"], "--image: only with --runtime runc"),
        (["--runtime", "runc"], "takes one of --image, --bundle and --rootfs"),
        (
            ["--runtime", "runc", "--image", "oci:/i", "--bundle", "/b"],
            "not --image and --bundle",
        ),
        ([], "give the command to run after --"),
        (["--mount", "/usr:/usr", "--", "/bin/true"], "--mount: only with --runtime runc"),
        (
            ["--runtime", "runc", "--image", "oci:/i", "--mount", "/srv:/srv:rw"],
            "only read-only mounts",
        ),
        (["--memory", "64M", "--", "sleep", "1"], "--memory: only with --runtime runc"),
        (
            ["--cpus", "1", "--pids-limit", "9", "--", "sleep", "1"],
            "--cpus, --pids-limit: only with --runtime runc",
        ),
        (["--runtime", "runc", "--image", "oci:/i", "--memory", "lots"], "--memory 'lots'"),
        (["--shared-dir", "/s", "--", "sleep", "1"], "--shared-dir: only with --runtime runc"),
        (
            ["--runtime", "runc", "--rootfs", "/r", "--shared-dir", "/s", "--", "/bin/sh"],
            "put them in the shared directory",
        ),
    ],
)
def test_run_refuses_in_one_line_before_any_call(
    tmp_path: Path, args: list[str], says: str
) -> None:
    missing = tmp_path / "no-inventory.toml"  # never read: the refusal comes first
    result = CliRunner().invoke(
        app, ["run", "--name", "w", "--host", "host1", "--hosts", str(missing), *args]
    )
    assert isinstance(result.exception, UsageError), result.output  # haul exits 2 on it
    assert says in result.exception.one_line()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["docker:web"], "give runc:CONTAINER_ID or pid:PID"),
        (["runc:"], "give runc:CONTAINER_ID or pid:PID"),
        (["pid:x"], "is not pid:NUMBER"),
        (["pid:12", "--runc-root", "/r"], "--runc-root goes with runc:ID"),
    ],
)
def test_adopt_refuses_in_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    result = CliRunner().invoke(app, ["adopt", *args, "--hosts", str(tmp_path / "none.toml")])
    assert isinstance(result.exception, UsageError), result.output
    assert says in result.exception.one_line()


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1 << 20),
        ("64M", 64 << 20),
        ("64m", 64 << 20),
        ("512KiB", 512 << 10),
        ("1.5G", 3 << 29),
        ("2 GB", 2 << 30),
        ("1T", 1 << 40),
    ],
)
def test_sizes_are_bytes_or_powers_of_1024(text: str, size: int) -> None:
    assert parse_bytes(text, "--memory") == size


@pytest.mark.parametrize("text", ["", "M", "-1M", "64X", "1e6", "64 MB extra"])
def test_a_size_that_is_none_is_refused(text: str) -> None:
    with pytest.raises(UsageError, match="--memory"):
        parse_bytes(text, "--memory")
