"""Peewee models: the relaybox schema (times are integer milliseconds since the epoch)."""

from __future__ import annotations

import peewee as pw

database_proxy = pw.DatabaseProxy()


class BaseModel(pw.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class Meta(BaseModel):
    """Server-wide values shared by every node: server_id, JWT keys, admin token hash."""

    key = pw.CharField(primary_key=True, max_length=64)
    value = pw.TextField()


class User(BaseModel):
    id = pw.CharField(primary_key=True, max_length=36)
    name = pw.CharField(unique=True, max_length=64)
    created_at = pw.BigIntegerField()
    # Bytes of the bodies of the user's stored events, sys. streams aside (the
    # stored_bytes quota); kept by the writer and by retention.
    stored_bytes = pw.BigIntegerField(default=0)


class Device(BaseModel):
    id = pw.CharField(primary_key=True, max_length=36)
    user = pw.ForeignKeyField(User, backref="devices", on_delete="CASCADE", column_name="user_id")
    name = pw.CharField(max_length=64)
    public_key = pw.BlobField(unique=True)
    created_at = pw.BigIntegerField()
    last_seen_at = pw.BigIntegerField(null=True)
    revoked_at = pw.BigIntegerField(null=True)
    revoked_reason = pw.TextField(null=True)
    # Bumped by each revocation; tokens carry the value they were issued under, so a
    # token from before a revocation stays invalid after an unrevoke (protocol.md §5).
    token_epoch = pw.IntegerField(default=0)


class Event(BaseModel):
    """One stored event; (user_id, stream, seq) is its place, (device_id, client_id) its id."""

    id = pw.BigAutoField()
    user_id = pw.CharField(max_length=36)
    stream = pw.CharField(max_length=64)
    seq = pw.BigIntegerField()
    device_id = pw.CharField(max_length=36, null=True)
    client_id = pw.CharField(max_length=36)
    key = pw.TextField(null=True)
    body = pw.TextField()
    ts = pw.BigIntegerField()

    class Meta:
        # Each index is a page more in every commit: only what a query reads
        # (migrations/002_fewer_event_indexes.py).
        indexes = (
            (("user_id", "stream", "seq"), True),
            (("client_id", "device_id"), True),
        )


# Compare-and-set by key reads the newest seq of a key; events without a key (most of
# them) stay out of this index.
Event.add_index(Event.index(Event.user_id, Event.stream, Event.key, Event.seq,
                            name="event_user_id_stream_key_seq")
                .where(Event.key.is_null(False)))


class StreamHead(BaseModel):
    """head_seq: last seq given out; floor_seq: last seq removed by retention (0 = none);
    key_count: distinct keys ever written (the keys quota; retention leaves it)."""

    user_id = pw.CharField(max_length=36)
    stream = pw.CharField(max_length=64)
    head_seq = pw.BigIntegerField(default=0)
    floor_seq = pw.BigIntegerField(default=0)
    key_count = pw.BigIntegerField(default=0)

    class Meta:
        primary_key = pw.CompositeKey("user_id", "stream")


class Cursor(BaseModel):
    """What a device has acknowledged of a stream (cumulative)."""

    device_id = pw.CharField(max_length=36)
    stream = pw.CharField(max_length=64)
    acked_seq = pw.BigIntegerField(default=0)

    class Meta:
        primary_key = pw.CompositeKey("device_id", "stream")


class PairingCode(BaseModel):
    code_hash = pw.CharField(primary_key=True, max_length=64)
    user = pw.ForeignKeyField(User, on_delete="CASCADE", column_name="user_id")
    inviter_device_id = pw.CharField(max_length=36, null=True)
    payload = pw.TextField(null=True)
    created_at = pw.BigIntegerField()
    expires_at = pw.BigIntegerField(index=True)
    used_at = pw.BigIntegerField(null=True)


class RefreshToken(BaseModel):
    token_hash = pw.CharField(primary_key=True, max_length=64)
    family_id = pw.CharField(max_length=36, index=True)
    device = pw.ForeignKeyField(Device, on_delete="CASCADE", column_name="device_id")
    created_at = pw.BigIntegerField()
    expires_at = pw.BigIntegerField(index=True)
    used_at = pw.BigIntegerField(null=True)
    revoked_at = pw.BigIntegerField(null=True)


MODELS: list[type[BaseModel]] = [
    Meta, User, Device, Event, StreamHead, Cursor, PairingCode, RefreshToken,
]
