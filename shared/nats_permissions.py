"""Who may publish and subscribe what on NATS: one user per role, least privilege.

Pure: roles in, allow-lists and nats-server `authorization` blocks out. Every subject comes
from edgeinfer.shared/subjects.py, so the lists follow the code. Everything not listed is refused by
the server ("Permissions Violation"); `tests/integration/test_nats_permissions.py` checks,
against a real nats-server, that each role can do its own work and nothing it should not:
a runner publishes only its heartbeats and its PoP's usage, a router never publishes usage,
no role but the api publishes `<ns>.accounts.>`.

Each user gets its own reply inbox, `_INBOX_<user>` (shared/bus.connect sets it from the
user in the URL): with the default `_INBOX.>` open to all, any user could read every
other's replies — keys' tenants, deployments, JetStream acks.

JetStream is reached through its API subjects; a role gets only those of its own streams
and buckets (info, get, its consumers), never create/delete of others' streams. `admin`
(the launcher and operators: it creates streams and buckets) may do anything.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from edgeinfer.shared.private_files import write_private
from edgeinfer.shared.subjects import Subjects, token

JS = "$JS.API"
HUB_ROLES = ("api", "registry", "metering", "billing", "autoscaler", "router")
POP_ROLES = ("router", "runner")


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    # Answer requests received (the reply subjects of those requests only).
    responses: bool = False


@dataclass(frozen=True)
class User:
    name: str
    password: str
    permissions: Permissions | None = None  # None: everything (admin)


def user_name(role: str, pop: str | None = None) -> str:
    """`router` at the hub, `router-eu-west` at a PoP; `runner-<pop>` always."""
    return f"{role}-{token(pop)}" if pop else role


def one_server_users(pops: list[str]) -> list[tuple[str, str | None]]:
    """The (role, PoP) of every user of one NATS server that all roles share (`edgeinfer
    up`): the hub's roles, and a runner user per PoP (its usage subject names the PoP)."""
    return [(role, None) for role in HUB_ROLES] + [("runner", pop) for pop in pops]


def load_credentials(path: Path, names: list[str]) -> dict[str, str]:
    """The passwords kept at `path` (mode 0600), with any user still missing drawn now and
    saved: a later start keeps the ones that services and runners already hold."""
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    wanted = {name: known.get(name) or secrets.token_urlsafe(24) for name in names}
    if wanted != known:
        write_private(path, json.dumps(wanted, indent=2) + "\n")
    return wanted


def with_user(url: str, user: str, password: str) -> str:
    """`url` (one server or several, comma-separated) logging in as `user`."""
    def one(server: str) -> str:
        parts = urlsplit(server.strip())
        host = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:"
                                                f"{quote(password, safe='')}@{host}"))
    return ",".join(one(s) for s in url.split(",") if s.strip())


def without_password(url: str) -> str:
    """`url` fit for a log line or a banner: the user stays, the password does not."""
    def one(server: str) -> str:
        parts = urlsplit(server.strip())
        if parts.password is None:
            return server.strip()
        host = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
    return ",".join(one(s) for s in url.split(",") if s.strip())


def inbox_prefix(user: str) -> str:
    """The reply inbox of a user; the default one for a name that is not a subject token
    (such a user is none of ours)."""
    try:
        return f"_INBOX_{token(user)}"
    except ValueError:
        return "_INBOX"


def _kv_read(bucket: str) -> list[str]:
    stream = f"KV_{bucket}"
    return [f"{JS}.STREAM.INFO.{stream}", f"{JS}.DIRECT.GET.{stream}", f"{JS}.DIRECT.GET.{stream}.>",
            f"{JS}.STREAM.MSG.GET.{stream}"]


def _kv_write(bucket: str, create: bool = False) -> list[str]:
    return [*_kv_read(bucket), f"$KV.{bucket}.>",
            *([f"{JS}.STREAM.CREATE.KV_{bucket}"] if create else [])]


