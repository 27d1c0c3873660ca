"""The NATS bus: connection, the JetStream streams every service relies on, request/reply."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar
from urllib.parse import urlsplit

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BucketNotFoundError, NotFoundError

from edgeinfer.shared.hops import hop_keys
from edgeinfer.shared.http import Refusal
from edgeinfer.shared.nats_permissions import inbox_prefix
from edgeinfer.shared.subjects import Subjects

log = logging.getLogger(__name__)

# The duplicate window must cover a runner's retry horizon: a runner that was cut off from
# NATS re-publishes its outbox with the same ids, and JetStream drops what it has already
# seen inside this window. The ledger's unique key is the final guard beyond it.
USAGE_DUPLICATE_WINDOW_S = 60 * 60

T = TypeVar("T")


async def connect(url: str, name: str,
                  error_cb: Callable[[Exception], Awaitable[None]] | None = None) -> NATS:
    """`url` may list several servers, comma-separated (the hub cluster's three): the
    client fails over among them, and learns the others from the cluster too."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    # A user in the URL (nats://router:…@host) has a reply inbox of its own: the server
    # lets it read only `_INBOX_<user>.>` (shared/nats_permissions.py).
    user = next(filter(None, (urlsplit(u).username for u in servers)), None)
    # Reconnect forever: a NATS restart must not kill a service (the runner's outbox and
    # the metering consumer both resume where they were).
    return await nats.connect(
        servers,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        inbox_prefix=inbox_prefix(user) if user else "_INBOX",
        **({"error_cb": error_cb} if error_cb else {}),
    )


async def ensure_streams(js: JetStreamContext, subjects: Subjects, replicas: int = 1) -> None:
    """Create (or update) the streams and buckets where every service publishes to one
    NATS (`edgeinfer up`; or one cluster, `replicas` 3 to outlive the loss of a server);
    idempotent, so every service may call it at start."""
    for config in _platform_streams(subjects, replicas):
        await _ensure_stream(js, config)
    await _ensure_buckets(js, subjects, replicas)


async def ensure_hub_streams(js: JetStreamContext, subjects: Subjects, pops: Iterable[str],
                             replicas: int = 3) -> None:
    """The hub's streams in the distributed layout (docs/topology.md), replicated on the
    hub cluster: `USAGE` takes no subject of its own and sources each PoP's usage stream
    from the PoP's JetStream domain, so usage reaches billing once the link allows and a
    cut only delays it. The ledger's unique event id stays the final guard."""
    sources = [js_api.StreamSource(name=subjects.pop_usage_stream(pop),
                                   external=js_api.ExternalStream(api=f"$JS.{pop}.API"))
               for pop in sorted(pops)]
    for config in _platform_streams(subjects, replicas, usage_sources=sources):
        await _ensure_stream(js, config)
    await _ensure_buckets(js, subjects, replicas)


async def _ensure_buckets(js: JetStreamContext, subjects: Subjects, replicas: int) -> None:
    """The artifact store (registry), the keep-alive history (autoscaler) and the routers'
    hop keys, made here so that their replication is decided in one place; an existing
    bucket is left as it is. (A PoP's router makes its PoP's hop-key bucket itself.)"""
    try:
        await js.object_store(subjects.artifact_bucket)
    except BucketNotFoundError:
        await js.create_object_store(subjects.artifact_bucket, config=js_api.ObjectStoreConfig(
            storage=js_api.StorageType.FILE, replicas=replicas))
    try:
        await js.key_value(subjects.keepalive_bucket)
    except BucketNotFoundError:
        await js.create_key_value(js_api.KeyValueConfig(
            bucket=subjects.keepalive_bucket, history=1, replicas=replicas))
    await hop_keys(js, subjects.hop_keys_bucket, replicas)


async def ensure_platform_streams(nc: NATS, subjects: Subjects, source_pops: Iterable[str],
                                  replicas: int) -> None:
    """The platform's streams and buckets: the hub's, sourcing these PoPs' usage, or those
    of one NATS (no PoPs to source). Where each service has a NATS user of its own, only
    the admin may create streams: a refusal then says so."""
    pops = list(source_pops)
    try:
        if pops:
            await ensure_hub_streams(nc.jetstream(), subjects, pops, replicas)
        else:
            await ensure_streams(nc.jetstream(), subjects, replicas)
    except nats.errors.TimeoutError:
        user = next(filter(None, (u.username for u in nc.servers)), None)
        if user in (None, "admin"):
            raise
        raise StreamsRefused(
            f"NATS user {user!r} may not create streams: run `edgeinfer streams` once as the "
            "NATS admin and set EDGEINFER_CREATE_STREAMS=false for the services") from None


class StreamsRefused(RuntimeError):
    """A service's NATS user may not create the platform's streams (docs/topology.md)."""


async def ensure_pop_streams(js: JetStreamContext, subjects: Subjects, pop: str) -> None:
    """A PoP's own usage stream, in its own JetStream domain: runners' usage (and routers'
    delivery confirmations) are stored at the PoP first, whatever the state of the link to
    the hub."""
    await _ensure_stream(js, js_api.StreamConfig(
        name=subjects.pop_usage_stream(pop), subjects=[subjects.usage(pop), subjects.delivered(pop)],
        storage=js_api.StorageType.FILE, retention=js_api.RetentionPolicy.LIMITS,
        duplicate_window=USAGE_DUPLICATE_WINDOW_S, max_age=7 * 24 * 3600))


def _platform_streams(subjects: Subjects, replicas: int,
                      usage_sources: list[js_api.StreamSource] | None = None
                      ) -> list[js_api.StreamConfig]:
    return [
        js_api.StreamConfig(
            name=subjects.usage_stream,
            # Sourced (the distributed layout) or captured here (one server).
            subjects=None if usage_sources is not None else [subjects.usage_wildcard,
                                                               subjects.delivered_wildcard],
            sources=usage_sources,
            storage=js_api.StorageType.FILE,
            retention=js_api.RetentionPolicy.LIMITS,
            duplicate_window=USAGE_DUPLICATE_WINDOW_S,
            max_age=7 * 24 * 3600,
            num_replicas=replicas,
        ),
        js_api.StreamConfig(
            name=subjects.usage_dead_letter_stream,
            subjects=[subjects.usage_dead_letter],
            storage=js_api.StorageType.FILE,
            retention=js_api.RetentionPolicy.LIMITS,
            num_replicas=replicas,
        ),
        # The autoscaler's decisions with their reasons and inputs, kept a week for admins.
        js_api.StreamConfig(
            name=subjects.decision_stream,
            subjects=[subjects.decision_wildcard],
            storage=js_api.StorageType.FILE,
            retention=js_api.RetentionPolicy.LIMITS,
            max_age=7 * 24 * 3600,
            max_msgs_per_subject=1000,
            num_replicas=replicas,
        ),
    ]


async def _ensure_stream(js: JetStreamContext, config: js_api.StreamConfig) -> None:
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
        log.info("created stream %s", config.name)
    else:
        await js.update_stream(config)


class Unavailable(Refusal):
    """A part an answer depends on did not answer over NATS — NATS itself down, the service
    down, or this PoP cut off from the hub: 503 + Retry-After, never a 500, never a guess."""

    def __init__(self, what: str, retry_after_s: int = 2) -> None:
        super().__init__(503, "unavailable", f"{what} cannot be reached right now; retry shortly",
                         headers={"Retry-After": str(retry_after_s)})


async def request(nc: NATS, subject: str, message: msgspec.Struct, reply_type: type[T],
                  timeout: float = 2.0, what: str = "a platform service") -> T:
    """Request/reply; raises Unavailable when no answer comes (timeout, no responders, the
    connection closed or reconnecting)."""
    try:
        reply = await nc.request(subject, msgspec.json.encode(message), timeout=timeout)
    except (nats.errors.Error, OSError) as exc:
        raise Unavailable(what) from exc
    return msgspec.json.decode(reply.data, type=reply_type)


def decode_or_warn(decoder: msgspec.json.Decoder[T], msg: Msg) -> T | None:
    """Decode an event from core NATS, or log and drop it: a malformed heartbeat or cache
    invalidation must not kill the subscriber (usage never travels this way: it is on a
    stream, and bad usage goes to the dead-letter stream instead)."""
    try:
        return decoder.decode(msg.data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("ignoring an undecodable message on %s: %s", msg.subject, exc)
        return None
