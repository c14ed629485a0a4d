"""Database URLs: which backend a ``--database`` names, and how PostgreSQL URLs are read."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from stepd.server.cli import main
from stepd.server.store.postgres import async_url, display_url, is_postgres_url
from tests.backends import SKIP_POSTGRES, postgres_url


@pytest.mark.parametrize(
    ("database", "postgres"),
    [
        ("stepd.db", False),
        ("/var/lib/stepd/stepd.db", False),
        ("sqlite:///stepd.db", False),
        ("postgresql://u@h/db", True),
        ("postgres://u@h/db", True),
        ("postgresql+asyncpg://u@h/db", True),
    ],
)
def test_the_url_picks_the_backend(database: str, postgres: bool) -> None:
    assert is_postgres_url(database) is postgres


@pytest.mark.parametrize(
    "database",
    [
        "postgresql://u:pw@h:5433/db",
        "postgres://u:pw@h:5433/db",
        "postgresql+asyncpg://u:pw@h:5433/db",
    ],
)
def test_plain_urls_use_asyncpg(database: str) -> None:
    url = async_url(database)
    assert url.drivername == "postgresql+asyncpg"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "u",
        "pw",
        "h",
        5433,
        "db",
    )


def test_the_password_is_not_shown() -> None:
    shown = display_url("postgresql://stepd:s3cret@db:5432/stepd")
    assert "s3cret" not in shown
    assert shown.startswith("postgresql://stepd:") and shown.endswith("@db:5432/stepd")
    assert display_url("stepd.db") == "stepd.db"


def test_serve_refuses_an_empty_pool(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--db-pool-size", "0"])
    assert exited.value.code == 2
    assert "--db-pool-size='0' must be at least 1" in capsys.readouterr().err


def test_serve_explains_a_missing_sqlite_directory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--address", "127.0.0.1:0", "--database", "/no/such/dir/x.db"]) == 1
    assert "the directory of the database file does not exist" in capsys.readouterr().err


def test_serve_explains_a_missing_postgres_database(capsys: pytest.CaptureFixture[str]) -> None:
    server = postgres_url()
    if server is None:
        pytest.skip(SKIP_POSTGRES)
    missing = make_url(server).set(database="stepd_no_such_database")
    url = missing.render_as_string(hide_password=False)
    assert main(["serve", "--address", "127.0.0.1:0", "--database", url]) == 1
    err = capsys.readouterr().err
    assert "cannot open the database" in err and "stepd_no_such_database" in err


def test_sslmode_is_taken_and_other_parameters_are_refused() -> None:
    url = async_url("postgresql://u@h/db?sslmode=require")
    assert dict(url.query) == {"ssl": "require"}
    assert dict(async_url("postgresql://u@h/db").query) == {}
    with pytest.raises(ValueError, match="sslmode='sometimes'"):
        async_url("postgresql://u@h/db?sslmode=sometimes")
    with pytest.raises(ValueError, match="unsupported parameter 'connect_timeout'"):
        async_url("postgresql://u@h/db?connect_timeout=3")


def test_serve_explains_a_server_without_tls(capsys: pytest.CaptureFixture[str]) -> None:
    server = postgres_url()
    if server is None:
        pytest.skip(SKIP_POSTGRES)
    # Refused either way: this server has no TLS, or its certificate is not trusted.
    url = make_url(server).update_query_dict({"sslmode": "verify-full"})
    database = url.render_as_string(hide_password=False)
    assert main(["serve", "--address", "127.0.0.1:0", "--database", database]) == 1
    err = capsys.readouterr().err
    assert err.startswith("stepd: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
