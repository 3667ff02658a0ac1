"""The JobServ build model: signatures, both payload shapes, factory, identity, refusals."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bridge.jobserv import NotABuild, parse_build, sign, signature_digest, signed_by
from tests.conftest import FAILED, PASSED, SECRET, fixture_body, fixture_signature


def with_changes(name: str, **changes: Any) -> bytes:
    """A fixture's body with keys replaced (a value of None removes the key)."""
    data = json.loads(fixture_body(name))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return json.dumps(data).encode()


# -- signatures ----------------------------------------------------------------


@pytest.mark.parametrize("name", [PASSED, FAILED])
def test_fixture_signatures_verify_with_the_docs_secret(name: str) -> None:
    body = fixture_body(name)
    header = fixture_signature(name)

    assert sign(SECRET, body) == header
    digest = signature_digest(header)
    assert digest is not None
    assert signed_by(digest, body, [SECRET]) == 0


@pytest.mark.parametrize("name", [PASSED, FAILED])
def test_signature_covers_the_raw_bytes_not_the_json(name: str) -> None:
    body = fixture_body(name)
    digest = signature_digest(fixture_signature(name))
    assert digest is not None
    reserialized = json.dumps(json.loads(body), separators=(",", ":")).encode()

    assert signed_by(digest, body + b"\n", [SECRET]) is None
    assert signed_by(digest, reserialized, [SECRET]) is None


def test_sign_is_hmac_sha256_of_the_body_with_the_utf8_secret() -> None:
    body = b'{"build_id": 1}'
    secret = "s\u00e9cret"
    expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()

    assert sign(secret, body) == f"sha256:{expected}"


HEX = hashlib.sha256(b"any").hexdigest()


@pytest.mark.parametrize(
    "header",
    [f"sha256:{HEX}", f"sha256: {HEX}", f"sha256:   {HEX}", f"sha256:{HEX.upper()}"],
    ids=["plain", "space", "spaces", "upper-case-hex"],
)
def test_signature_header_accepted_forms(header: str) -> None:
    assert signature_digest(header) == bytes.fromhex(HEX)


@pytest.mark.parametrize(
    "header",
    [
        f"sha1:{HEX}",
        f"sha512:{HEX}",
        HEX,
        f"sha256={HEX}",
        f"sha256:{HEX[:-1]}",
        f"sha256:{HEX}0",
        f"sha256:{HEX[:-1]}g",
        "sha256:",
        "",
        "garbage",
        f"sha256:{HEX},sha256:{HEX}",
    ],
    ids=[
        "sha1",
        "sha512",
        "no-prefix",
        "equals",
        "short-hex",
        "long-hex",
        "non-hex",
        "empty-digest",
        "empty",
        "garbage",
        "two-values",
    ],
)
def test_signature_header_refused_forms(header: str) -> None:
    assert signature_digest(header) is None


def test_signed_by_picks_the_source_whose_secret_signed() -> None:
    body = fixture_body(FAILED)
    secrets = ["first-secret", "second-secret", SECRET, "fourth-secret"]

    for index, secret in enumerate(secrets):
        digest = signature_digest(sign(secret, body))
        assert digest is not None
        assert signed_by(digest, body, secrets) == index


def test_signed_by_refuses_an_unknown_secret_and_an_empty_list() -> None:
    body = fixture_body(FAILED)
    digest = signature_digest(sign("not-configured", body))
    assert digest is not None

    assert signed_by(digest, body, ["first-secret", SECRET]) is None
    assert signed_by(digest, body, []) is None


# -- the two payload shapes ------------------------------------------------------


def test_docs_example_shape_without_status_events_or_reason() -> None:
    build = parse_build(fixture_body(PASSED))

    assert build.build_id == 67
    assert build.status == "PASSED"
    assert build.trigger_name == "containers-devel"
    assert build.status_events == []
    assert build.reason is None
    assert build.runs_url is None
    assert [run.name for run in build.runs] == [
        "build-amd64-partner",
        "build-armhf",
        "build-aarch64",
        "publish-compose-apps",
    ]
    publish = build.runs[3]
    assert publish.tests is None
    assert publish.host_tag == "amd64-partner"
    assert build.runs[0].tests == (
        "https://api.foundries.io/projects/andy-corp/lmp/builds/67/runs/build-amd64-partner/tests/"
    )


