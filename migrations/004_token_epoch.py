"""004: ``device.token_epoch``, the revocation count that access tokens are checked against.

Each revocation increments it, and a token is valid only while the epoch it was issued
under is the device's current one: tokens issued before a revocation stay invalid after
an unrevoke (protocol.md §5 Revocation). Devices revoked when this migration runs start
at 1, so the tokens they held before (issued under 0) do not come back either.
"""

import peewee as pw


def migrate(migrator, database, fake=False, **kwargs):
    migrator.add_fields("device", token_epoch=pw.IntegerField(default=0))
    migrator.sql('UPDATE "device" SET "token_epoch" = 1 WHERE "revoked_at" IS NOT NULL')


def rollback(migrator, database, fake=False, **kwargs):
    migrator.remove_fields("device", "token_epoch")
