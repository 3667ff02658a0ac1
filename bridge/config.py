"""TOML config -> a validated, typed Config; every problem reported with its place."""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from bridge.chats import CHAT_TYPES, DestinationSettings
from bridge.config_env import Unknown, expand_environment, place
from bridge.durations import Duration
from bridge.failed_tests import JobservConfig
from bridge.render import Template, TemplateError, default_template, load_template
from bridge.slack_interactions import SlackConfig
from bridge.transitions import Policy

_M = TypeVar("_M", bound=BaseModel)


class ConfigError(Exception):
    """A config that cannot be used; `problems` lists every one, each with its place."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_size: int = Field(default=1024 * 1024, ge=1024)
    shutdown_timeout: Duration = 10.0
    # A client gets this long for its request line and headers (from connecting, or from the
    # previous answer on a kept-alive connection), and as long again for the body.
    read_timeout: Duration = Field(default=10.0, gt=0)
    # Connections past this many are answered 503 and closed at once.
    max_connections: int = Field(default=512, ge=1)
    # A webhook whose event the store cannot commit (a full disk, PostgreSQL restarting or
    # failing over) is tried again for this long before it is answered 503: JobServ waits
    # for an answer as long as it takes, but tries an error answer only four times, in ~7 s.
    store_wait: Duration = Field(default=10.0, ge=0)


class StoreConfig(_Section):
    """SQLite at `path` (one process), or PostgreSQL at `url` (replicas may share it)."""

    path: Path = Path("var/bridge.sqlite3")
    url: SecretStr | None = None  # postgresql://user:password@host:port/database
    # PostgreSQL connections per process; by default enough for every lane to claim at once
    # while the intake commits (bridge.store.open_store).
    pool_size: int | None = Field(default=None, ge=1)

    @field_validator("url")
    @classmethod
    def _postgresql(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None:
            try:
                parts = urlsplit(url.get_secret_value())
                parts.port  # noqa: B018 (raises on a port that is not a number)
            except ValueError:
                raise ValueError(
                    "not a URL: expected postgresql://user:password@host/database"
                ) from None
            if parts.scheme not in ("postgresql", "postgres"):
                raise ValueError("expected a postgresql://user:password@host/database URL")
        return url

    @model_validator(mode="after")
    def _one_backend(self) -> StoreConfig:
        if self.url is not None and "path" in self.model_fields_set:
            raise ValueError("give either path (SQLite) or url (PostgreSQL), not both")
        return self


class DeliveryConfig(_Section):
    concurrency: int = Field(default=32, ge=1)
    retry_initial: Duration = 2.0
    retry_max: Duration = 600.0
    retention: Duration = 7 * 86400.0
    poll_interval: Duration = 1.0


class AdminConfig(_Section):
    """The status page and its JSON API, on a listener of their own.

    Served only when the config has an `[admin]` section (and `enabled` is not false).
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=0, le=65535)
    # Required off loopback; when set, it is required wherever the listener binds.
    token: SecretStr | None = None