def _kv_watch(bucket: str) -> list[str]:
    """Reading a whole bucket (`keys()`, `watch()`): an ordered consumer of its own."""
    stream = f"KV_{bucket}"
    return [f"{JS}.CONSUMER.CREATE.{stream}", f"{JS}.CONSUMER.CREATE.{stream}.>",
            f"{JS}.CONSUMER.INFO.{stream}.>", f"{JS}.CONSUMER.DELETE.{stream}.>"]


def _object_read(bucket: str, domain: str | None = None) -> list[str]:
    """`domain`: the JetStream domain that holds the bucket, when it is not the server's own
    (a PoP's runner reads artifacts from the hub's: `$JS.hub.API.…`)."""
    stream, api = f"OBJ_{bucket}", f"$JS.{domain}.API" if domain else JS
    # Chunks come through an ordered consumer of the reader's own making (nats-py finds
    # its stream by subject first: STREAM.NAMES, which lists names only).
    return [f"{api}.STREAM.NAMES", f"{api}.STREAM.INFO.{stream}", f"{api}.DIRECT.GET.{stream}",
            f"{api}.DIRECT.GET.{stream}.>",
            f"{api}.STREAM.MSG.GET.{stream}", f"{api}.CONSUMER.CREATE.{stream}",
            f"{api}.CONSUMER.CREATE.{stream}.>", f"{api}.CONSUMER.DELETE.{stream}.>",
            f"$JS.FC.{stream}.>"]


def _object_write(bucket: str) -> list[str]:
    stream = f"OBJ_{bucket}"
    return [*_object_read(bucket), f"$O.{bucket}.>", f"{JS}.STREAM.PURGE.{stream}",
            f"{JS}.STREAM.MSG.DELETE.{stream}", f"{JS}.STREAM.CREATE.{stream}"]


def _stream_read(stream: str) -> list[str]:
    return [f"{JS}.STREAM.INFO.{stream}", f"{JS}.STREAM.MSG.GET.{stream}",
            f"{JS}.DIRECT.GET.{stream}", f"{JS}.DIRECT.GET.{stream}.>"]


def _durable(stream: str, durable: str) -> list[str]:
    return [f"{JS}.CONSUMER.INFO.{stream}.{durable}", f"{JS}.CONSUMER.CREATE.{stream}.{durable}",
            f"{JS}.CONSUMER.CREATE.{stream}.{durable}.>",
            f"{JS}.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
            f"{JS}.CONSUMER.MSG.NEXT.{stream}.{durable}", f"$JS.ACK.{stream}.{durable}.>"]


