"""What the commands say, word for word: one of a thing is singular.

The README shows these outputs for the shipped config.example.toml; the tests
here run the same commands and compare the whole output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.text import plural
from tests.conftest import FAILED, FIXTURES, PASSED
from tests.serve import REPO_ROOT, run_cli
from tests.test_cli import write

EXAMPLE_CONFIG = REPO_ROOT / "config.example.toml"
EXAMPLE_ENVIRONMENT = {"JOBSERV_WEBHOOK_SECRET": "UseSomethingGoodHere"}


@pytest.mark.parametrize(
    ("count", "one", "many", "expected"),
    [
        (0, "source", None, "0 sources"),
        (1, "source", None, "1 source"),
        (2, "source", None, "2 sources"),
        (1, "delivery", "deliveries", "1 delivery"),
        (3, "delivery", "deliveries", "3 deliveries"),
    ],
)
def test_plural(count: int, one: str, many: str | None, expected: str) -> None:
    assert plural(count, one, many) == expected


def test_check_config_of_the_example_counts_in_the_singular() -> None:
    result = run_cli("check-config", "--config", EXAMPLE_CONFIG, environment=EXAMPLE_ENVIRONMENT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{EXAMPLE_CONFIG}: ok (1 source, 1 destination, 1 route)\n"


def test_routes_of_the_example_says_match_once() -> None:
    payload = FIXTURES / f"{FAILED}.json"
    result = run_cli(
        "routes", "--config", EXAMPLE_CONFIG, "--payload", payload, environment=EXAMPLE_ENVIRONMENT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "build: factory andy-corp, trigger containers-devel, #68 FAILED (Failed)",
        "routes[0]: match: sends to console",
        "destinations: console",
    ]


def test_routes_of_the_example_with_a_history() -> None:
    payload = FIXTURES / f"{PASSED}.json"
    result = run_cli(
        "routes",
        "--config",
        EXAMPLE_CONFIG,
        "--payload",
        payload,
        "--previous",
        "FAILED,FAILED",
        environment=EXAMPLE_ENVIRONMENT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "build: factory andy-corp, trigger containers-devel,"
        " #67 PASSED (Fixed after 2 failed builds (#65-#66))",
        "routes[0]: no match: PASSED (fixed) is not in notify ['failed']",
        "destinations: (none)",
    ]


def test_render_says_one_failed_run_was_left_out(tmp_path: Path) -> None:
    # Each failed run takes 900 characters of Discord's 2000 of content: two fit, three do not.
    write(
        tmp_path,
        "wide.j2",
        '{"content": {{ "x" * (900 * (failed_runs | length)) ~ " " ~ more_failed }}}\n',
    )
    config = write(
        tmp_path,
        "config.toml",
        """
        [[sources]]
        name = "docs-example"
        secret = "not-used-here"
        factories = ["*"]

        [[destinations]]
        name = "wide"
        type = "discord"
        url = "https://discord.invalid/api/webhooks/1/x"
        template = "wide.j2"

        [[routes]]
        destinations = ["wide"]
        """,
    )
    build = json.loads((FIXTURES / f"{FAILED}.json").read_text())
    for run in build["runs"]:
        run["status"] = "FAILED"
    payload = tmp_path / "three-failed.json"
    payload.write_text(json.dumps(build))

    result = run_cli("render", "--config", config, "--payload", payload)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "# 1 failed run left out to fit\n"
    assert json.loads(result.stdout)["content"] == "x" * 1800 + " 1"
