"""Databases of their own on the test server, for tests that migrate an empty schema or an old one."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import create_engine, text

from gpujobs import create_app
from gpujobs.extensions import sqlalchemy_url


def new_database(servers: dict[str, str], name: str) -> str:
    """An empty database on the test server (dropped first if a run left it); its URL."""
    admin = create_engine(sqlalchemy_url(servers["DATABASE_URL"]), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return servers["DATABASE_URL"].replace("/gpujobs", f"/{name}")


def app_on(url: str, **config: object) -> Flask:
    """The service's app on another database."""
    return create_app({"DATABASE_URL": url, "SQLALCHEMY_DATABASE_URI": sqlalchemy_url(url), **config})