def test_current_shape_with_status_events_reason_and_runs_url() -> None:
    build = parse_build(fixture_body(FAILED))

    assert build.build_id == 68
    assert build.status == "FAILED"
    assert [event.status for event in build.status_events] == [
        "QUEUED",
        "RUNNING",
        "RUNNING_WITH_FAILURES",
        "FAILED",
    ]
    assert build.status_events[-1].time == datetime(2021, 7, 27, 9, 3, 20, tzinfo=UTC)
    assert build.reason == "bump to test webhooks"
    assert build.annotation is None
    assert build.runs_url == "https://api.foundries.io/projects/andy-corp/lmp/builds/68/runs/"
    assert [(run.name, run.status) for run in build.runs] == [
        ("build-amd64-partner", "PASSED"),
        ("build-armhf", "FAILED"),
        ("build-aarch64", "PASSED"),
    ]


def test_unknown_keys_are_ignored() -> None:
    data = json.loads(fixture_body(FAILED))
    data["brand_new_key"] = {"nested": [1, 2, 3]}
    data["runs"][0]["another_new_key"] = "x"
    data["status_events"][0]["extra"] = True

    build = parse_build(json.dumps(data).encode())

    assert build == parse_build(fixture_body(FAILED))


def test_non_ascii_arrives_escaped_and_is_decoded() -> None:
    body = with_changes(FAILED, reason="Zo\u00eb's f\u00fcx")
    assert b"\\u00eb" in body

    assert parse_build(body).reason == "Zo\u00eb's f\u00fcx"


def test_timestamps_to_the_second() -> None:
    build = parse_build(fixture_body(PASSED))

    assert build.created == datetime(2021, 7, 26, 18, 10, 33, tzinfo=UTC)
    assert build.completed == datetime(2021, 7, 26, 18, 19, 24, tzinfo=UTC)
    assert build.runs[0].completed == datetime(2021, 7, 26, 18, 11, 42, tzinfo=UTC)


def test_timestamps_with_microseconds() -> None:
    stamp = "2026-11-28T23:23:55.799434+00:00"
    data = json.loads(fixture_body(FAILED))
    data["completed"] = stamp
    data["runs"][1]["completed"] = stamp
    data["status_events"][-1]["time"] = stamp

    build = parse_build(json.dumps(data).encode())

    expected = datetime(2026, 11, 28, 23, 23, 55, 799434, tzinfo=UTC)
    assert build.completed == expected
    assert build.runs[1].completed == expected
    assert build.status_events[-1].time == expected


# -- timestamps: every one aware, in UTC (naive means UTC) ------------------------------


def test_a_timestamp_without_an_offset_is_utc() -> None:
    data = json.loads(fixture_body(FAILED))
    data["created"] = "2021-07-27T09:02:05"
    data["runs"][0]["completed"] = "2021-07-27T09:03:20.5"
    data["status_events"][0]["time"] = "2021-07-27T09:02:05"

    build = parse_build(json.dumps(data).encode())

    assert build.created == datetime(2021, 7, 27, 9, 2, 5, tzinfo=UTC)
    assert build.runs[0].completed == datetime(2021, 7, 27, 9, 3, 20, 500000, tzinfo=UTC)
    assert build.status_events[0].time == datetime(2021, 7, 27, 9, 2, 5, tzinfo=UTC)


def test_naive_and_aware_timestamps_of_one_build_can_be_compared() -> None:
    # The field report: `created` without an offset, `completed` with one.
    build = parse_build(with_changes(FAILED, created="2021-07-27T09:02:05"))

    assert build.completed is not None and build.created is not None
    assert (build.completed - build.created).total_seconds() == 75


def test_a_date_alone_is_midnight_utc() -> None:
    # Not what JobServ writes, but a clear enough time: refusing it would lose the alert.
    build = parse_build(with_changes(FAILED, completed="2021-07-27"))

    assert build.completed == datetime(2021, 7, 27, tzinfo=UTC)


