"""Sample definitions that make the engine tangible: echo, failing, math, data and batch jobs.

Each one does real work on bounded input, so that no request can run for hours or produce a result too
large to store; the bounds live in the params models, so a bad request is a 422 at submit time. The
HTTP sample, call.api, lives in ``gpujobs.definitions.call_api``.
"""

from __future__ import annotations

import hashlib
import math
import operator
import random
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from gpujobs.exceptions import PermanentError, TransientError
from gpujobs.registry import JobContext, Params, RetryPolicy, job_definition

# JavaScript clients silently lose precision past 2**53 - 1, so larger integers travel as strings.
MAX_JS_SAFE_INTEGER = 2**53 - 1
MAX_MATH_NUMBERS = 10_000
MAX_ABS_OPERAND = 10**15
MAX_FIBONACCI_N = 10_000
MAX_FIBONACCI_TERMS = 100  # F(10,000) has 2,090 digits: 100 of them keep a result near 200 kB
MAX_PRIME_CANDIDATE = 10**12
MAX_PRODUCT_BITS = 13_000  # ~3,900 digits: below Python's 4,300-digit int-to-str limit
MAX_DATA_ROWS = 10_000
MAX_ROW_FIELDS = 50
MAX_STRING_CHARS = 1_000
MAX_BATCH_ITEMS = 1_000
MAX_BATCH_SIZE = 100
SAMPLE_DATASET_ROWS = 1_000
SAMPLE_DATASET_FIELD = "amount"
SAMPLE_REGIONS = ("north", "south", "east", "west")

# Deterministic Miller-Rabin witnesses: exact for every n < 3.3 * 10**24, far above MAX_PRIME_CANDIDATE.
_MILLER_RABIN_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)

ShortStr = Annotated[str, StringConstraints(max_length=MAX_STRING_CHARS)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]  # JSON has no NaN or Infinity
Number = int | FiniteFloat
# A bounded operand: the bounds on each member of the union, where JSON Schema can state them (on the
# union itself they became "ge"/"le" beside "anyOf", keywords no schema validator knows).
_OPERAND_BOUNDS = Field(ge=-MAX_ABS_OPERAND, le=MAX_ABS_OPERAND)
Operand = Annotated[int, _OPERAND_BOUNDS] | Annotated[float, _OPERAND_BOUNDS, Field(allow_inf_nan=False)]
Scalar = ShortStr | Number | bool | None


def js_safe(value: float) -> float | str:
    """Integers beyond JavaScript's exact range become decimal strings so no client rounds them."""
    if isinstance(value, int) and abs(value) > MAX_JS_SAFE_INTEGER:
        return str(value)
    return value


def exact_sum(numbers: list[int | float]) -> int | float:
    """Integers add exactly; floats go through fsum so 0.1 * 10 sums to 1.0, not 0.9999999999999999."""
    return math.fsum(numbers) if any(isinstance(n, float) for n in numbers) else sum(numbers)


# --- echo@1 and failing@1 ---------------------------------------------------------------------------


class EchoParams(Params):
    """Params of `echo@1`: a message and optional data, returned unchanged as the job's result."""

    message: str = Field("", max_length=10_000, description="text returned unchanged")
    data: dict[str, Any] | None = Field(None, description="any JSON object, returned unchanged")


