"""001: the initial relaybox schema."""

import peewee as pw


def migrate(migrator, database, fake=False, **kwargs):
    @migrator.create_model
    class Meta(pw.Model):
        key = pw.CharField(primary_key=True, max_length=64)
        value = pw.TextField()

        class Meta:
            table_name = "meta"

    @migrator.create_model
    class User(pw.Model):
        id = pw.CharField(primary_key=True, max_length=36)
        name = pw.CharField(unique=True, max_length=64)
        created_at = pw.BigIntegerField()

        class Meta:
            table_name = "user"

    @migrator.create_model
    class Device(pw.Model):
        id = pw.CharField(primary_key=True, max_length=36)
        user = pw.ForeignKeyField(User, backref="devices", on_delete="CASCADE",
                                  column_name="user_id")
        name = pw.CharField(max_length=64)
        public_key = pw.BlobField(unique=True)
        created_at = pw.BigIntegerField()
        last_seen_at = pw.BigIntegerField(null=True)
        revoked_at = pw.BigIntegerField(null=True)
        revoked_reason = pw.TextField(null=True)

        class Meta:
            table_name = "device"

    @migrator.create_model
    class Event(pw.Model):
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
            table_name = "event"
            indexes = (
                (("user_id", "stream", "seq"), True),
                (("client_id", "device_id"), True),
                (("user_id", "stream", "key", "seq"), False),
                (("ts",), False),
            )

    @migrator.create_model
    class StreamHead(pw.Model):
        user_id = pw.CharField(max_length=36)
        stream = pw.CharField(max_length=64)
        head_seq = pw.BigIntegerField(default=0)
        floor_seq = pw.BigIntegerField(default=0)

        class Meta:
            table_name = "stream_head"
            legacy_table_names = False
            primary_key = pw.CompositeKey("user_id", "stream")

    @migrator.create_model
    class Cursor(pw.Model):
        device_id = pw.CharField(max_length=36)
        stream = pw.CharField(max_length=64)
        acked_seq = pw.BigIntegerField(default=0)

        class Meta:
            table_name = "cursor"
            primary_key = pw.CompositeKey("device_id", "stream")

    @migrator.create_model
    class PairingCode(pw.Model):
        code_hash = pw.CharField(primary_key=True, max_length=64)
        user = pw.ForeignKeyField(User, on_delete="CASCADE", column_name="user_id")
        inviter_device_id = pw.CharField(max_length=36, null=True)
        payload = pw.TextField(null=True)
        created_at = pw.BigIntegerField()
        expires_at = pw.BigIntegerField(index=True)
        used_at = pw.BigIntegerField(null=True)

        class Meta:
            table_name = "pairing_code"
            legacy_table_names = False

    @migrator.create_model
    class RefreshToken(pw.Model):
        token_hash = pw.CharField(primary_key=True, max_length=64)
        family_id = pw.CharField(max_length=36, index=True)
        device = pw.ForeignKeyField(Device, on_delete="CASCADE", column_name="device_id")
        created_at = pw.BigIntegerField()
        expires_at = pw.BigIntegerField(index=True)
        used_at = pw.BigIntegerField(null=True)
        revoked_at = pw.BigIntegerField(null=True)

        class Meta:
            table_name = "refresh_token"
            legacy_table_names = False


def rollback(migrator, database, fake=False, **kwargs):
    for name in ("refresh_token", "pairing_code", "cursor", "stream_head", "event",
                 "device", "user", "meta"):
        migrator.remove_model(name)
