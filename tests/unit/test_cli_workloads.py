"""`haul run` and `haul adopt` refuse what cannot be meant before asking any agent; the
table's short image names."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from haul.cli import app
from haul.cli_workloads import short_image
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
        (["--mount", "/a:/b", "--", "/bin/true"], "--mount: only with --runtime runc"),
        (["--runtime", "runc", "--image", "oci:/i", "--mount", "/a"], "give SRC:DST or SRC:DST:ro"),
        (["--runtime", "runc", "--image", "oci:/i", "--mount", "/a:/b:rw"], "SRC:DST:ro"),
        (
            ["--runtime", "runc", "--image", "oci:/i", "--mount", "a:/b"],
            "--mount 'a:/b': source: must be an absolute path",
        ),
        (
            ["--runtime", "runc", "--image", "oci:/i", "--mount", "/a:/"],
            "may not be the container's root",
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