def permissions(role: str, s: Subjects, pop: str | None = None,
                artifact_domain: str | None = None, source_pops: tuple[str, ...] = ()) -> Permissions:
    """The allow-lists of one role (`pop`: where a runner or a PoP's router runs;
    `artifact_domain`: the JetStream domain a runner reads artifacts from, if not its own;
    `source_pops`: the PoPs whose usage streams the hub's metering sources)."""
    ns, inbox = s.namespace, inbox_prefix(user_name(role, pop)) + ".>"
    if role == "runner":
        if pop is None:
            raise ValueError("a runner's permissions name its PoP")
        return Permissions(
            publish=(s.pop_heartbeats(pop), s.usage(pop), *_kv_read(s.hop_keys_bucket),
                     *_object_read(s.artifact_bucket, artifact_domain)),
            subscribe=(inbox,))
    if role == "router":
        return Permissions(
            publish=(s.demand_wildcard, s.delivered(pop or "local"), s.resolve_key,
                     s.resolve_deployment, *_kv_write(s.hop_keys_bucket, create=True),
                     *_kv_write(s.idempotency_bucket, create=True)),
            subscribe=(s.heartbeat_wildcard, s.key_revoked, s.tenant_changed, s.budget_wildcard,
                       inbox))
    if role == "leaf":
        # A PoP's leaf connection, as the hub enforces it: what the PoP may send hub-wards
        # (publish) and receive from the hub (subscribe). A PoP whose host is taken can
        # then do no more at the hub than its router and runners could.
        if pop is None:
            raise ValueError("a leaf connection's permissions name its PoP")
        # The hub's USAGE stream sources the PoP's: the hub asks the PoP's JetStream API for
        # a consumer (its answer comes on `$JSC.R.…`), which delivers on `$JS.S.…` with
        # flow control on `$JS.FC.…` (nats-server's stream sourcing).
        return Permissions(
            publish=(s.demand_wildcard, s.pop_heartbeats(pop), s.resolve_key,
                     s.resolve_deployment, *_object_read(s.artifact_bucket, artifact_domain),
                     "$JS.S.>", "$JSC.R.>",
                     # The answers of its JetStream API to the hub's metering (which makes
                     # its usage stream): responses alone do not pass a leaf connection.
                     inbox_prefix("metering") + ".>"),
            subscribe=(s.heartbeat_wildcard, s.key_revoked, s.tenant_changed, s.budget_wildcard,
                       f"$JS.{token(pop)}.API.>", "$JS.FC.>",
                       inbox_prefix(user_name("router", pop)) + ".>",
                       inbox_prefix(user_name("runner", pop)) + ".>"),
            responses=True)
    if role == "api":
        # The HTTP front: every route of the control plane, and the accounts' own events.
        return Permissions(
            publish=(f"{ns}.accounts.>", s.deployment_updated, s.list_deployments,
                     s.reconciliation, s.budget_wildcard, s.budget_saved,
                     *_object_write(s.artifact_bucket), *_stream_read(s.usage_dead_letter_stream),
                     *_stream_read(s.decision_stream)),
            subscribe=(s.resolve_key, inbox), responses=True)
    if role == "registry":
        return Permissions(
            publish=(s.deployment_updated, *_object_write(s.artifact_bucket)),
            subscribe=(s.resolve_deployment, s.list_deployments, inbox), responses=True)
    if role == "metering":
        usage = s.usage_stream
        return Permissions(
            publish=(s.usage_dead_letter, *_durable(usage, s.metering_consumer),
                     *_durable(usage, s.deliveries_consumer),
                     *_stream_read(s.usage_dead_letter_stream),
                     # The hub's sources of each PoP's usage stream (sources.py).
                     f"{JS}.STREAM.INFO.{usage}", f"{JS}.STREAM.UPDATE.{usage}",
                     # A wildcard matches whole tokens only: each PoP's stream is named.
                     *(f"$JS.{token(p)}.API.STREAM.{call}.{s.pop_usage_stream(p)}"
                       for p in source_pops for call in ("INFO", "CREATE", "UPDATE"))),
            subscribe=(s.heartbeat_wildcard, s.reconciliation, inbox), responses=True)
    if role == "billing":
        return Permissions(
            publish=(f"{ns}.billing.budget.*", f"{ns}.billing.alert.*", s.list_deployments),
            subscribe=(s.budget_saved, inbox))
    if role == "autoscaler":
        return Permissions(
            publish=(s.decision_wildcard, s.list_deployments, *_kv_write(s.keepalive_bucket, True),
                     *_kv_watch(s.keepalive_bucket),
                     *_stream_read(s.decision_stream)),
            subscribe=(s.demand_wildcard, s.heartbeat_wildcard, s.deployment_updated, inbox))
    raise ValueError(f"unknown role {role!r}")


def _list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def authorization_block(users: list[User]) -> str:
    """nats-server's `authorization { users: [...] }` for these users."""
    lines = []
    for u in users:
        if u.permissions is None:
            lines.append(f'    {{ user: "{u.name}", password: "{u.password}" }}')
            continue
        p = u.permissions
        responses = " allow_responses: true," if p.responses else ""
        lines.append(f'    {{ user: "{u.name}", password: "{u.password}", permissions: {{'
                     f"{responses} publish: {{ allow: {_list(p.publish)} }},"
                     f" subscribe: {{ allow: {_list(p.subscribe)} }} }} }}")
    return "authorization {\n  users: [\n" + ",\n".join(lines) + "\n  ]\n}\n"