def test_other_offsets_are_converted_to_utc() -> None:
    build = parse_build(with_changes(FAILED, completed="2021-07-27T11:03:20+02:00"))

    assert build.completed == datetime(2021, 7, 27, 9, 3, 20, tzinfo=UTC)
    assert build.completed.utcoffset() == timedelta(0)
    assert build.identity == parse_build(fixture_body(FAILED)).identity


@pytest.mark.parametrize(
    "stamp",
    ["yesterday", "", "2021-13-01T00:00:00", "0001-01-01T00:00:00+01:00", 1627376525, True],
    ids=["word", "empty", "month-13", "before-utc-begins", "number", "bool"],
)
def test_garbage_timestamps_are_not_builds(stamp: Any) -> None:
    for changed in (
        with_changes(FAILED, created=stamp),
        with_changes(FAILED, status_events=[{"time": stamp, "status": "QUEUED"}]),
    ):
        with pytest.raises(NotABuild) as caught:
            parse_build(changed)

        assert_one_line(caught.value)


# -- strict types: what JobServ sends, not what can be coerced into it -------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"build_id": True},
        {"build_id": "68"},
        {"build_id": 68.0},
        {"status": 1},
        {"trigger_name": 7},
        {"reason": 3},
        {"runs_url": False},
        {"created": 1627376525.0},
    ],
    ids=lambda changes: f"{next(iter(changes))}={next(iter(changes.values()))!r}",
)
def test_coercible_values_of_the_wrong_type_are_not_builds(changes: dict[str, Any]) -> None:
    with pytest.raises(NotABuild) as caught:
        parse_build(with_changes(FAILED, **changes))

    assert_one_line(caught.value)
    assert next(iter(changes)) in str(caught.value)


def test_a_run_name_of_the_wrong_type_is_not_a_build() -> None:
    data = json.loads(fixture_body(FAILED))
    data["runs"][0]["name"] = 12

    with pytest.raises(NotABuild, match=r"runs\.0\.name"):
        parse_build(json.dumps(data).encode())


@pytest.mark.parametrize("annotation", [None, "text", 3, [1, "two"], {"any": {"thing": None}}])
def test_annotation_and_a_null_reason_are_still_anything(annotation: Any) -> None:
    data = json.loads(fixture_body(FAILED))
    data["annotation"] = annotation
    data["reason"] = None
    data["a_future_key"] = {"nested": [1.5, True]}

    build = parse_build(json.dumps(data).encode())

    assert build.annotation == annotation
    assert build.reason is None


# -- factory, project, trigger ----------------------------------------------------


def test_factory_and_project_of_a_factory_build() -> None:
    build = parse_build(fixture_body(PASSED))

    assert build.factory == "andy-corp"
    assert build.project == "andy-corp/lmp"


def test_public_lmp_project_is_its_own_factory() -> None:
    body = with_changes(
        PASSED,
        url="https://api.foundries.io/projects/lmp/builds/2225/",
        web_url="https://ci.foundries.io/projects/lmp/builds/2225",
    )

    build = parse_build(body)

    assert build.project == "lmp"
    assert build.factory == "lmp"


def test_factory_falls_back_to_web_url() -> None:
    body = with_changes(
        PASSED,
        url="https://api.example.com/builds/67/",
        web_url="https://ci.foundries.io/projects/other-corp/lmp/builds/67",
    )

    build = parse_build(body)

    assert build.factory == "other-corp"
    assert build.project == "other-corp/lmp"


@pytest.mark.parametrize(
    "url",
    ["https://api.example.com/builds/67/", "https://api.foundries.io/projects/", "http://[::1"],
)
def test_no_factory_anywhere_is_not_a_build(url: str) -> None:
    body = with_changes(PASSED, url=url, web_url="https://ci.example.com/builds/67")

    with pytest.raises(NotABuild, match="factory"):
        parse_build(body)


def test_trigger_names_keep_their_hyphens() -> None:
    build = parse_build(with_changes(FAILED, trigger_name="containers-feature-x"))

    assert build.trigger_name == "containers-feature-x"
    assert build.factory == "andy-corp"


