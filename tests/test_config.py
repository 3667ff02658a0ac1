"""Config: the example loads; every problem is listed with its place; secrets stay hidden."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bridge.chats import CHAT_TYPES
from bridge.chats.generic import GenericSettings
from bridge.chats.slack_api import SlackApiSettings
from bridge.config import Config, ConfigError, StoreConfig, load_config, parse_config
from bridge.jobserv import parse_build
from bridge.render import context
from bridge.store import open_store
from bridge.store.postgres import PostgresStore
from tests.conftest import FAILED, fixture_body

KNOWN_TYPES = ", ".join(sorted(CHAT_TYPES))

EXAMPLE = Path(__file__).parent.parent / "config.example.toml"

SOURCE = """
[[sources]]
name = "docs"
secret = "source-secret-value"
factories = ["*"]
"""

CONSOLE = """
[[destinations]]
name = "console"
type = "console"
"""


def write_config(folder: Path, toml: str) -> Path:
    path = folder / "config.toml"
    path.write_text(textwrap.dedent(toml))
    return path


def problems_of(folder: Path, toml: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(folder, toml))
    problems = caught.value.problems
    assert problems
    assert str(caught.value) == "\n".join(problems)
    return problems


def valid(folder: Path, toml: str) -> Config:
    return load_config(write_config(folder, toml))


# -- the shipped example -----------------------------------------------------------------


def test_shipped_example_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBSERV_WEBHOOK_SECRET", "from-the-environment")

    config = load_config(EXAMPLE)

    [source] = config.sources
    assert source.name == "webhook-docs-example"
    assert source.secret.get_secret_value() == "from-the-environment"
    assert source.may_report("any-factory")
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)
    assert config.store.path == EXAMPLE.parent / "var" / "bridge.sqlite3"
    assert list(config.destinations) == ["console"]
    [route] = config.routes
    assert (route.notify, route.destinations) == (["failed"], ["console"])
    assert (route.factories, route.triggers) == (None, None)


def test_shipped_example_needs_its_secret_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOBSERV_WEBHOOK_SECRET", raising=False)

    with pytest.raises(ConfigError) as caught:
        load_config(EXAMPLE)

    assert caught.value.problems == [
        "sources[0].secret: environment variable JOBSERV_WEBHOOK_SECRET is not set"
    ]


# -- every problem, with its place ------------------------------------------------------------


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
        [server]
        prot = 8080

        [[sources]]
        name = "docs"
        factories = ["*"]

        [[destinations]]
        name = "alerts"
        type = "slack-webhook"
        url = "https://hooks.slack.com/services/T1/B1/xyz"

        [[destinations]]
        name = "alerts"
        type = "console"

        [[routes]]
        destinations = ["alerts"]

        [[routes]]
        destinations = ["ops"]
        """,
    )

    assert sorted(problems) == sorted(
        [
            "server.prot: unknown key",
            "sources[0].secret: missing",
            'destinations[1].name: destination "alerts" is defined twice',
            'routes[1].destinations[0]: no destination named "ops"',
        ]
    )


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            SOURCE + CONSOLE + '[[routes]]\ndestinations = ["console", "ops"]',
            'routes[0].destinations[1]: no destination named "ops"',
        ),
        ("[server]\nprot = 8080\n" + SOURCE, "server.prot: unknown key"),
        ("[servers]\nport = 8080\n" + SOURCE, "servers: unknown section"),
        (SOURCE + CONSOLE + "[[routes]]\nfactories = []\n", "routes[0].destinations: missing"),
        (SOURCE.replace('secret = "source-secret-value"\n', ""), "sources[0].secret: missing"),
        (SOURCE.replace('factories = ["*"]\n', ""), "sources[0].factories: missing"),
        ("[server]\nport = 8080\n", "sources: at least one [[sources]] entry is needed"),
        (SOURCE + SOURCE, 'sources[1].name: source "docs" is defined twice'),
        (
            SOURCE + CONSOLE + CONSOLE,
            'destinations[1].name: destination "console" is defined twice',
        ),
        (
            SOURCE + '[[destinations]]\nname = "tg"\ntype = "telegram"\n',
            f"destinations[0].type: unknown destination type 'telegram' (known: {KNOWN_TYPES})",
        ),
        (
            SOURCE + '[[destinations]]\nname = "tg"\n',
            f"destinations[0].type: missing (known: {KNOWN_TYPES})",
        ),
        (
            SOURCE + '[[destinations]]\nname = "alerts"\ntype = "slack-webhook"\n',
            "destinations[0].url: missing",
        ),
        (
            SOURCE + '[[destinations]]\nname = "ch"\ntype = "slack-api"\ntoken = "xoxb-1"\n',
            "destinations[0].channel: missing",
        ),
        (
            SOURCE + CONSOLE.replace('type = "console"', 'type = "console"\ncolour = "red"'),
            "destinations[0].colour: unknown key",
        ),
        (
            SOURCE + CONSOLE + '[[routes]]\nnotify = ["broken"]\ndestinations = ["console"]',
            "routes[0].notify[0]: Input should be 'failed', 'first_failure', 'still_failing',"
            " 'fixed' or 'passed'",
        ),
        (
            '[delivery]\nretry_initial = "soon"\n' + SOURCE,
            "delivery.retry_initial: expected a duration such as 30s, 10m, 12h or 30d",
        ),
        (
            "[delivery]\nretry_max = -1\n" + SOURCE,
            "delivery.retry_max: a duration cannot be negative",
        ),
        (
            SOURCE + CONSOLE.replace('type = "console"', 'type = "console"\ntimeout = "5 parsecs"'),
            "destinations[0].timeout: expected a duration such as 30s, 10m, 12h or 30d",
        ),
        (
            '[store]\npath = "outbox.sqlite3"\nurl = "postgresql://bridge@db/bridge"\n' + SOURCE,
            "store: give either path (SQLite) or url (PostgreSQL), not both",
        ),
        (
            '[store]\nurl = "mysql://bridge@db/bridge"\n' + SOURCE,
            "store.url: expected a postgresql://user:password@host/database URL",
        ),
        ("sources = 3\n", "sources: expected a list of tables ([[sources]])"),
    ],
    ids=[
        "unknown-destination",
        "unknown-key",
        "unknown-section",
        "route-without-destinations",
        "source-without-secret",
        "source-without-factories",
        "no-sources",
        "duplicate-source",
        "duplicate-destination",
        "unknown-type",
        "missing-type",
        "slack-webhook-without-url",
        "slack-api-without-channel",
        "unknown-destination-key",
        "unknown-notify",
        "bad-duration",
        "negative-duration",
        "bad-destination-duration",
        "store-path-and-url",
        "store-url-not-postgresql",
        "sources-not-a-list",
    ],
)
def test_problem_is_reported_with_its_place(tmp_path: Path, toml: str, expected: str) -> None:
    assert expected in problems_of(tmp_path, toml)


