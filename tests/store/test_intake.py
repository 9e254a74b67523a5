"""What the database would refuse is found before the batch (store/intake.py), and the
event log tells a refused value (one item's fault) from a failing database."""

from __future__ import annotations

import sqlite3

import peewee as pw
import pytest

from relaybox.protocol.encoding import dumps, uuid4
from relaybox.store.events import PublishRequest
from relaybox.store.intake import publish_problem
from relaybox.store.sql import data_error

U, D = "u1-" + "0" * 33, "d1-" + "0" * 33


def req(**fields: object) -> PublishRequest:
    base: dict[str, object] = {"user_id": U, "device_id": D, "client_id": uuid4(),
                               "stream": "notes", "body": '{"a":1}', "key": None,
                               "base_seq": None}
    base.update(fields)
    return PublishRequest(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("fields", [
    {},
    {"key": "k" * 64},
    {"key": "é" * 128},  # 256 UTF-8 bytes
    {"key": ""},
    {"device_id": None, "stream": "sys.devices"},
    {"body": dumps({"text": "a\x00b"})},  # a NUL inside JSON is the text \u0000
    {"body": dumps("ünïcödé \U0001f600")},
    {"stream": "s" * 64},
    {"base_seq": 0},
    {"base_seq": 2 ** 70},  # compared in Python, never bound into SQL
])
def test_what_every_database_stores_passes(fields: dict[str, object]) -> None:
    assert publish_problem(req(**fields)) is None


@pytest.mark.parametrize(("fields", "words"), [
    ({"key": "a\x00b"}, "key contains a NUL"),
    ({"body": '"a\x00b"'}, "body contains a NUL"),
    ({"stream": "a\x00b"}, "stream contains a NUL"),
    ({"client_id": "\x00" * 36}, "id contains a NUL"),
    ({"device_id": "d\x00"}, "device_id contains a NUL"),
    ({"user_id": "u\x00"}, "user_id contains a NUL"),
    ({"key": "\ud800"}, "key is not valid UTF-8"),
    ({"body": '"\udfff"'}, "body is not valid UTF-8"),
    ({"stream": "s" * 65}, "stream is longer than 64"),
    ({"client_id": "c" * 37}, "id is longer than 36"),
    ({"device_id": "d" * 37}, "device_id is longer than 36"),
    ({"user_id": "u" * 37}, "user_id is longer than 36"),
    ({"key": "é" * 129}, "key is longer than 256 UTF-8 bytes"),
    ({"key": 5}, "key must be text"),
    ({"body": None}, "body must be text"),
    ({"stream": b"notes"}, "stream must be text"),
    ({"base_seq": -1}, "base_seq must be an integer >= 0"),
    ({"base_seq": True}, "base_seq must be an integer >= 0"),
    ({"base_seq": 1.0}, "base_seq must be an integer >= 0"),
])
def test_what_a_database_refuses_is_named(fields: dict[str, object], words: str) -> None:
    problem = publish_problem(req(**fields))
    assert problem is not None and problem.startswith(words), problem


class _PgError(Exception):
    def __init__(self, pgcode: str) -> None:
        super().__init__(pgcode)
        self.pgcode = pgcode


@pytest.mark.parametrize(("exc", "item"), [
    (ValueError("A string literal cannot contain NUL (0x00) characters."), True),
    (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), True),
    (OverflowError("Python int too large to convert to SQLite INTEGER"), True),
    (pw.DataError(sqlite3.DataError("string or blob too big")), True),
    (pw.IntegrityError(sqlite3.IntegrityError("CHECK constraint failed: x")), True),
    (pw.IntegrityError(sqlite3.IntegrityError("UNIQUE constraint failed: event.seq")), False),
    (pw.IntegrityError(sqlite3.IntegrityError("NOT NULL constraint failed: x.y")), False),
    (pw.OperationalError(sqlite3.OperationalError("database is locked")), False),
    (pw.OperationalError(sqlite3.OperationalError("disk I/O error")), False),
    (pw.InterfaceError(sqlite3.InterfaceError("connection closed")), False),
    (pw.DataError(_PgError("22001")), True),  # string too long for varchar(n)
    (pw.DataError(_PgError("22003")), True),  # numeric value out of range
    (pw.IntegrityError(_PgError("23514")), True),  # check violation
    (pw.IntegrityError(_PgError("23505")), False),  # unique: a concurrent writer
    (pw.IntegrityError(_PgError("23502")), False),  # not null: the writer's own fault
    (pw.OperationalError(_PgError("54000")), True),  # index row too large
    (pw.OperationalError(_PgError("08006")), False),  # connection failure
    (pw.OperationalError(_PgError("40P01")), False),  # deadlock
    (pw.OperationalError(_PgError("55P03")), False),  # lock not available
    (pw.OperationalError(_PgError("57P01")), False),  # admin shutdown
    (pw.OperationalError(_PgError("53100")), False),  # disk full
    (RuntimeError("a bug"), False),
    (ValueError("not enough values to unpack"), False),  # a bug too
])
def test_a_refused_value_is_told_from_a_failing_database(exc: Exception, item: bool) -> None:
    assert data_error(exc) is item
