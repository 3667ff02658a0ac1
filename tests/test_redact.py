"""The redactor: every form of a secret goes, in time linear in the text."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import textwrap
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.redact import Redactor
from tests.serve import REPO_ROOT

URL = "https://chat.example.com/hooks/UrlPathSecret-7c1d9e2b"
TOKEN = "HeaderTokenSecret-0d4e5f"
WEBHOOK_SECRET = "whsec-WebhookSecretValue-5f3a"
# What is left of a cut secret is redacted down to this many characters.
MIN_CUT_PREFIX = 12


@pytest.fixture
def redact() -> Redactor:
    return Redactor([URL, f"Bearer {TOKEN}", WEBHOOK_SECRET])


def every_form(secret: str) -> list[str]:
    """A secret as servers echo it: as is, JSON-escaped, percent-encoded, HTML-escaped."""
    return [
        secret,
        json.dumps(secret)[1:-1].replace("/", "\\/"),
        quote(secret, safe=""),
        re.sub("%[0-9A-F]{2}", lambda escape: escape.group().lower(), quote(secret, safe="")),
        quote(secret),
        quote_plus(secret),
        secret.replace("&", "&amp;"),
    ]


@pytest.mark.parametrize("secret", [URL, "/hooks/UrlPathSecret-7c1d9e2b", TOKEN, WEBHOOK_SECRET])
def test_every_form_of_a_secret_is_redacted(redact: Redactor, secret: str) -> None:
    for form in every_form(secret):
        text = f'{{"error": "no such hook: {form}", "hint": "check it"}}'
        redacted = redact(text)
        assert "UrlPathSecret" not in redacted
        assert "TokenSecret" not in redacted
        assert "WebhookSecret" not in redacted
        assert "<redacted>" in redacted
        assert redacted.endswith('", "hint": "check it"}')


@pytest.mark.parametrize("secret", [URL, TOKEN, WEBHOOK_SECRET, quote(URL, safe="")])
def test_a_secret_cut_short_is_redacted_down_to_its_first_characters(
    redact: Redactor, secret: str
) -> None:
    for kept in range(MIN_CUT_PREFIX, len(secret)):
        prefix = secret[:kept]
        for text in (
            f"HTTP 500: bad {prefix}…",
            f"HTTP 500: bad {prefix}... more",
            f"bad {prefix}",
        ):
            redacted = redact(text)
            assert prefix not in redacted, (text, redacted)
            assert redacted.startswith(text[: text.index(prefix)] + "<redacted>")


def test_a_prefix_not_at_a_cut_is_left_alone() -> None:
    # Its first characters are a common URL's; only the whole secret is one there.
    redact = Redactor([URL])
    text = "see https://chat.example.com/hooks/other for help"
    assert redact(text) == text


@pytest.mark.parametrize("scheme", ["Bearer", "Basic", "token", "Bot"])
def test_the_credential_of_a_header_value_is_a_secret_alone(scheme: str) -> None:
    redact = Redactor([f"{scheme} {TOKEN}"])
    assert redact(f"invalid credential {TOKEN} given") == "invalid credential <redacted> given"
    assert redact(f"Authorization: {scheme} {TOKEN}") == "Authorization: <redacted>"


def test_basic_credentials_are_redacted_decoded_too() -> None:
    credential = base64.b64encode(b"robot:BasicPassword-1234").decode()
    redact = Redactor([f"Basic {credential}"])
    assert redact(f"bad {credential}") == "bad <redacted>"
    assert redact("user robot:BasicPassword-1234") == "user <redacted>"
    assert redact("password BasicPassword-1234 refused") == "password <redacted> refused"


def test_the_password_of_a_url_is_a_secret_alone() -> None:
    redact = Redactor(["postgresql://bridge:StorePassword-99@db.internal/bridge"])
    assert redact("auth failed for StorePassword-99") == "auth failed for <redacted>"


def test_known_secret_patterns_in_any_escaping(redact: Redactor) -> None:
    slack = "https://hooks.slack.com/services/T000/B000/XXXXSECRET"
    discord = "https://discord.com/api/webhooks/123456/DiscordTokenSecret"
    for url in (slack, discord):
        for form in (url, url.replace("/", "\\/"), quote(url, safe="")):
            redacted = redact(f"<p>posted to {form} </p>")
            assert redacted == "<p>posted to <redacted> </p>", form
    assert redact("token xoxb-1-2-abc refused") == "token <redacted> refused"
    # A webhook URL inside quotes and after another URL: the secret part goes.
    text = f'see https://proxy.example/x,{discord}"> ok'
    assert "DiscordTokenSecret" not in redact(text)
    assert redact(text).endswith(" ok")


# Inputs on which a backtracking pattern spends time quadratic in their length: each
# is a unit repeated to the size of the text.
ADVERSARIAL_UNITS = [
    "http://",
    "https://",
    "http:\\/\\/",
    "https%3A%2F%2F",
    "http://x/api/webhooks",
    "/api/webhooks/",
    "https://hooks.slack.com",
    "xoxb-",
    'http://a"',
    WEBHOOK_SECRET[:MIN_CUT_PREFIX] + " ",
    "a" * 40 + "\n",
]

TIMING_SCRIPT = """
import json, sys, time
from bridge.redact import Redactor

redact = Redactor(json.loads(sys.argv[1]))
times = {}
for unit in json.loads(sys.argv[2]):
    for size in (100_000, 1_000_000):
        text = unit * (size // len(unit))
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            redact(text)
            best = min(best, time.perf_counter() - started)
        times[f"{unit!r} {size}"] = best
print(json.dumps(times))
"""


def test_redaction_takes_time_linear_in_the_text() -> None:
    """1 MB of adversarial text is redacted in well under a second, and takes about ten
    times what 100 KB takes (a quadratic pattern: a hundred times, and minutes).

    In a process of its own, so that a quadratic redactor fails at the timeout instead
    of holding the test run for an hour.
    """
    secrets = [URL, f"Bearer {TOKEN}", WEBHOOK_SECRET]
    script = textwrap.dedent(TIMING_SCRIPT)
    run = subprocess.run(
        [sys.executable, "-c", script, json.dumps(secrets), json.dumps(ADVERSARIAL_UNITS)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        check=True,
    )
    times: dict[str, float] = json.loads(run.stdout)
    for unit in ADVERSARIAL_UNITS:
        small, large = times[f"{unit!r} 100000"], times[f"{unit!r} 1000000"]
        assert large < 2.0, (unit, large)
        # Linear: about 10; quadratic: about 100. Tiny times are all noise: a floor.
        assert large < 40 * max(small, 0.002), (unit, small, large)


SECRET_FORMS = [URL, TOKEN, WEBHOOK_SECRET, quote(URL, safe=""), json.dumps(URL)[1:-1]]


def _prefix_of(secret: str) -> st.SearchStrategy[str]:
    return st.integers(MIN_CUT_PREFIX - 2, len(secret)).map(lambda kept: secret[:kept])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(SECRET_FORMS).flatmap(_prefix_of),
            st.sampled_from(["…", "...", " ", "\n", '"', "/", "https://"]),
            st.text(max_size=8),
        ),
        max_size=8,
    )
)
def test_a_line_without_a_secret_s_first_characters_is_redacted_alike(pieces: list[str]) -> None:
    # The quick check (no secret's first characters in the text) changes no result.
    redact = Redactor([URL, f"Bearer {TOKEN}", WEBHOOK_SECRET])
    text = "".join(pieces)
    assert redact(text) == redact.every_secret(text)