def test_invalid_toml_names_the_file_and_line(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path, '[server]\nport = 8080\n[[sources]\nname = "x"\n')

    assert problem.startswith(f"{tmp_path / 'config.toml'}: not valid TOML")
    assert "line 3" in problem


def test_unreadable_config_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"

    with pytest.raises(ConfigError) as caught:
        load_config(missing)

    [problem] = caught.value.problems
    assert problem.startswith(f"{missing}: cannot read")


# -- ${VAR} -----------------------------------------------------------------------------------


def test_missing_environment_variable_names_key_and_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BRIDGE_TEST_UNSET", raising=False)
    monkeypatch.delenv("BRIDGE_TEST_ALSO_UNSET", raising=False)

    problems = problems_of(
        tmp_path,
        SOURCE
        + """
        [[destinations]]
        name = "audit"
        type = "generic"
        url = "https://example.com/hooks/${BRIDGE_TEST_UNSET}"
        headers = { Authorization = "Bearer ${BRIDGE_TEST_ALSO_UNSET}" }
        """,
    )

    assert sorted(problems) == [
        "destinations[0].headers.Authorization: environment variable BRIDGE_TEST_ALSO_UNSET"
        " is not set",
        "destinations[0].url: environment variable BRIDGE_TEST_UNSET is not set",
    ]


def test_environment_variables_are_substituted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_TEST_SECRET", "env-secret")
    monkeypatch.setenv("BRIDGE_TEST_TOKEN", "env-token")
    monkeypatch.setenv("BRIDGE_TEST_CHANNEL", "C0123")

    config = valid(
        tmp_path,
        """
        [[sources]]
        name = "docs"
        secret = "${BRIDGE_TEST_SECRET}"
        factories = ["*"]

        [[destinations]]
        name = "audit"
        type = "generic"
        url = "https://example.com/hooks/ci"
        headers = { Authorization = "Bearer ${BRIDGE_TEST_TOKEN}" }

        [[destinations]]
        name = "channel"
        type = "slack-api"
        token = "${BRIDGE_TEST_TOKEN}"
        channel = "${BRIDGE_TEST_CHANNEL}"
        """,
    )

    assert config.sources[0].secret.get_secret_value() == "env-secret"
    audit = config.destinations["audit"]
    assert isinstance(audit, GenericSettings)
    assert audit.headers["Authorization"].get_secret_value() == "Bearer env-token"
    channel = config.destinations["channel"]
    assert isinstance(channel, SlackApiSettings)
    assert channel.token.get_secret_value() == "env-token"
    assert channel.channel == "C0123"


# -- values -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "seconds"),
    [('"0.5s"', 0.5), ('"250ms"', 0.25), ('"10m"', 600.0), ('"12h"', 43200.0), ("90", 90.0)],
)
def test_durations(tmp_path: Path, written: str, seconds: float) -> None:
    config = valid(tmp_path, f"[delivery]\nretry_initial = {written}\n" + SOURCE)

    assert config.delivery.retry_initial == seconds


