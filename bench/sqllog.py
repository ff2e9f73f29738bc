"""PostgreSQL's statement log as a counter: the embedded server has no ``pg_stat_statements``.

The server's ``log_statement = 'all'`` records every statement a client sends, simple or extended
protocol (psycopg2 sends simple queries, psycopg 3 ``execute <name>:`` records); counting them gives the
round trips per job. Logging costs the server CPU, so CPU figures come from runs without it.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter

import psycopg2

_RECORD = re.compile(r"^\d{4}-\d\d-\d\d ", re.M)  # a log record starts with its timestamp
_STATEMENT = re.compile(r"LOG:  (?:statement|execute [^:]*): (.*)", re.S)
_TABLE = re.compile(r"^(?:UPDATE|INSERT INTO|DELETE FROM) (\w+)|\bFROM (\w+)", re.I)


def log_statements(url: str, on: bool) -> None:
    """Turn the server's log of every statement on or off (server-wide, at once)."""
    with contextlib.closing(psycopg2.connect(url)) as conn:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(
                "ALTER SYSTEM SET log_statement = 'all'" if on else "ALTER SYSTEM RESET log_statement"
            )
            cursor.execute("SELECT pg_reload_conf()")


def count_statements(log_text: str) -> Counter[str]:
    """Statements in a PostgreSQL log excerpt, keyed by verb and first table (``SELECT jobs``)."""
    kinds: Counter[str] = Counter()
    for record in _RECORD.split(log_text):
        if (match := _STATEMENT.search(record)) is None:
            continue
        sql = match.group(1).strip()
        if not (words := sql.split()):
            continue
        verb = " ".join(words[:2]) if words[0].upper() in ("INSERT", "DELETE") else words[0]
        table = _TABLE.search(sql)
        name = next((t for t in table.groups() if t), "") if table else ""
        kinds["SELECT 1 (pool pre-ping)" if sql == "SELECT 1" else f"{verb.upper()} {name}".rstrip()] += 1
    return kinds
