"""PostgreSQL's statement log as a counter: the embedded server has no ``pg_stat_statements``.

The server's ``log_statement = 'all'`` records every statement a client sends, simple or extended
protocol (psycopg2 sends simple queries, psycopg 3 ``execute <name>:`` records); counting them gives the
round trips per job. A statement gpujobs prepared (``gpujobs.prepared``) goes out as ``EXECUTE name(...)``
and is counted as the statement it runs; the ``PREPARE`` itself, once per connection, counts as
``PREPARE``. The server also logs each statement's CPU (``log_statement_stats``), which ``server_cpu``
adds up by kind. Logging costs the server CPU, so CPU figures come from runs without it.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter, defaultdict

import psycopg2

_RECORD = re.compile(r"^\d{4}-\d\d-\d\d ", re.M)  # a log record starts with its timestamp
_STATEMENT = re.compile(r"LOG:  (?:statement|execute [^:]*): (.*)", re.S)
_PREPARE = re.compile(r"PREPARE (\S+) AS (.*)", re.S)
_STATISTICS = re.compile(r"!\s+([\d.]+) s user, ([\d.]+) s system")
_TABLE = re.compile(r"^(?:UPDATE|INSERT INTO|DELETE FROM) (\w+)|\bFROM (\w+)", re.I)
# Each statement's log line; its server CPU (user and system, parse to end) after it (QUERY STATISTICS).
_SETTINGS = {"log_statement": "'all'", "log_statement_stats": "on", "log_min_error_statement": "log"}


def log_statements(url: str, on: bool) -> None:
    """Turn the server's log of every statement and of its CPU on or off (server-wide, at once)."""
    with contextlib.closing(psycopg2.connect(url)) as conn:
        conn.autocommit = True
        with conn.cursor() as cursor:
            for name, value in _SETTINGS.items():
                cursor.execute(f"ALTER SYSTEM SET {name} = {value}" if on else f"ALTER SYSTEM RESET {name}")
            cursor.execute("SELECT pg_reload_conf()")


def count_statements(log_text: str) -> Counter[str]:
    """Statements in a PostgreSQL log excerpt, keyed by verb and first table (``SELECT jobs``)."""
    kinds: Counter[str] = Counter()
    prepared = _prepared(log_text)
    for record in _RECORD.split(log_text):
        if (match := _STATEMENT.search(record)) is not None and (kind := _kind(match.group(1), prepared)):
            kinds[kind] += 1  # an empty query (psycopg 3 sends some) is no statement
    return kinds


def server_cpu(log_text: str) -> list[tuple[str, float]]:
    """The server's CPU seconds (parse, plan, execute) per statement kind, from its QUERY STATISTICS,
    largest first."""
    seconds: defaultdict[str, float] = defaultdict(float)
    prepared = _prepared(log_text)
    records = _RECORD.split(log_text)
    for index, record in enumerate(records[:-2]):
        if "LOG:  QUERY STATISTICS" not in record or (used := _STATISTICS.search(records[index + 1])) is None:
            continue
        statement = records[index + 2].partition("STATEMENT:  ")[2]
        seconds[_kind(statement, prepared) or "?"] += float(used[1]) + float(used[2])
    return sorted(seconds.items(), key=lambda item: -item[1])


def _prepared(log_text: str) -> dict[str, str]:
    """Each prepared statement's name and text, as logged when prepared or executed."""
    records = (_PREPARE.search(record) for record in _RECORD.split(log_text))
    return {match[1]: match[2] for match in records if match is not None}


def _kind(sql: str, prepared: dict[str, str]) -> str:
    """``VERB table`` of a statement ("" for an empty one); an ``EXECUTE`` of a prepared one is the
    statement it runs."""
    sql = sql.strip()
    if sql.startswith("PREPARE "):
        return "PREPARE"
    if sql.startswith("EXECUTE "):
        sql = prepared.get(sql.split()[1].partition("(")[0], sql).strip()
    if not (words := sql.split()):
        return ""
    verb = " ".join(words[:2]) if words[0].upper() in ("INSERT", "DELETE") else words[0]
    table = _TABLE.search(sql)
    name = next((t for t in table.groups() if t), "") if table else ""
    return "SELECT 1 (pool pre-ping)" if sql == "SELECT 1" else f"{verb.upper()} {name}".rstrip()