def test_store_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    folder = tmp_path / "etc" / "bridge"
    folder.mkdir(parents=True)

    config = valid(folder, '[store]\npath = "data/outbox.sqlite3"\n' + SOURCE)

    assert config.store.path == folder / "data" / "outbox.sqlite3"


# -- templates --------------------------------------------------------------------------------


def test_custom_template_is_relative_to_the_config_file(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    (folder / "templates").mkdir(parents=True)
    (folder / "templates" / "mine.j2").write_text(
        '{"text": {{ "custom: " ~ factory ~ " #" ~ build_id ~ " " ~ status }}}\n'
    )

    config = valid(
        folder,
        SOURCE
        + """
        [[destinations]]
        name = "alerts"
        type = "slack-webhook"
        url = "https://hooks.slack.com/services/T1/B1/xyz"
        template = "templates/mine.j2"
        """,
    )

    build = parse_build(fixture_body(FAILED))
    rendered = config.templates["alerts"].render(context(build, event_id=1, destination="alerts"))
    assert rendered == {"text": "custom: andy-corp #68 FAILED"}


def test_broken_template_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "broken.j2").write_text('{\n  "text": {{ factory }},\n  {% if %}\n}\n')

    problems = problems_of(
        tmp_path,
        SOURCE
        + """
        [[destinations]]
        name = "alerts"
        type = "slack-webhook"
        url = "https://hooks.slack.com/services/T1/B1/xyz"
        template = "broken.j2"
        """,
    )

    [problem] = problems
    assert problem.startswith(f"destinations[0].template: {tmp_path / 'broken.j2'}, line 3: ")


def test_missing_template_file_is_named(tmp_path: Path) -> None:
    [problem] = problems_of(
        tmp_path,
        SOURCE + CONSOLE.replace('type = "console"', 'type = "console"\ntemplate = "gone.j2"'),
    )

    assert problem.startswith(f"destinations[0].template: {tmp_path / 'gone.j2'}: cannot read")


# -- secrets ----------------------------------------------------------------------------------

SECRET_VALUES = [
    "source-secret-value",
    "hooks.slack.com/services/T1/B1/SlackHookSecret",
    "xoxb-bot-token-secret",
    "generic-header-secret",
    "example.com/hooks/generic-url-secret",
    "database-password-secret",
]

WITH_SECRETS = (
    SOURCE
    + """
[store]
url = "postgresql://bridge:database-password-secret@db.example.com/bridge"

[[destinations]]
name = "alerts"
type = "slack-webhook"
url = "https://hooks.slack.com/services/T1/B1/SlackHookSecret"

[[destinations]]
name = "channel"
type = "slack-api"
token = "xoxb-bot-token-secret"
channel = "C1"

[[destinations]]
name = "audit"
type = "generic"
url = "https://example.com/hooks/generic-url-secret"
headers = { Authorization = "generic-header-secret" }
"""
)


def test_secrets_are_not_in_the_config_repr(tmp_path: Path) -> None:
    config = valid(tmp_path, WITH_SECRETS)

    shown = repr(config) + str(config)
    for secret in SECRET_VALUES:
        assert secret not in shown
    # They are still there for use, and known for redaction.
    everything = " ".join(config.secrets())
    for secret in SECRET_VALUES:
        assert secret in everything


def test_secrets_are_not_in_the_problems(tmp_path: Path) -> None:
    # Six problems, each next to a secret (one even puts a secret where a port goes).
    broken = (
        WITH_SECRETS.replace('channel = "C1"', 'channel = "C1"\ntoken_type = "bot"')
        .replace('name = "docs"', 'name = "docs"\nsecrett = "x"')
        .replace('type = "generic"', 'type = "generic"\ntimeout = "never"')
        .replace('@db.example.com/bridge"', '@db.example.com/bridge"\npool_size = 0')
        + '[[routes]]\ndestinations = ["ops"]\n'
        + '[server]\nport = "xoxb-bot-token-secret"\n'
    )

    with pytest.raises(ConfigError) as caught:
        parse_config(broken, tmp_path / "config.toml")

    problems = caught.value.problems
    assert len(problems) == 6, problems
    for secret in SECRET_VALUES:
        assert secret not in str(caught.value)


@pytest.mark.parametrize(
    ("pool_size", "lanes", "connections"),
    [(None, 0, 10), (None, 10, 15), (None, 40, 45), (4, 40, 4)],
)
def test_a_postgres_pool_has_a_connection_for_each_lane_unless_told(
    pool_size: int | None, lanes: int, connections: int
) -> None:
    """Each lane claims on a connection of its own while the intake commits on others: a
    pool as small as the lanes makes them wait (bridge.store.POOL_SIZE)."""
    where = StoreConfig(url="postgresql://bridge:pw@127.0.0.1/bridge", pool_size=pool_size)
    store = open_store(where, lanes=lanes)
    assert isinstance(store, PostgresStore)
    assert store.pool_size == connections
