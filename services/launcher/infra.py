"""What `edgeinfer up` gives its services before they start: NATS and PostgreSQL (the
given ones, or embedded ones it keeps up), the applied migrations and the streams.

An embedded nats-server has a user per role (shared/nats_permissions.py): each service
logs in as its own, with only the rights its work needs, and anything else on the machine
that connects without a password is refused. Passwords are drawn once into
`<state>/nats-credentials.json` (0600); the server's config, `<state>/nats-server.conf`
(0600), is written anew at each start. A NATS given by NATS_URL is the operator's: its
users come from `edgeinfer topology render` (docs/topology.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeinfer.services.launcher.supervisor import keep_up
from edgeinfer.shared.bus import connect, ensure_platform_streams
from edgeinfer.shared.config import PlatformConfig
from edgeinfer.shared.db import create_pool, migrate
from edgeinfer.shared.embedded import EmbeddedNats, EmbeddedPostgres, start_nats, start_postgres
from edgeinfer.shared.nats_permissions import (
    User,
    authorization_block,
    load_credentials,
    one_server_users,
    permissions,
    user_name,
    with_user,
)
from edgeinfer.shared.private_files import write_private
from edgeinfer.shared.subjects import Subjects

log = logging.getLogger("edgeinfer")


@dataclass
class Infrastructure:
    platform: PlatformConfig
    source_pops: list[str] = field(default_factory=list)  # the hub sources their usage
    pops: list[str] = field(default_factory=list)  # a runner user each, on an embedded NATS
    nats_url: str = ""  # the admin's, on an embedded NATS
    # On an embedded NATS: where its users' passwords are, and each service's own URL.
    nats_credentials: Path | None = None
    role_urls: dict[str, str] = field(default_factory=dict)
    database_url: str = ""
    embedded_nats: EmbeddedNats | None = None
    embedded_postgres: EmbeddedPostgres | None = None
    nc: Any = None
    pool: Any = None
    _watchers: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        p = self.platform
        if p.nats_url:
            self.nats_url = p.nats_url
        else:
            log.info("NATS_URL not set: starting embedded nats-server (JetStream) in %s", p.state_dir)
            # In this, the main thread, not a worker thread: the kernel's parent-death signal
            # that stops the server if we are SIGKILLed belongs to the thread that starts it.
            passwords = self._nats_passwords()
            self.embedded_nats = start_nats(p.state_dir, config=self._write_nats_config(passwords))
            self._log_in(self.embedded_nats.url, passwords)
            self._watchers.append(asyncio.create_task(
                keep_up("nats-server", self._nats_alive, self._restart_nats), name="keep-nats"))
        if p.database_url:
            self.database_url = p.database_url
        else:
            log.info("DATABASE_URL not set: starting embedded PostgreSQL in %s", p.state_dir)
            self.embedded_postgres = await asyncio.to_thread(start_postgres, p.state_dir)
            self.database_url = self.embedded_postgres.url
            pg = self.embedded_postgres
            self._watchers.append(asyncio.create_task(
                keep_up("PostgreSQL", pg.alive, lambda: asyncio.to_thread(pg.restart)),
                name="keep-postgres"))
        applied = await migrate(self.database_url)
        log.info("migrations: %d applied now", len(applied))
        self.pool = await create_pool(self.database_url, max_size=4)
        self.nc = await connect(self.nats_url, name="edgeinfer-up")
        await ensure_platform_streams(self.nc, Subjects(p.namespace), self.source_pops,
                                      p.stream_replicas)

    def _nats_passwords(self) -> dict[str, str]:
        """Each user's password, drawn once into `<state>/nats-credentials.json`."""
        self.nats_credentials = self.platform.state_dir / "nats-credentials.json"
        return load_credentials(self.nats_credentials, ["admin", *(
            user_name(role, pop) for role, pop in one_server_users(self.pops))])

    def _write_nats_config(self, passwords: dict[str, str]) -> Path:
        p = self.platform
        subjects = Subjects(p.namespace)
        users = [User("admin", passwords["admin"])] + [
            User(user_name(role, pop), passwords[user_name(role, pop)],
                 permissions(role, subjects, pop)) for role, pop in one_server_users(self.pops)]
        config = p.state_dir / "nats-server.conf"
        write_private(config, authorization_block(users))
        return config

    def _log_in(self, url: str, passwords: dict[str, str]) -> None:
        self.nats_url = with_user(url, "admin", passwords["admin"])
        self.role_urls = {role: with_user(url, role, passwords[role])
                          for role, pop in one_server_users([]) if pop is None}

    def _nats_alive(self) -> bool:
        return self.embedded_nats is not None and self.embedded_nats.process.poll() is None

    async def _restart_nats(self) -> None:
        """Same port and store: the services' clients reconnect by themselves. In a worker
        thread, not to stall the loop: the new server then has no parent-death signal, and a
        later start's stop_orphan cleans up after a SIGKILLed `edgeinfer up`."""
        port = int(self.nats_url.rsplit(":", 1)[1])
        config = self.platform.state_dir / "nats-server.conf"
        self.embedded_nats = await asyncio.to_thread(start_nats, self.platform.state_dir, port,
                                                     config)

    async def stop(self) -> None:
        for watcher in self._watchers:
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        if self.pool is not None:
            await self.pool.close()
        if self.embedded_nats is not None:
            await asyncio.to_thread(self.embedded_nats.stop)
        if self.embedded_postgres is not None:
            await asyncio.to_thread(self.embedded_postgres.stop)
