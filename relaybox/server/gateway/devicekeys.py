"""The public keys of devices that completed a handshake on this process.

A device's id, user and public key never change once it is paired, so a reconnecting
device's key need not be read from the database again: on a hit, the handshake checks
the signature right on the event loop (one Ed25519 verification, ~75 µs) instead of
handing a lookup and the check to a reader thread and back, which costs more CPU than
the check itself (docs/performance.md, Handshakes).

Whether the device is *revoked* is never taken from here. A revocation, or the removal
of the device's user, is announced to every process and forgets the entry; each process
also re-reads its live sessions' devices every ``gateway.revocation_check_s`` and
forgets the ones revoked since (hub.py, protocol.md §5); and the writer re-reads the
device row in the transaction that starts the session (the handshake's ``touch``), so a
notice that never arrived still ends in 4403.
"""

from __future__ import annotations

from relaybox.store.queries import DeviceKey

#: Entries kept; the oldest is dropped first. ~0.3 KiB each.
DEFAULT_LIMIT = 10_000


class DeviceKeys:
    """A bounded map device id → ``DeviceKey`` of verified, unrevoked devices."""

    __slots__ = ("_keys", "limit")

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._keys: dict[str, DeviceKey] = {}

    def get(self, device_id: str) -> DeviceKey | None:
        return self._keys.get(device_id)

    def remember(self, key: DeviceKey) -> None:
        """Keep ``key`` of a device whose signature just verified. Revoked devices are
        not kept: their handshakes always read the database."""
        if key.revoked_at is not None or self.limit <= 0:
            return
        keys = self._keys
        if key.id not in keys and len(keys) >= self.limit:
            del keys[next(iter(keys))]
        keys[key.id] = key

    def forget(self, device_id: str) -> None:
        self._keys.pop(device_id, None)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._keys
