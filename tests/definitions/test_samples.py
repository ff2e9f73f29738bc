"""The sample definitions run directly: echo, failing, compute.math, process.data, call.api, process.batch."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import ValidationError

from gpujobs.definitions import call_api, samples
from gpujobs.exceptions import JobCancelled, PermanentError, TransientError
from gpujobs.outbound import UnsafeURLError
from gpujobs.registry import all_definitions, get_definition

# --- echo and failing ---------------------------------------------------------------------------------


def test_echo_returns_its_message_and_data(run_job):
    assert run_job("echo", {"message": "Hello", "data": {"n": 1}}) == {"message": "Hello", "data": {"n": 1}}


def test_echo_refuses_unknown_params(run_job):
    with pytest.raises(ValidationError):
        run_job("echo", {"message": "Hello", "colour": "blue"})


def test_failing_raises_a_transient_error_on_every_attempt_with_a_short_backoff(run_job, make_ctx):
    definition = get_definition("failing", 1)
    assert definition.max_attempts == 3 and definition.retry.max_delay_seconds <= 5
    for attempt in (1, 2, 3):
        ctx = make_ctx()
        ctx.attempt = attempt
        with pytest.raises(TransientError, match=f"attempt {attempt}"):
            run_job("failing", {}, ctx)


def test_failing_can_fail_permanently_to_exercise_the_fail_at_once_path(run_job):
    with pytest.raises(PermanentError):
        run_job("failing", {"permanent": True})


# --- compute.math --------------------------------------------------------------------------------------


def test_sum_of_integers_is_exact_and_of_floats_is_correctly_rounded(run_job):
    assert run_job("compute.math", {"operation": "sum", "numbers": [1, 2, 3]})["result"] == 6
    assert run_job("compute.math", {"operation": "sum", "numbers": [0.1] * 10})["result"] == 1.0


def test_a_product_beyond_javascripts_safe_range_comes_back_as_a_string(run_job):
    result = run_job("compute.math", {"operation": "product", "numbers": [10**15, 10**15, 7]})
    assert result == {"operation": "product", "count": 3, "result": str(7 * 10**30)}
    assert run_job("compute.math", {"operation": "product", "numbers": [2, 3, 7]})["result"] == 42


def test_a_product_too_large_to_store_fails_permanently(run_job):
    with pytest.raises(PermanentError, match="bits"):
        run_job("compute.math", {"operation": "product", "numbers": [10**15] * 1_000})


def test_fibonacci_returns_each_term_with_large_ones_as_strings(run_job):
    result = run_job("compute.math", {"operation": "fibonacci", "numbers": [0, 1, 10, 35, 100, 10_000]})
    values = [term["value"] for term in result["results"]]
    assert values[:5] == [0, 1, 55, 9_227_465, "354224848179261915075"]
    assert len(values[5]) == 2090 and values[5].startswith("33644764876431783266621612005107543310302148")


def _sieve(low: int, high: int) -> list[bool]:
    """Primality of low..high-1 by a segmented sieve: an independent check of Miller-Rabin."""
    limit = math.isqrt(high) + 1
    small = bytearray([1]) * limit
    small[:2] = b"\0\0"
    for i in range(2, math.isqrt(limit) + 1):
        if small[i]:
            small[i * i :: i] = bytes(len(small[i * i :: i]))
    segment = [True] * (high - low)
    for p in (i for i in range(2, limit) if small[i]):
        for multiple in range(max(p * p, -(-low // p) * p), high, p):
            segment[multiple - low] = False
    return segment


def test_prime_checks_a_full_list_near_the_bound_quickly(run_job):
    numbers = list(range(10**12 - 10_000, 10**12))
    started = time.monotonic()
    result = run_job("compute.math", {"operation": "prime", "numbers": numbers})
    assert time.monotonic() - started < 5
    assert result["count"] == 10_000 and result["primeCount"] == 337
    assert [check["isPrime"] for check in result["results"]] == _sieve(10**12 - 10_000, 10**12)
    small = run_job("compute.math", {"operation": "prime", "numbers": [0, 1, 2, 561, 7919, 999_999_999_989]})
    assert [check["isPrime"] for check in small["results"]] == [False, False, True, False, True, True]


@pytest.mark.parametrize(
    ("operation", "numbers"),
    [
        ("sum", []),
        ("sum", [1] * 10_001),
        ("sum", [10**16]),
        ("sum", [float("inf")]),
        ("fibonacci", [10_001]),
        ("fibonacci", [-1]),
        ("fibonacci", [1.5]),
        ("fibonacci", [1] * 101),
        ("prime", [10**12 + 1]),
        ("sqrt", [4]),
    ],
)
def test_math_params_outside_the_bounds_are_refused_at_validation(run_job, operation, numbers):
    with pytest.raises(ValidationError):
        run_job("compute.math", {"operation": operation, "numbers": numbers})


def _keywords(schema: Any) -> Iterator[str]:
    """Every keyword used anywhere in a JSON Schema (property names are names, not keywords)."""
    if isinstance(schema, list):
        for item in schema:
            yield from _keywords(item)
    elif isinstance(schema, dict):
        for key, value in schema.items():
            yield key
            named = key in ("properties", "$defs", "patternProperties")
            yield from _keywords(list(value.values()) if named else value)


def test_every_params_schema_speaks_json_schema_and_states_the_math_bounds():
    """Bounds put on a union became pydantic's ``ge``/``le`` beside ``anyOf``: no validator knows them,
    so a client checking its params against the published schema accepted 1e16."""
    for definition in all_definitions():
        assert not {"ge", "le", "gt", "lt"} & set(_keywords(definition.params_model.model_json_schema()))
    items = samples.MathParams.model_json_schema()["properties"]["numbers"]["items"]
    assert [(m["minimum"], m["maximum"]) for m in items["anyOf"]] == [(-(10**15), 10**15)] * 2


# --- process.data --------------------------------------------------------------------------------------

SALES = [
    {"region": "north", "amount": 10, "item": "apple"},
    {"region": "south", "amount": 2.5, "item": "Pear"},
    {"region": "north", "amount": 5, "item": "plum"},
    {"region": "south", "amount": None, "item": "fig"},
    {"region": "east", "item": "kiwi"},
]


def test_aggregate_groups_a_numeric_field_and_skips_missing_values(run_job):
    params = {"dataset": "sales-2024", "operation": "aggregate", "data": SALES, "field": "amount"}
    result = run_job("process.data", {**params, "groupBy": "region"})
    assert result["dataset"] == "sales-2024" and result["rowCount"] == 5
    assert result["groups"] == [
        {"key": "north", "count": 2, "sum": 15, "min": 5, "max": 10, "mean": 7.5},
        {"key": "south", "count": 1, "sum": 2.5, "min": 2.5, "max": 2.5, "mean": 2.5},
        {"key": "east", "count": 0, "sum": 0, "min": None, "max": None, "mean": None},
    ]
    assert run_job("process.data", params)["groups"][0]["sum"] == 17.5


def test_aggregate_over_a_non_numeric_field_fails_permanently(run_job):
    with pytest.raises(PermanentError, match="row 0"):
        run_job("process.data", {"operation": "aggregate", "data": SALES, "field": "item"})


def test_filter_keeps_matching_rows_and_never_matches_across_types(run_job):
    params = {"operation": "filter", "data": SALES, "field": "amount", "condition": "gte", "value": 5}
    result = run_job("process.data", params)
    assert result["matched"] == 2 and [row["item"] for row in result["rows"]] == ["apple", "plum"]
    contains = {**params, "field": "item", "condition": "contains", "value": "p"}
    assert [row["item"] for row in run_job("process.data", contains)["rows"]] == ["apple", "plum"]
    assert run_job("process.data", {**params, "value": "five"})["matched"] == 0


def test_transform_rewrites_one_field_and_leaves_missing_values_alone(run_job):
    upper = {"operation": "transform", "data": SALES, "field": "item", "transform": "uppercase"}
    assert [row["item"] for row in run_job("process.data", upper)["rows"]][:2] == ["APPLE", "PEAR"]
    double = {**upper, "field": "amount", "transform": "multiply", "factor": 2}
    assert [row.get("amount") for row in run_job("process.data", double)["rows"]] == [20, 5.0, 10, None, None]
    with pytest.raises(PermanentError, match="needs a number"):
        run_job("process.data", {**double, "field": "item"})


def test_process_data_params_without_their_options_or_too_large_are_refused(run_job):
    with pytest.raises(ValidationError, match="condition"):
        run_job("process.data", {"operation": "filter", "data": SALES, "field": "amount"})
    with pytest.raises(ValidationError):
        run_job("process.data", {"operation": "aggregate", "data": [{"a": 1}] * 10_001, "field": "a"})


# --- process.batch -------------------------------------------------------------------------------------


def test_batch_reports_progress_once_per_batch_and_fingerprints_each_item(run_job, ctx):
    items = [f"  Item   {i} " for i in range(25)]
    result = run_job("process.batch", {"items": items, "batchSize": 10}, ctx)
    assert ctx.percents == [40, 80, 100]
    assert [data["processed"] for _, _, data in ctx.progress_calls] == [10, 20, 25]
    assert result["processed"] == 25 and result["batches"] == 3 and result["uniqueCount"] == 25
    assert result["results"][3]["normalised"] == "item 3" and len(result["results"][3]["sha256"]) == 64


def test_batch_stops_between_batches_once_cancellation_is_requested(run_job, make_ctx):
    ctx = make_ctx(cancel_after_progress=2)
    with pytest.raises(JobCancelled):
        run_job("process.batch", {"items": [str(i) for i in range(50)], "batchSize": 5}, ctx)
    assert ctx.percents == [10, 20]


def test_batch_params_are_bounded(run_job):
    with pytest.raises(ValidationError):
        run_job("process.batch", {"items": ["x"] * (samples.MAX_BATCH_ITEMS + 1), "batchSize": 5})
    with pytest.raises(ValidationError):
        run_job("process.batch", {"items": ["x"], "batchSize": 0})


# --- call.api ------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """A tiny target: /json echoes the request, /busy is overloaded, /missing is a 404, /big is large."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        request_body = self.rfile.read(length).decode() if length else None
        if self.path == "/busy":
            self._send(503, b"try later", "text/plain", {"Retry-After": "2"})
        elif self.path == "/missing":
            self._send(404, b"no such thing", "text/plain")
        elif self.path == "/big":
            self._send(200, b"x" * 100_000, "text/plain")
        else:
            echo = {"method": self.command, "path": self.path, "body": request_body}
            echo["header"] = self.headers.get("X-Test")
            self._send(200, json.dumps(echo).encode(), "application/json")

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": content_type, **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


