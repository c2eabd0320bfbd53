"""Hooks in the agent: the [agent.hooks] table, and the hooks a migration request names
(each an executable on the source host, or a 400 in one line before anything starts)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from haul.agent.config import DEFAULT_HOOK_TIMEOUT_S, AgentConfig, load_config
from haul.agent.context import AgentContext
from haul.agent.fakes import AUTH, agent_client, make_config
from haul.agent.migration_models import MigrateAsk
from haul.agent.routes.migrations import script_hooks
from haul.cutover.hooks import HookScript
from haul.errors import ConfigError, UsageError

MakeCtx = Callable[[AgentConfig], AgentContext]


def executable(directory: Path, name: str) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_no_hooks_by_default(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert config.hooks.scripts == [] and config.hooks.timeout_s == DEFAULT_HOOK_TIMEOUT_S
    assert script_hooks(config, MigrateAsk(workload="w", to="host2")) is None


def test_hooks_table_takes_paths_from_the_config_files_directory(tmp_path: Path) -> None:
    executable(tmp_path, "log-event")
    path = tmp_path / "haul.toml"
    path.write_text(
        '[agent]\nhost = "host1"\naddress = "127.0.0.1"\n[agent.auth]\ntoken = "t"\n'
        '[agent.hooks]\nscripts = ["log-event"]\ntimeout_s = 5\n'
    )
    path.chmod(0o600)
    config = load_config(path)
    assert config.hooks.scripts == [tmp_path / "log-event"]
    assert config.hooks.timeout_s == 5


@pytest.mark.parametrize(
    ("hooks", "says"),
    [
        ({"scripts": ["missing"]}, "agent.hooks.scripts.0: {d}/missing is not an executable file"),
        (
            {"scripts": ["/bin/true", "plain"]},
            "agent.hooks.scripts.1: {d}/plain is not an executable file",
        ),
        ({"timeout_s": 0}, "agent.hooks.timeout_s: Input should be greater than 0"),
        ({"script": ["/bin/true"]}, "agent.hooks.script: Extra inputs are not permitted"),
    ],
)
def test_bad_hooks_table_is_one_line_naming_the_field(
    tmp_path: Path, hooks: dict[str, Any], says: str
) -> None:
    (tmp_path / "plain").write_text("not executable")
    with pytest.raises(ConfigError) as raised:
        make_config(tmp_path, hooks=hooks)
    assert says.format(d=tmp_path) in str(raised.value)
    assert "\n" not in str(raised.value)


def test_agent_hooks_come_first_then_the_requests_with_their_timeouts(tmp_path: Path) -> None:
    first, second = executable(tmp_path, "first"), executable(tmp_path, "second")
    config = make_config(tmp_path, hooks={"scripts": [str(first)], "timeout_s": 7})
    ask = MigrateAsk(workload="w", to="host2", hooks=[str(second)], hook_timeout_s=2.5)
    hooks = script_hooks(config, ask)
    assert hooks is not None
    assert hooks.scripts == (HookScript(first, 7), HookScript(second, 2.5))
    plain = script_hooks(config, ask.model_copy(update={"hook_timeout_s": None}))
    assert plain is not None and plain.scripts[1] == HookScript(second, 7)


@pytest.mark.parametrize(
    ("hook", "says"),
    [
        ("relative/hook", "hook 'relative/hook': give an absolute path on host1, where hooks run"),
        ("{d}/missing", "hook {d}/missing: no such file on host1"),
        ("{d}", "hook {d}: not a regular file on host1"),
        ("{d}/plain", "hook {d}/plain: not executable on host1 (chmod +x it)"),
    ],
)
def test_a_requested_hook_that_cannot_run_here_is_a_usage_error(
    tmp_path: Path, hook: str, says: str
) -> None:
    (tmp_path / "plain").write_text("#!/bin/sh\n")
    config = make_config(tmp_path)
    with pytest.raises(UsageError) as raised:
        script_hooks(config, MigrateAsk(workload="w", to="host2", hooks=[hook.format(d=tmp_path)]))
    assert str(raised.value) == says.format(d=tmp_path)


@pytest.mark.asyncio
@pytest.mark.parametrize("route", ["/v1/migrations", "/v1/migrations/check"])
async def test_the_api_refuses_a_bad_hook_with_400_before_anything_starts(
    make_ctx: MakeCtx, config: AgentConfig, tmp_path: Path, route: str
) -> None:
    ctx = make_ctx(config)
    async with agent_client(ctx) as client:
        response = await client.post(
            route,
            headers=AUTH,
            json={"workload": "w", "to": "host2", "hooks": [str(tmp_path / "nope")]},
        )
        assert response.status == 400
        body = await response.json()
        assert body["error"] == {
            "code": "usage",
            "message": f"hook {tmp_path}/nope: no such file on host1",
        }
        response = await client.post(
            route, headers=AUTH, json={"workload": "w", "to": "host2", "hook_timeout_s": 0}
        )
        assert response.status == 400
        assert "hook_timeout_s" in (await response.json())["error"]["message"]
    parts = ctx._migrations  # None where there is no usable CRIU
    assert parts is None or parts.jobs.all() == [], "no migration started"


# -- the load balancer's cutover: --lb of the request, else [agent.lb] for the workload


def test_lb_from_the_request_or_the_agents_table(tmp_path: Path) -> None:
    from haul.agent.routes.migrations import migration_hooks
    from haul.cutover.haproxy import HaproxyCutover

    config = make_config(tmp_path, lb={"web1": "haproxy:/run/h.sock:web/web-{host}"})
    from_table = migration_hooks(config, MigrateAsk(workload="web1", to="host2"))
    assert isinstance(from_table, HaproxyCutover)
    assert str(from_table.target) == "haproxy:/run/h.sock:web/web-{host}"
    asked = migration_hooks(
        config, MigrateAsk(workload="web1", to="host2", lb="haproxy:/run/other.sock:be/*")
    )
    assert isinstance(asked, HaproxyCutover) and asked.target.backend == "be"
    assert migration_hooks(config, MigrateAsk(workload="other", to="host2")) is None


@pytest.mark.parametrize(
    ("lb", "says"),
    [
        ("haproxy:relative.sock:web/web-{host}", "must be absolute"),
        ("nginx:/run/x.sock:web/a", "unknown load balancer 'nginx'"),
        ("haproxy:/run/x.sock:web/web1", "names a single server"),
    ],
)
def test_a_bad_lb_is_a_usage_error_in_one_line(tmp_path: Path, lb: str, says: str) -> None:
    from haul.agent.routes.migrations import migration_hooks

    with pytest.raises(UsageError) as raised:
        migration_hooks(make_config(tmp_path), MigrateAsk(workload="w", to="host2", lb=lb))
    assert says in str(raised.value) and "\n" not in str(raised.value)