def test_trigger_name_may_be_absent() -> None:
    build = parse_build(with_changes(FAILED, trigger_name=None))

    assert build.trigger_name is None
    assert build.factory == "andy-corp"


# -- identity ------------------------------------------------------------------------


def test_identity_is_stable_for_the_same_url_status_and_completed() -> None:
    original = parse_build(fixture_body(FAILED))
    resent = parse_build(
        with_changes(FAILED, reason="a different reason", runs=[], trigger_name="other")
    )

    assert resent.identity == original.identity


def test_a_rerun_with_another_status_is_another_event() -> None:
    original = parse_build(fixture_body(FAILED))
    rerun = parse_build(with_changes(FAILED, status="PASSED"))

    assert rerun.identity != original.identity


def test_a_rerun_completing_later_is_another_event() -> None:
    original = parse_build(fixture_body(FAILED))
    rerun = parse_build(with_changes(FAILED, completed="2021-07-27T10:00:01+00:00"))

    assert rerun.identity != original.identity


def test_another_build_is_another_event() -> None:
    failed = parse_build(fixture_body(FAILED))
    passed = parse_build(fixture_body(PASSED))

    assert failed.identity != passed.identity


# -- tolerance and refusals -----------------------------------------------------------


@pytest.mark.parametrize("status", ["CANCELLING", "SKIPPED", "SOMETHING_NEW"])
def test_an_unknown_run_status_is_accepted(status: str) -> None:
    data = json.loads(fixture_body(FAILED))
    data["runs"][0]["status"] = status

    build = parse_build(json.dumps(data).encode())

    assert build.runs[0].status == status


@pytest.mark.parametrize(
    "body",
    [b"[]", b'"a build"', b"67", b"null", b"true", b"", b"not json", b"\xff\xfe", b'{"build_id": '],
    ids=["list", "string", "number", "null", "bool", "empty", "text", "bad-utf8", "truncated"],
)
def test_non_objects_are_not_builds(body: bytes) -> None:
    with pytest.raises(NotABuild) as caught:
        parse_build(body)

    assert_one_line(caught.value)


@pytest.mark.parametrize("key", ["build_id", "url", "status", "runs"])
def test_missing_required_key_is_named(key: str) -> None:
    with pytest.raises(NotABuild, match=key) as caught:
        parse_build(with_changes(FAILED, **{key: None}))

    assert_one_line(caught.value)


def test_missing_run_key_is_named() -> None:
    data = json.loads(fixture_body(FAILED))
    del data["runs"][1]["log_url"]

    with pytest.raises(NotABuild, match=r"runs\.1\.log_url") as caught:
        parse_build(json.dumps(data).encode())

    assert_one_line(caught.value)


@pytest.mark.parametrize(
    "changes",
    [
        {"build_id": "sixty-eight"},
        {"build_id": 10**30},
        {"url": 42},
        {"status": ["FAILED"]},
        {"runs": "build-armhf"},
        {"runs": [1, 2]},
        {"completed": "yesterday"},
        {"status_events": [{"time": "noon", "status": "FAILED"}]},
        {"reason": {"text": "why"}},
    ],
    ids=lambda changes: next(iter(changes)),
)
def test_wrong_types_are_not_builds(changes: dict[str, Any]) -> None:
    with pytest.raises(NotABuild) as caught:
        parse_build(with_changes(FAILED, **changes))

    assert_one_line(caught.value)
    assert next(iter(changes)) in str(caught.value)


def test_many_problems_still_give_one_line() -> None:
    with pytest.raises(NotABuild, match="more problems") as caught:
        parse_build(b'{"build_id": "x", "url": 1, "status": 2, "runs": 3}')

    assert_one_line(caught.value)


def test_deeply_nested_json_is_not_a_build() -> None:
    depth = 100_000
    with pytest.raises(NotABuild) as caught:
        parse_build(b"[" * depth + b"]" * depth)

    assert_one_line(caught.value)


def assert_one_line(error: NotABuild) -> None:
    message = str(error)
    assert message.strip()
    assert "\n" not in message
    assert len(message) < 300