@pytest.fixture
def target() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_call_api_returns_status_parsed_json_and_timing(flask_app, run_job, target):
    params = {
        "endpoint": f"{target}/json?q=1",
        "method": "POST",
        "body": {"a": 1},
        "headers": {"X-Test": "yes"},
    }
    result = run_job("call.api", params)
    assert result["statusCode"] == 200 and result["truncated"] is False
    assert result["body"] == {"method": "POST", "path": "/json?q=1", "body": '{"a":1}', "header": "yes"}
    assert result["contentType"] == "application/json" and result["elapsedMs"] >= 0


def test_call_api_bounds_a_large_body(flask_app, run_job, target):
    result = run_job("call.api", {"endpoint": f"{target}/big"})
    assert result["truncated"] is True and result["sizeBytes"] == call_api.MAX_RESPONSE_BYTES


def test_call_api_retries_a_503_and_honours_retry_after(flask_app, run_job, target):
    with pytest.raises(TransientError, match="503") as raised:
        run_job("call.api", {"endpoint": f"{target}/busy"})
    assert raised.value.retry_after_seconds == 2


def test_call_api_fails_at_once_on_a_404(flask_app, run_job, target):
    with pytest.raises(PermanentError, match="404"):
        run_job("call.api", {"endpoint": f"{target}/missing"})


def test_call_api_refuses_a_private_target_at_submit_and_at_send(flask_app, run_job, target, ctx):
    definition = get_definition("call.api", 1)
    params = definition.validate_params({"endpoint": f"{target}/json"})
    flask_app.config["GPUJOBS_WEBHOOK_ALLOW_PRIVATE"] = False
    with pytest.raises(ValidationError, match="public"):
        definition.validate_params({"endpoint": f"{target}/json"})
    with pytest.raises(UnsafeURLError):
        definition.handler(ctx, params)  # validated while allowed, refused when the worker sends


def test_call_api_refuses_reserved_headers_and_a_body_on_get(flask_app, run_job, target):
    with pytest.raises(ValidationError, match="host"):
        run_job("call.api", {"endpoint": f"{target}/json", "headers": {"Host": "internal"}})
    with pytest.raises(ValidationError, match="no body"):
        run_job("call.api", {"endpoint": f"{target}/json", "body": {"a": 1}})
    with pytest.raises(ValidationError):
        run_job("call.api", {"endpoint": "file:///etc/passwd"})
