"""003: the counters behind the per-user quotas (docs/configuration.md [quotas]).

``stream_head.key_count`` counts the distinct event keys written to a stream (an upper
bound: retention does not lower it), ``user.stored_bytes`` the bytes of the event bodies
a user has stored (retention lowers it). The writer keeps both up to date in the
transaction that stores the events; here they are filled in from the events already
stored. Server-made ``sys.`` streams are not counted.
"""

import peewee as pw

_NOT_SYS = "stream NOT LIKE 'sys.%%'"


def migrate(migrator, database, fake=False, **kwargs):
    migrator.add_fields("stream_head", key_count=pw.BigIntegerField(default=0))
    migrator.add_fields("user", stored_bytes=pw.BigIntegerField(default=0))
    pg = isinstance(database, pw.PostgresqlDatabase)
    octets = "octet_length(body)" if pg else "length(CAST(body AS BLOB))"
    not_sys = _NOT_SYS if pg else _NOT_SYS.replace("%%", "%")
    migrator.sql(
        'UPDATE stream_head SET key_count = (SELECT COUNT(DISTINCT key) FROM event '
        "WHERE event.user_id = stream_head.user_id AND event.stream = stream_head.stream "
        f"AND event.key IS NOT NULL) WHERE {not_sys}")
    migrator.sql(
        f'UPDATE "user" SET stored_bytes = (SELECT COALESCE(SUM({octets}), 0) FROM event '
        f'WHERE event.user_id = "user".id AND {not_sys})')


def rollback(migrator, database, fake=False, **kwargs):
    migrator.remove_fields("user", "stored_bytes")
    migrator.remove_fields("stream_head", "key_count")