# A token is sent over the network on every request: make guessing it hopeless.
ADMIN_TOKEN_MIN_LENGTH = 16


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (`localhost`, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Source(_Section):
    name: str = Field(min_length=1)
    secret: SecretStr
    factories: list[str] = Field(min_length=1)

    def may_report(self, factory: str) -> bool:
        return "*" in self.factories or factory in self.factories


class Owner(_Section):
    """Who to mention when a run whose name matches `runs` (a glob) fails."""

    runs: str = Field(min_length=1)
    mention: list[str] = Field(min_length=1)


class Route(_Section):
    factories: list[str] | None = None
    triggers: list[str] | None = None
    notify: list[Policy] = ["failed"]
    destinations: list[str] = Field(min_length=1)
    # Added to failure messages, in the chat's own form ("<@U456>", "<!subteam^S123>").
    mention: list[str] = []
    owners: list[Owner] = []


@dataclass(frozen=True)
class Config:
    path: Path
    server: ServerConfig
    store: StoreConfig
    delivery: DeliveryConfig
    sources: list[Source]
    destinations: dict[str, DestinationSettings]
    routes: list[Route]
    templates: dict[str, Template] = field(repr=False)
    admin: AdminConfig = field(default_factory=AdminConfig)
    jobserv: JobservConfig | None = None  # no [jobserv] section: no API lookups
    slack: SlackConfig | None = None  # no [slack] section: no buttons in Slack
    # A preview's unset `${VAR}`s, each with its place (`serve` refuses a config with any).
    unset: tuple[str, ...] = ()

    def secrets(self) -> list[str]:
        """Every secret value the config holds, for redaction."""
        found: list[str] = [s.secret.get_secret_value() for s in self.sources]
        if self.store.url:
            url = self.store.url.get_secret_value()
            found += [url, urlsplit(url).password or ""]
        if self.admin.token:
            found.append(self.admin.token.get_secret_value())
        if self.jobserv:
            found.append(self.jobserv.api_token.get_secret_value())
        for part in (*self.destinations.values(), *([self.slack] if self.slack else [])):
            found.extend(_secret_values(part))
        return [s for s in found if s]


def _secret_values(model: BaseModel) -> list[str]:
    values = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            values.append(value.get_secret_value())
        elif isinstance(value, dict):
            values += [v.get_secret_value() for v in value.values() if isinstance(v, SecretStr)]
    return values


def _message(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing"
    return str(error["msg"]).removeprefix("Value error, ")


def _problems(errors: list[ErrorDetails], prefix: tuple[int | str, ...]) -> list[str]:
    return [f"{place(prefix + tuple(e['loc']))}: {_message(e)}" for e in errors]


def _section(model: type[_M], raw: Any, name: str, problems: list[str]) -> _M | None:
    try:
        return model.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        # In a preview, a value an unset `${VAR}` made is not the config's: it is not checked
        # (a `[store] url` read as "<unset DATABASE_URL>" is no PostgreSQL URL), and the
        # section is read as it would be without it if nothing else is wrong.
        table = raw if isinstance(raw, dict) else {}
        unknown = {k for k, v in table.items() if isinstance(v, Unknown)}
        errors = [
            e
            for e in exc.errors(include_url=False, include_input=False)
            if not (e["loc"] and e["loc"][0] in unknown)
        ]
        if not errors:
            known = {k: v for k, v in table.items() if k not in unknown}
            try:
                return model.model_validate(known)
            except ValidationError as without:
                errors = without.errors(include_url=False, include_input=False)
        problems.extend(_problems(errors, (name,)))
        return None


def _list_of(model: type[_M], raw: Any, name: str, problems: list[str]) -> list[_M]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.append(f"{name}: expected a list of tables ([[{name}]])")
        return []
    items = []
    for index, item in enumerate(raw):
        parsed = _section(model, item, f"{name}[{index}]", problems)
        if parsed is not None:
            items.append(parsed)
    return items


def _destination(raw: Any, index: int, problems: list[str]) -> DestinationSettings | None:
    where = f"destinations[{index}]"
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind not in CHAT_TYPES:
        known = ", ".join(sorted(CHAT_TYPES))
        what = "missing" if kind is None else f"unknown destination type {kind!r}"
        problems.append(f"{where}.type: {what} (known: {known})")
        return None
    return _section(CHAT_TYPES[kind].settings, raw, where, problems)


def _template(destination: DestinationSettings, base: Path, where: str) -> Template:
    chat = CHAT_TYPES[destination.type]
    kind = chat.body
    if destination.template is None:
        return default_template(chat.template_name, kind)
    path = (
        destination.template if destination.template.is_absolute() else base / destination.template
    )
    try:
        return load_template(path, kind)
    except TemplateError as exc:
        raise TemplateError(f"{where}.template: {exc}") from None


def _admin_problems(admin: AdminConfig, server: ServerConfig | None) -> list[str]:
    problems = []
    token = admin.token.get_secret_value() if admin.token is not None else None
    if token is None and admin.enabled and not is_loopback(admin.host):
        problems.append(
            f'admin.token: required when admin.host ("{admin.host}") is not a loopback address'
        )
    if token is not None and len(token) < ADMIN_TOKEN_MIN_LENGTH:
        problems.append(f"admin.token: must be at least {ADMIN_TOKEN_MIN_LENGTH} characters")
    if (
        admin.enabled
        and server is not None
        and admin.port != 0
        and admin.port == server.port
        and admin.host == server.host
    ):
        problems.append(f"admin.port: {admin.port} is already the webhook port (server.port)")
    return problems


def parse_config(text: str, path: Path, *, preview: bool = False) -> Config:
    """Validate a config's text; relative paths in it are relative to `path`'s folder.

    `preview`: for commands that send nothing (check-config, render, routes), an unset
    `${VAR}` reads as `<unset VAR>` instead of being a problem; `serve` never previews.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None

    problems: list[str] = []
    known = {f.name for f in fields(Config)} - {"path", "templates", "unset"}
    problems += [f"{key}: unknown section" for key in raw if key not in known]
    unset: list[str] = []
    raw = expand_environment(raw, (), unset, preview)
    if not preview:
        problems += unset

    server = _section(ServerConfig, raw.get("server"), "server", problems)
    store = _section(StoreConfig, raw.get("store"), "store", problems)
    delivery = _section(DeliveryConfig, raw.get("delivery"), "delivery", problems)
    admin = _section(AdminConfig, raw.get("admin"), "admin", problems)
    jobserv = (
        _section(JobservConfig, raw["jobserv"], "jobserv", problems) if "jobserv" in raw else None
    )
    slack = _section(SlackConfig, raw["slack"], "slack", problems) if "slack" in raw else None
    if "admin" not in raw and admin is not None:
        admin = admin.model_copy(update={"enabled": False})
    if admin is not None:
        problems += _admin_problems(admin, server)
    sources = _list_of(Source, raw.get("sources"), "sources", problems)
    routes = _list_of(Route, raw.get("routes"), "routes", problems)

    destinations: dict[str, DestinationSettings] = {}
    raw_destinations = raw.get("destinations") or []
    if not isinstance(raw_destinations, list):
        problems.append("destinations: expected a list of tables ([[destinations]])")
        raw_destinations = []
    templates: dict[str, Template] = {}
    base = path.parent
    for index, item in enumerate(raw_destinations):
        destination = _destination(item, index, problems)
        if destination is None:
            continue
        if destination.name in destinations:
            problems.append(
                f'destinations[{index}].name: destination "{destination.name}" is defined twice'
            )
            continue
        destinations[destination.name] = destination
        try:
            templates[destination.name] = _template(destination, base, f"destinations[{index}]")
        except TemplateError as exc:
            problems.append(str(exc))

    if not sources and "sources" not in raw:
        problems.append("sources: at least one [[sources]] entry is needed")
    names = [s.name for s in sources]
    problems += [
        f'sources[{i}].name: source "{n}" is defined twice'
        for i, n in enumerate(names)
        if n in names[:i]
    ]
    raw_routes = raw.get("routes") if isinstance(raw.get("routes"), list) else []
    for r_index, item in enumerate(raw_routes or []):
        wanted = item.get("destinations") if isinstance(item, dict) else None
        for d_index, name in enumerate(wanted if isinstance(wanted, list) else []):
            if (
                isinstance(name, str)
                and name not in destinations
                and not any(isinstance(d, dict) and d.get("name") == name for d in raw_destinations)
            ):
                problems.append(
                    f'routes[{r_index}].destinations[{d_index}]: no destination named "{name}"'
                )
    if problems or server is None or store is None or delivery is None or admin is None:
        raise ConfigError(unset + problems if preview else problems)
    if not store.path.is_absolute():
        store = store.model_copy(update={"path": base / store.path})
    parts = (sources, destinations, routes, templates, admin, jobserv)
    return Config(path, server, store, delivery, *parts, unset=tuple(unset), slack=slack)


def load_config(path: Path | str, *, preview: bool = False) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError([f"{path}: cannot read: {reason}"]) from None
    return parse_config(text, path, preview=preview)