@job_definition(
    "echo",
    1,
    params_model=EchoParams,
    max_attempts=3,
    timeout_seconds=30,
    concurrency_limit=None,
    description="Returns its message and data unchanged: the smallest possible round trip.",
)
def echo(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Return the params as the result, proving the submit-run-store path end to end."""
    return {"message": params["message"], "data": params["data"]}


class FailingParams(Params):
    """Params of `failing@1`: the error it raises on every attempt, and whether that error is retried."""

    message: str = Field(
        "failing@1 always fails", max_length=500, description="error message, followed by the attempt number"
    )
    permanent: bool = Field(
        False,
        description="raise a permanent error, exercising the fail-at-once path, instead of a transient one "
        "that is retried",
    )


@job_definition(
    "failing",
    1,
    params_model=FailingParams,
    max_attempts=3,
    timeout_seconds=30,
    concurrency_limit=None,
    retry=RetryPolicy(base_delay_seconds=1, max_delay_seconds=5),
    description="Always fails (transient by default) to exercise retries, backoff and the dead-letter queue.",
)
def failing(ctx: JobContext, params: dict[str, Any]) -> None:
    """Fail on every attempt so retries and the DLQ can be watched without a broken dependency."""
    error = PermanentError if params["permanent"] else TransientError
    raise error(f"{params['message']} (attempt {ctx.attempt})")


# --- compute.math@1 ----------------------------------------------------------------------------------


class MathParams(Params):
    """Params of `compute.math@1`: one operation over a bounded list of numbers."""

    operation: Literal["sum", "product", "fibonacci", "prime"] = Field(
        description="sum or product of all the numbers, the Fibonacci number F(n) of each, or whether each "
        "is prime"
    )
    numbers: list[Operand] = Field(
        min_length=1,
        max_length=MAX_MATH_NUMBERS,
        description=f"the operands; fibonacci takes at most {MAX_FIBONACCI_TERMS} whole numbers from 0 to "
        f"{MAX_FIBONACCI_N:,}, prime whole numbers from 0 to {MAX_PRIME_CANDIDATE:,}",
    )

    @model_validator(mode="after")
    def _check_operands(self) -> MathParams:
        if self.operation in ("fibonacci", "prime"):
            limit = MAX_FIBONACCI_N if self.operation == "fibonacci" else MAX_PRIME_CANDIDATE
            if any(not isinstance(n, int) or not 0 <= n <= limit for n in self.numbers):
                raise ValueError(f"{self.operation} takes whole numbers from 0 to {limit}")
        if self.operation == "fibonacci" and len(self.numbers) > MAX_FIBONACCI_TERMS:
            raise ValueError(f"fibonacci takes at most {MAX_FIBONACCI_TERMS} numbers")
        return self


def fibonacci(n: int) -> int:
    """F(n) by fast doubling: O(log n) multiplications instead of n additions."""
    a, b = 0, 1  # F(k), F(k+1), starting at k = 0
    for bit in bin(n)[2:]:
        a, b = a * (2 * b - a), a * a + b * b  # F(2k), F(2k+1)
        if bit == "1":
            a, b = b, a + b
    return a


def is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin: microseconds per number where trial division to 10**6 takes ms."""
    if n < 2:
        return False
    for p in _MILLER_RABIN_BASES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in _MILLER_RABIN_BASES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _product(numbers: list[int | float]) -> int | float:
    """Multiply, stopping as soon as an integer product outgrows what a result may hold."""
    if any(isinstance(n, float) for n in numbers):
        result = math.prod(numbers)
        if not math.isfinite(result):
            raise PermanentError("product overflows a 64-bit float")
        return result
    total = 1
    for n in numbers:
        total *= int(n)  # every n is an int: a float took the branch above
        if total.bit_length() > MAX_PRODUCT_BITS:
            raise PermanentError(f"product exceeds {MAX_PRODUCT_BITS} bits")
    return total


@job_definition(
    "compute.math",
    1,
    params_model=MathParams,
    max_attempts=3,
    timeout_seconds=60,
    concurrency_limit=None,
    description="CPU-bound math on a bounded list: sum, product, fibonacci terms or primality.",
)
def compute_math(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Run one arithmetic operation; big integers come back as strings."""
    op, numbers = params["operation"], params["numbers"]
    result: dict[str, Any] = {"operation": op, "count": len(numbers)}
    if op == "sum":
        result["result"] = js_safe(exact_sum(numbers))
    elif op == "product":
        result["result"] = js_safe(_product(numbers))
    elif op == "fibonacci":
        result["results"] = [{"n": n, "value": js_safe(fibonacci(n))} for n in numbers]
    else:
        checks = [{"n": n, "isPrime": is_prime(n)} for n in numbers]
        result["results"] = checks
        result["primeCount"] = sum(c["isPrime"] for c in checks)
    return result


# --- process.data@1 ----------------------------------------------------------------------------------

_CONDITIONS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
    "contains": lambda value, needle: isinstance(value, str) and str(needle) in value,
}


class DataParams(Params):
    """Params of `process.data@1`: records and one operation (aggregate, filter or transform) on a field."""

    dataset: str = Field(
        "inline",
        max_length=100,
        description=f"a label carried into the result; without data, the name of a generated sample of "
        f"{SAMPLE_DATASET_ROWS} records (id, region, amount), the same for the same name",
    )
    operation: Literal["aggregate", "filter", "transform"] = Field(
        description="aggregate: count, sum, min, max and mean of a numeric field per group; filter: keep the "
        "rows matching the condition; transform: rewrite the field in every row"
    )
    data: list[dict[str, Scalar]] | None = Field(
        None,
        max_length=MAX_DATA_ROWS,
        description=f"the records: objects of at most {MAX_ROW_FIELDS} fields with scalar values; "
        "omitted: the generated sample named by dataset",
    )
    field: str | None = Field(
        None,
        min_length=1,
        max_length=100,
        description="name of the field to aggregate, filter on or transform (required with data; "
        f"default {SAMPLE_DATASET_FIELD!r} on a generated sample)",
    )
    groupBy: str | None = Field(
        None, max_length=100, description="aggregate: the field whose value groups rows (one group if unset)"
    )
    condition: Literal["eq", "ne", "gt", "gte", "lt", "lte", "contains"] | None = Field(
        None,
        description="filter (required): how the field compares with value; contains finds value in a string. "
        "Rows without the field, or with a value of another type, do not match",
    )
    value: Scalar = Field(None, description="filter: what the field is compared with")
    transform: Literal["uppercase", "lowercase", "multiply", "round"] | None = Field(
        None,
        description="transform (required): upper- or lowercase a string, multiply a number by factor, or "
        "round it to digits decimals; null values stay null",
    )
    factor: FiniteFloat = Field(1.0, description="transform multiply: the number to multiply by")
    digits: int = Field(0, ge=0, le=10, description="transform round: decimal places to keep")

    @field_validator("data")
    @classmethod
    def _bounded_rows(cls, rows: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if rows is not None and any(len(row) > MAX_ROW_FIELDS for row in rows):
            raise ValueError(f"rows have at most {MAX_ROW_FIELDS} fields")
        return rows

    @model_validator(mode="after")
    def _operation_options(self) -> DataParams:
        if self.field is None:
            if self.data is not None:
                raise ValueError("field is required with data")
            self.field = SAMPLE_DATASET_FIELD
        if self.operation == "filter" and self.condition is None:
            raise ValueError("filter needs a condition")
        if self.operation == "transform" and self.transform is None:
            raise ValueError("transform needs a transform")
        return self


def sample_dataset(name: str) -> list[dict[str, Any]]:
    """The generated records named ``name``: the seed Job Server's examples name a dataset, send no rows."""
    rng = random.Random(hashlib.sha256(name.encode()).digest())
    return [
        {"id": i + 1, "region": rng.choice(SAMPLE_REGIONS), "amount": round(rng.uniform(1, 1000), 2)}
        for i in range(SAMPLE_DATASET_ROWS)
    ]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _aggregate(rows: list[dict[str, Any]], field: str, group_by: str | None) -> list[dict[str, Any]]:
    """Count, sum, min, max and mean of a numeric field per group (one group without groupBy)."""
    groups: dict[Any, list[int | float]] = {}
    for index, row in enumerate(rows):
        value = row.get(field)
        if value is not None and not _is_number(value):
            raise PermanentError(f"row {index}: field {field!r} is not numeric")
        values = groups.setdefault(row.get(group_by) if group_by else None, [])
        if value is not None:
            values.append(value)
    return [
        {
            "key": key,
            "count": len(values),
            "sum": js_safe(exact_sum(values)),
            "min": min(values, default=None),
            "max": max(values, default=None),
            "mean": math.fsum(values) / len(values) if values else None,
        }
        for key, values in groups.items()
    ]


def _matches(row: dict[str, Any], field: str, condition: str, needle: Any) -> bool:
    if field not in row:
        return False
    try:
        return bool(_CONDITIONS[condition](row[field], needle))
    except TypeError:  # comparing across types ("a" > 3): such a row simply does not match
        return False


def _transformed(value: Any, params: dict[str, Any], index: int) -> Any:
    """One field value after the transform; missing and null values pass through untouched."""
    kind = params["transform"]
    if value is None:
        return None
    if kind in ("uppercase", "lowercase"):
        if not isinstance(value, str):
            raise PermanentError(f"row {index}: {kind} needs a string in {params['field']!r}")
        return value.upper() if kind == "uppercase" else value.lower()
    if not _is_number(value):
        raise PermanentError(f"row {index}: {kind} needs a number in {params['field']!r}")
    return js_safe(value * params["factor"]) if kind == "multiply" else round(value, params["digits"])


@job_definition(
    "process.data",
    1,
    params_model=DataParams,
    max_attempts=3,
    timeout_seconds=120,
    concurrency_limit=None,
    description="Aggregates, filters or transforms a bounded list of records on one field.",
)
def process_data(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Run one record operation; the result names the dataset and operation it came from."""
    rows = params["data"] if params["data"] is not None else sample_dataset(params["dataset"])
    field, op = params["field"], params["operation"]
    result: dict[str, Any] = {"dataset": params["dataset"], "operation": op, "rowCount": len(rows)}
    if op == "aggregate":
        result.update(
            field=field, groupBy=params["groupBy"], groups=_aggregate(rows, field, params["groupBy"])
        )
    elif op == "filter":
        kept = [row for row in rows if _matches(row, field, params["condition"], params["value"])]
        result.update(matched=len(kept), rows=kept)
    else:
        result["rows"] = [
            {**row, field: _transformed(row[field], params, i)} if field in row else row
            for i, row in enumerate(rows)
        ]
    return result


# --- process.batch@1 ---------------------------------------------------------------------------------


class BatchParams(Params):
    """Params of `process.batch@1`: the items to normalise and fingerprint, and how many to take per batch."""

    items: list[ShortStr] = Field(
        min_length=1,
        max_length=MAX_BATCH_ITEMS,
        description="strings to normalise (whitespace collapsed, case folded) and fingerprint with SHA-256",
    )
    batchSize: int = Field(
        10,
        ge=1,
        le=MAX_BATCH_SIZE,
        description="items per batch; progress is reported and cancellation checked between batches",
    )


def normalise_item(item: str) -> dict[str, Any]:
    """Canonical form and fingerprint of one item: what a dedup or indexing pipeline would store."""
    normalised = " ".join(item.split()).casefold()
    return {
        "item": item,
        "normalised": normalised,
        "words": len(normalised.split()),
        "sha256": hashlib.sha256(normalised.encode()).hexdigest(),
    }


@job_definition(
    "process.batch",
    1,
    params_model=BatchParams,
    max_attempts=3,
    timeout_seconds=600,
    concurrency_limit=None,
    description="Normalises and fingerprints items batch by batch, reporting progress and honouring cancel.",
)
def process_batch(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Process items in batches with a progress report per batch and a cancel check between them."""
    items, size = params["items"], params["batchSize"]
    batch_count = math.ceil(len(items) / size)
    results: list[dict[str, Any]] = []
    for batch in range(batch_count):
        ctx.raise_if_cancelled()
        results.extend(normalise_item(item) for item in items[batch * size : (batch + 1) * size])
        ctx.progress(
            100 * len(results) / len(items), f"batch {batch + 1}/{batch_count}", processed=len(results)
        )
    digest = hashlib.sha256("".join(r["sha256"] for r in results).encode()).hexdigest()
    return {
        "processed": len(results),
        "batches": batch_count,
        "batchSize": size,
        "uniqueCount": len({r["normalised"] for r in results}),
        "digest": digest,
        "results": results,
    }
