"""The deployment files (Dockerfile, compose file, systemd unit) and the README agree with the
CLI and with each other. No Docker engine here: the files are parsed and cross-checked, the
commands they run are parsed by the real argument parser, the config they mount is validated.
"""

from __future__ import annotations

import asyncio
import configparser
import json
import re
import shlex
import socket
import subprocess
import sys
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient

from bridge.cli import _parser
from bridge.config import Config, parse_config
from bridge.server import create_app
from tests.conftest import make_config

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO_ROOT / "Dockerfile"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKER_CONFIG = REPO_ROOT / "deploy" / "config.docker.toml"
SYSTEMD_UNIT = REPO_ROOT / "deploy" / "jobserv-bridge.service"
README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
COMMAND = "jobserv-bridge"


def documentation() -> str:
    """The README and the pages under docs/ that it links to."""
    pages = [README, *sorted(DOCS.glob("*.md"))]
    return "\n".join(page.read_text() for page in pages)


# --- parsing the files --------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def dockerfile(keyword: str) -> list[str]:
    return [arguments for name, arguments in dockerfile_instructions() if name == keyword]


def exec_form(arguments: str) -> list[str]:
    """An instruction's JSON (exec) form; the shell form is a mistake for a signal-handling
    server (the shell would get SIGTERM and SIGHUP, not the bridge)."""
    parsed = json.loads(arguments)
    assert isinstance(parsed, list), arguments
    assert all(isinstance(item, str) for item in parsed), arguments
    return parsed


def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


def bridge_service() -> dict[str, Any]:
    service = compose()["services"]["bridge"]
    assert isinstance(service, dict)
    return service


def docker_config(monkeypatch: pytest.MonkeyPatch) -> Config:
    """The mounted config, validated as the container reads it (secret in the environment)."""
    monkeypatch.setenv("JOBSERV_WEBHOOK_SECRET", "a-secret-from-the-environment")
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T0/B0/X")
    return parse_config(DOCKER_CONFIG.read_text(), Path(config_mount_target()))


def config_mount_target() -> str:
    """Where compose mounts deploy/config.docker.toml inside the container."""
    for volume in bridge_service()["volumes"]:
        source, target, *_ = volume.split(":")
        if (COMPOSE_FILE.parent / source).resolve() == DOCKER_CONFIG.resolve():
            return str(target)
    pytest.fail(f"docker-compose.yml does not mount {DOCKER_CONFIG.name}")


def named_volume_targets() -> dict[str, str]:
    """Named volumes of the bridge service: name -> target."""
    declared = compose().get("volumes") or {}
    found = {}
    for volume in bridge_service()["volumes"]:
        source, target, *_ = volume.split(":")
        if source in declared:
            found[source] = target
    return found


def systemd_unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read_string(SYSTEMD_UNIT.read_text())
    return unit


def assert_serve_command(argv: list[str]) -> str:
    """`serve --config F [...]` as the real CLI parses it; returns F."""
    args = _parser().parse_args(argv)
    assert args.command == "serve"
    return str(args.config)


def is_within(path: str, folder: str) -> bool:
    return PurePosixPath(folder) in PurePosixPath(path).parents


# --- the console script -----------------------------------------------------------------


def test_the_console_script_is_the_cli() -> None:
    assert PYPROJECT["project"]["scripts"].get(COMMAND) == "bridge.cli:main"


# --- Dockerfile ---------------------------------------------------------------------


