"""Which peer a migration belongs to, on both of its agents (docs/security.md).

Destination side: when a peer opens ``/v1/incoming``, this agent answers with a
secret for that migration, an HMAC of the migration's id and the peer's name
under a key only this agent holds (``STATE/bindings.key``, made on first use,
mode 0600). Every later ``/v1/incoming/{id}/...`` call of a peer must carry it
(:data:`SECRET_HEADER`): another peer, which cannot compute it, is refused, and
so is the opener for a migration of another id. Being derived, the secret needs
no record here and survives a restart of the agent.

Source side: the agent keeps, per migration it starts, which peer is its
destination and the secret that peer gave (``STATE/bound/ID.json``, mode 0600,
kept like the journal): a restarted agent finishes the migration with it, and
only that peer may ask for the migration's decision.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from haul.agent.journal import MIGRATION_ID_RE
from haul.errors import ConfigError

#: the request header that carries a migration's secret
SECRET_HEADER = "X-Haul-Migration-Secret"
KEY_FILE = "bindings.key"
BOUND_DIR = "bound"


def _read_or_make_key(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
    else:
        key = secrets.token_bytes(32)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
    if len(key) < 32:
        raise OSError(f"shorter than a key; remove it to make a new one ({len(key)} bytes)")
    return key


class Bindings:
    """Both sides' records under one agent's state directory. No I/O until used."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._key: bytes | None = None

    # -- destination side

    def _hmac_key(self) -> bytes:
        if self._key is None:
            path = self.state_dir / KEY_FILE
            try:
                self._key = _read_or_make_key(path)
            except OSError as exc:
                raise ConfigError(f"{path}: {exc.strerror or exc}") from exc
        return self._key

    def secret(self, migration_id: str, peer: str) -> str:
        """The secret of migration ``migration_id`` opened here by ``peer``."""
        message = f"incoming\0{migration_id}\0{peer}".encode()
        return hmac.new(self._hmac_key(), message, hashlib.sha256).hexdigest()

    def check(self, migration_id: str, peer: str, given: str | None) -> bool:
        """Whether ``given`` is the secret of ``migration_id`` opened by ``peer``."""
        if not given:
            return False
        expected = self.secret(migration_id, peer)
        return hmac.compare_digest(expected.encode(), given.strip().encode(errors="replace"))

    # -- source side

    def _bound_path(self, migration_id: str) -> Path:
        if not MIGRATION_ID_RE.fullmatch(migration_id):
            raise ValueError(f"bad migration id {migration_id!r}")
        return self.state_dir / BOUND_DIR / f"{migration_id}.json"

    def _write(self, migration_id: str, data: dict[str, str]) -> None:
        path = self._bound_path(migration_id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _read(self, migration_id: str) -> dict[str, str]:
        try:
            data = json.loads(self._bound_path(migration_id).read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def record_destination(self, migration_id: str, dest: str) -> None:
        """Migration ``migration_id`` goes from here to peer ``dest`` (before it starts)."""
        self._write(migration_id, {"dest": dest})

    def record_secret(self, migration_id: str, secret: str) -> None:
        """The secret the destination gave for ``migration_id`` (once it opened it)."""
        data = self._read(migration_id)
        self._write(migration_id, {**data, "secret": secret})

    def destination_of(self, migration_id: str) -> str | None:
        """The peer migration ``migration_id`` went to from here, if it went from here."""
        return self._read(migration_id).get("dest")

    def secret_of(self, migration_id: str) -> str | None:
        """The destination's secret for ``migration_id``, if it gave one."""
        return self._read(migration_id).get("secret")
