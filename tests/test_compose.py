"""compose.yaml is consistent with the CLI: commands exist, ports and volumes line up.

Docker does not run on our machines, so this is what checks the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from cli.main import SERVICE_PORTS, app

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
CLI = typer.main.get_command(app)


def _resolve(args: list[str]) -> Any:
    """Parse a `mailops ...` argument list as the CLI would, without running it."""
    assert args[0] == "mailops", f"{args} does not run mailops"
    command, rest = CLI, list(args[1:])
    while hasattr(command, "commands"):  # a command group: descend by name
        assert rest, f"{args} names a command group, not a command"
        name = rest.pop(0)
        assert name in command.commands, f"no command {name!r} in {args}"
        command = command.commands[name]
    return command.make_context(command.name or "", rest)  # raises on bad options


def _commands() -> list[tuple[str, list[str]]]:
    found = []
    for name, service in SERVICES.items():
        if "command" in service:
            found.append((name, service["command"]))
        test = service.get("healthcheck", {}).get("test", [])
        if test[:2] == ["CMD", "mailops"]:
            found.append((f"{name} healthcheck", test[1:]))
    return found


@pytest.mark.parametrize(("where", "command"), _commands(), ids=[c[0] for c in _commands()])
def test_every_command_compose_runs_exists_in_the_cli(where: str, command: list[str]) -> None:
    _resolve(command)


def test_api_ports_match_the_cli_defaults_and_the_published_ports() -> None:
    for service, default_port in SERVICE_PORTS.items():
        spec = SERVICES[service]
        command = spec["command"]
        port = int(command[command.index("--port") + 1])
        assert port == default_port
        assert spec["ports"] == [f"127.0.0.1:{port}:{port}"]
        assert str(port) in spec["healthcheck"]["test"][-1]


def test_mail_ports_match_the_settings_given_to_every_container() -> None:
    env = COMPOSE["x-mailops-env"]
    assert SERVICES["dovecot"]["ports"] == [
        f"127.0.0.1:{env['MAILOPS_IMAP_PORT']}:{env['MAILOPS_IMAP_PORT']}"
    ]
    assert SERVICES["postfix"]["ports"] == [
        f"127.0.0.1:{env['MAILOPS_SMTP_PORT']}:{env['MAILOPS_SMTP_PORT']}"
    ]
    assert env["MAILOPS_MAIL_HOST"] == "dovecot"
    assert env["MAILOPS_SMTP_HOST"] == "postfix"


def test_published_host_ports_are_unique_and_on_loopback_only() -> None:
    """The placeholder master password opens every mailbox: nothing the containers serve
    may be reachable from the network before real secrets are set."""
    published = [p.rsplit(":", 1)[0] for s in SERVICES.values() for p in s.get("ports", [])]
    assert len(published) == len(set(published))
    assert all(p.startswith("127.0.0.1:") for p in published)


def test_every_named_volume_is_declared_and_mounted_at_the_state_dir() -> None:
    declared = set(COMPOSE["volumes"])
    state_dir = COMPOSE["x-mailops-env"]["MAILOPS_STATE_DIR"]
    used = set()
    for name, service in SERVICES.items():
        for mount in service.get("volumes", []):
            volume, target = mount.split(":")[:2]
            assert volume in declared, f"{name} mounts undeclared volume {volume}"
            used.add(volume)
            if name != "postgres":
                assert target == state_dir or target.startswith(state_dir + "/"), (
                    f"{name} mounts {volume} outside the state dir"
                )
    assert used == declared, f"declared but unused: {declared - used}"


def test_dependencies_wait_for_health_of_services_that_have_a_healthcheck() -> None:
    for name, service in SERVICES.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
            condition = rule["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in SERVICES[dependency], (
                    f"{name} waits for {dependency} to be healthy, but it has no healthcheck"
                )
            else:
                assert condition == "service_completed_successfully"
                assert SERVICES[dependency].get("restart") == "no"


def test_a_volume_is_mounted_at_the_same_path_wherever_it_is_shared() -> None:
    targets: dict[str, set[str]] = {}
    for service in SERVICES.values():
        for mount in service.get("volumes", []):
            volume, target = mount.split(":")[:2]
            targets.setdefault(volume, set()).add(target)
    assert all(len(paths) == 1 for paths in targets.values()), targets


def test_services_sharing_an_image_build_it_from_the_same_target() -> None:
    targets: dict[str, set[str]] = {}
    for service in SERVICES.values():
        if "build" in service:
            targets.setdefault(service["image"], set()).add(service["build"]["target"])
    assert all(len(t) == 1 for t in targets.values()), targets
    for name, service in SERVICES.items():
        image = service.get("image", "")
        assert image in targets or ":" in image, f"{name} uses an image nothing builds"


def test_every_image_builds_from_a_dockerfile_target_that_exists() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name, service in SERVICES.items():
        build = service.get("build")
        if build:
            assert f" AS {build['target']}" in dockerfile, f"{name}: no target {build['target']}"