def test_dockerfile_base_is_a_slim_python_the_package_supports() -> None:
    [base] = dockerfile("FROM")
    match = re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", base)
    assert match, base
    minimum = re.fullmatch(r">=3\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert minimum is not None
    assert int(match.group(1)) >= int(minimum.group(1))


def test_dockerfile_runs_as_a_user_other_than_root() -> None:
    users = dockerfile("USER")
    assert users, "no USER: the bridge would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # The user is made in the image, and owns the folder where the outbox is written.
    [created] = [run for run in dockerfile("RUN") if "useradd" in run]
    assert re.search(rf"useradd\b[^&]*\b{re.escape(user)}\b", created), created
    assert re.search(rf"chown\b[^&]*\b{re.escape(user)}\b", created), created


def test_dockerfile_serves_the_cli_with_the_mounted_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    [entrypoint] = dockerfile("ENTRYPOINT")
    [command] = dockerfile("CMD")
    assert exec_form(entrypoint) == [COMMAND]
    assert assert_serve_command(exec_form(command)) == config_mount_target()


def test_dockerfile_exposes_and_checks_the_configured_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = docker_config(monkeypatch).server.port
    assert dockerfile("EXPOSE") == [str(port)]
    [healthcheck] = dockerfile("HEALTHCHECK")
    assert re.search(rf"//(127\.0\.0\.1|localhost):{port}/healthz\b", healthcheck), healthcheck
    assert " CMD " in f" {healthcheck} "


def test_dockerfile_keeps_the_outbox_on_a_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    store = str(docker_config(monkeypatch).store.path)
    volumes = [folder for arguments in dockerfile("VOLUME") for folder in exec_form(arguments)]
    assert any(is_within(store, folder) for folder in volumes), (store, volumes)


def healthcheck_probe(port: int) -> list[str]:
    """The HEALTHCHECK command, aimed at `port` on this machine."""
    [healthcheck] = dockerfile("HEALTHCHECK")
    probe = exec_form(healthcheck.split(" CMD ", 1)[1])
    # The image's python: a slim image has no curl or wget.
    assert probe[:2] == ["python", "-c"]
    code = re.sub(r"//(127\.0\.0\.1|localhost):\d+/", f"//127.0.0.1:{port}/", probe[2])
    return [sys.executable, "-c", code]


async def run_probe(port: int) -> int:
    # In a thread: the bridge it probes runs on this event loop.
    result = await asyncio.to_thread(
        subprocess.run, healthcheck_probe(port), capture_output=True, timeout=30, check=False
    )
    return result.returncode


async def test_dockerfile_healthcheck_tells_a_serving_bridge_from_none(
    tmp_path: Path, aiohttp_client: Callable[[Any], Awaitable[TestClient[Any, Any]]]
) -> None:
    config = make_config(
        tmp_path,
        """
        [server]
        shutdown_timeout = "0.5s"
        [[sources]]
        name = "docs-example"
        secret = "a-secret"
        factories = ["*"]
        [[destinations]]
        name = "console"
        type = "console"
        [[routes]]
        destinations = ["console"]
        """,
    )
    client = await aiohttp_client(create_app(config))
    assert client.port is not None
    assert await run_probe(client.port) == 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    assert await run_probe(free) != 0  # nothing listens there: unhealthy


# --- docker-compose.yml --------------------------------------------------------------


def test_compose_serves_the_documented_cli() -> None:
    service = bridge_service()
    assert service.get("build") == "."
    assert "entrypoint" not in service  # the image's: jobserv-bridge
    assert assert_serve_command(service["command"]) == config_mount_target()
    volume = next(v for v in service["volumes"] if DOCKER_CONFIG.name in v)
    assert volume.endswith(":ro"), "the config is mounted read-only"


def test_compose_publishes_the_port_of_the_mounted_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = docker_config(monkeypatch)
    assert config.server.host == "0.0.0.0"  # reachable from outside the container
    container_ports = [str(mapping).rsplit(":", 1)[-1] for mapping in bridge_service()["ports"]]
    assert container_ports == [str(config.server.port)]


def test_compose_keeps_the_outbox_on_a_named_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    store = str(docker_config(monkeypatch).store.path)
    targets = named_volume_targets()
    assert any(is_within(store, target) for target in targets.values()), (store, targets)


def test_compose_takes_the_secret_from_the_environment() -> None:
    environment = bridge_service()["environment"]
    secret = environment["JOBSERV_WEBHOOK_SECRET"]
    # Interpolated from the shell or .env (and required), never written in the file.
    assert re.fullmatch(r"\$\{JOBSERV_WEBHOOK_SECRET(:?\?[^}]*)?\}", secret), secret
    assert "${JOBSERV_WEBHOOK_SECRET}" in DOCKER_CONFIG.read_text()


def test_compose_tunnel_is_optional_and_points_at_the_bridge(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = compose()["services"]
    tunnels = [name for name in services if name != "bridge"]
    assert tunnels, "no tunnel service for prototyping behind a firewall"
    port = docker_config(monkeypatch).server.port
    for name in tunnels:
        assert services[name].get("profiles"), f"{name} would start with every `up`"
        assert f"http://bridge:{port}" in " ".join(services[name]["command"])


def test_docker_config_passes_check_config() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "check-config", "--config", str(DOCKER_CONFIG)],
        capture_output=True,
        text=True,
        env={"JOBSERV_WEBHOOK_SECRET": "from-env", "PATH": "/usr/bin:/bin"},
        cwd=REPO_ROOT,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --- systemd ---------------------------------------------------------------------------


def test_systemd_unit_serves_with_a_config() -> None:
    service = systemd_unit()["Service"]
    executable, *argv = shlex.split(service["ExecStart"])
    assert PurePosixPath(executable).name == COMMAND
    assert PurePosixPath(assert_serve_command(argv)).is_absolute()
    assert service.get("Type", "simple") in ("simple", "exec")


def test_systemd_reload_sends_sighup() -> None:
    reload = systemd_unit()["Service"]["ExecReload"]
    assert re.fullmatch(r"(/usr)?/bin/kill -(HUP|SIGHUP|s HUP) \$MAINPID", reload), reload


def test_systemd_unit_stops_with_sigterm_and_keeps_its_state() -> None:
    service = systemd_unit()["Service"]
    assert service.get("KillSignal", "SIGTERM") in ("SIGTERM", "TERM")
    # The README tells to put the store in the unit's state directory.
    assert service["StateDirectory"] == "jobserv-bridge"
    assert "/var/lib/jobserv-bridge/" in documentation()
    assert systemd_unit()["Install"]["WantedBy"] == "multi-user.target"


# --- README -------------------------------------------------------------------------------


def listed_subcommands(help_text: str, heading: str) -> list[str]:
    """The subcommands `--help` lists under its positional `heading` (COMMAND, ACTION)."""
    section = help_text.split(f"  {heading}\n", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^    (\S+)", section, re.MULTILINE)


def cli_help(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "bridge", *args, "--help"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=30,
        check=True,
    )
    return result.stdout


def test_readme_documents_every_subcommand() -> None:
    readme = documentation()
    commands = listed_subcommands(cli_help(), "COMMAND")
    assert {"serve", "check-config", "routes", "send-test", "outbox"} <= set(commands)
    for command in commands:
        assert f"`{COMMAND} {command} " in readme, f"README does not document {command}"
    for action in listed_subcommands(cli_help("outbox", "--config", "x"), "ACTION"):
        assert f"outbox --config F {action}" in readme, f"README does not document {action}"
    assert f"{COMMAND} --version" in readme


def test_readme_documents_the_production_sections() -> None:
    readme = documentation()
    for page in ("production.md", "troubleshooting.md"):
        assert f"](docs/{page})" in README.read_text(), page
    for heading in ("# Running it in production", "# Troubleshooting"):
        assert heading in readme
    for words in ("/healthz", "/readyz", "/metrics", "SIGHUP", "--log-format json", "401", "403"):
        assert words in readme, words
    # Every metric the bridge exports is in the README's table.
    metric_names = re.findall(
        r'"(jobserv_bridge_\w+)"', (REPO_ROOT / "bridge" / "metrics.py").read_text()
    )
    assert metric_names
    for name in metric_names:
        assert f"`{name}" in readme, name
