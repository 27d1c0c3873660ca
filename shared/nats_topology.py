"""The distributed layout of NATS, from one description: a hub cluster of three servers with
JetStream (domain `hub`), and one leaf-node server per PoP with a JetStream domain of its
own (docs/topology.md). Pure: a description in, nats-server config files out — what each
host runs is generated here, never written by hand, and each file is checked with
`nats-server -t -c FILE` in the tests.

The description is TOML (`edgeinfer topology render FILE --out DIR` writes and checks them):

    namespace = "edgeinfer"

    [[hub]]                      # three entries: a JetStream cluster needs a quorum
    name = "hub-1"
    host = "10.10.0.1"           # where the others reach it
    client_port = 4222           # optional, these are the defaults
    cluster_port = 6222
    leaf_port = 7422

    auth = true                  # the default: a user per role on every server

    [[pops]]
    name = "eu-west"             # also its JetStream domain
    region = "eu-west"
    jurisdiction = "eu"
    host = "10.20.0.1"
    client_port = 4222

With `auth = true` (the default; `auth = false` leaves every server open to whoever reaches
it, for a network trusted as a whole), every server gets an `authorization` block, and no
password is valid on two hosts. At the hub: `admin` (streams and buckets; operators), the
control plane's roles and the hub's router, and `leaf-<pop>` for each PoP's leaf
connection, whose permissions filter what crosses that PoP's link both ways. At a PoP:
`admin-<pop>`, `router-<pop>` and `runner-<pop>`. Each role has the allow-lists of
shared/nats_permissions.py. Passwords are drawn once into `credentials.json` (mode 0600,
every user's: the operator's) and kept on every later render; `credentials-<host>.json`
holds one host's users only. A service's `NATS_URL` is
`nats://<user>:<password>@host:port`. Only the admin creates streams: `edgeinfer streams`
once, and EDGEINFER_CREATE_STREAMS=false for the services.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeinfer.shared.config import ConfigError
from edgeinfer.shared.nats_permissions import (
    HUB_ROLES,
    User,
    authorization_block,
    load_credentials,
    permissions,
    user_name,
    with_user,
)
from edgeinfer.shared.private_files import write_private
from edgeinfer.shared.subjects import Subjects, token
from edgeinfer.shared.topology import Pop

HUB_DOMAIN = "hub"
CLUSTER_NAME = "edgeinfer-hub"


@dataclass(frozen=True)
class HubServer:
    name: str
    host: str
    client_port: int = 4222
    cluster_port: int = 6222
    leaf_port: int = 7422

    @property
    def client_url(self) -> str:
        return f"nats://{self.host}:{self.client_port}"


@dataclass(frozen=True)
class PopHost:
    pop: Pop
    host: str
    client_port: int = 4222

    @property
    def domain(self) -> str:
        return self.pop.name

    @property
    def client_url(self) -> str:
        return f"nats://{self.host}:{self.client_port}"


@dataclass(frozen=True)
class Topology:
    namespace: str
    hub: tuple[HubServer, ...]
    pops: tuple[PopHost, ...]
    auth: bool = True

    @property
    def pop_names(self) -> list[str]:
        """The PoPs' names: the hub's usage stream sources each one's."""
        return [p.pop.name for p in self.pops]

    @property
    def hub_urls(self) -> list[str]:
        return [s.client_url for s in self.hub]

    def pop(self, name: str) -> PopHost:
        for p in self.pops:
            if p.pop.name == name:
                return p
        raise KeyError(name)


def _port(entry: dict[str, Any], key: str, default: int, where: str) -> int:
    value = entry.get(key, default)
    if not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(f"{where}: {key} = {value!r}, must be a port in [1; 65535]")
    return value


def _text(entry: dict[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: `{key}` is required (a non-empty string)")
    return value.strip()


def parse_topology(text: str, source: str = "topology") -> Topology:
    """The description, validated; every error names the entry and what is allowed."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    namespace = raw.get("namespace", "edgeinfer")
    hub = []
    for i, entry in enumerate(raw.get("hub", [])):
        where = f"{source}: hub[{i}]"
        hub.append(HubServer(name=_token(_text(entry, "name", where), where),
                             host=_text(entry, "host", where),
                             client_port=_port(entry, "client_port", 4222, where),
                             cluster_port=_port(entry, "cluster_port", 6222, where),
                             leaf_port=_port(entry, "leaf_port", 7422, where)))
    if len(hub) != 3:
        raise ConfigError(f"{source}: the hub needs exactly 3 servers (a JetStream cluster keeps"
                          f" a quorum through the loss of one), got {len(hub)}")
    pops = []
    for i, entry in enumerate(raw.get("pops", [])):
        where = f"{source}: pops[{i}]"
        name = _token(_text(entry, "name", where), where)
        if name == HUB_DOMAIN:
            raise ConfigError(f"{where}: a PoP cannot be named {HUB_DOMAIN!r} (the hub's domain)")
        pops.append(PopHost(Pop(name, _text(entry, "region", where),
                                _text(entry, "jurisdiction", where)),
                            host=_text(entry, "host", where),
                            client_port=_port(entry, "client_port", 4222, where)))
    if not pops:
        raise ConfigError(f"{source}: name at least one PoP ([[pops]])")
    for kind, names in (("hub server", [s.name for s in hub]), ("PoP", [p.pop.name for p in pops])):
        if len(set(names)) != len(names):
            raise ConfigError(f"{source}: two {kind}s have the same name: {sorted(names)}")
    auth = raw.get("auth", True)
    if not isinstance(auth, bool):
        raise ConfigError(f"{source}: auth = {auth!r}, must be true or false")
    return Topology(namespace, tuple(hub), tuple(pops), auth)


def load_topology(path: Path) -> Topology:
    return parse_topology(path.read_text(), str(path))


def _token(value: str, where: str) -> str:
    try:
        return token(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


# A cut link drops packets without closing anything: left to TCP, a leaf connection sits in
# retransmission backoff and resumes up to a minute after the link is back. Pinging every
# 2 s and giving up after 3 missed answers declares it dead within ~6 s of a cut, so the
# PoP redials every second and sourcing resumes right after the heal.
_LIVENESS = 'ping_interval: "2s"\nping_max: 3'


# The WAN link carries usage events (JSON, ~480 bytes each on the wire uncompressed): S2
# on the leaf connections (measured in tests/integration/test_pop_cut.py).
_LEAF_COMPRESSION = "s2_fast"


POP_USERS = ("admin", "router", "runner")  # each PoP's server; its `leaf` logs in at the hub


def user_names(topology: Topology) -> list[str]:
    """Every user of the layout: the hub's `admin` and roles; at each PoP its own admin,
    router and runner, and its leaf connection's user at the hub (`leaf-<pop>`). No
    password is valid on two hosts: a PoP whose host is taken gives nothing at the hub
    beyond what its leaf connection may pass."""
    return [*hub_user_names(), *(user_name(role, p.pop.name) for p in topology.pops
                                 for role in (*POP_USERS, "leaf"))]


def hub_user_names() -> list[str]:
    return ["admin", *HUB_ROLES]


def _role(user: str) -> str:
    """`router-eu-west` → `router`: a role's key in its host's NATS URLs."""
    return user.split("-", 1)[0]


def topology_credentials(topology: Topology, path: Path) -> dict[str, str]:
    """The passwords of the layout's users, kept at `path`."""
    return load_credentials(path, user_names(topology))


def _users(topology: Topology, credentials: dict[str, str],
           roles: list[tuple[str, str | None]]) -> str:
    """The authorization block of these (role, PoP) users; `admin` has every right."""
    s = Subjects(topology.namespace)
    # A PoP's runners read artifacts from the hub's domain (EDGEINFER_ARTIFACT_DOMAIN=hub).
    pops = tuple(topology.pop_names)
    return authorization_block([
        User(user_name(role, pop), credentials[user_name(role, pop)],
             None if role == "admin" else
             permissions(role, s, pop, artifact_domain=HUB_DOMAIN if pop else None,
                         source_pops=pops))
        for role, pop in roles])


def hub_server_config(topology: Topology, server: HubServer, store_dir: Path,
                      listen_host: str | None = None,
                      credentials: dict[str, str] | None = None) -> str:
    """One hub server: clustered JetStream (domain `hub`), routes to the other two, and a
    leaf-node listener the PoPs connect to. `listen_host`: bind address (default: its host).
    `credentials`: the users (an `auth = true` layout)."""
    bind = listen_host or server.host
    users = ""
    if credentials is not None:
        # Leaf connections log in as users of this block (`leaf-<pop>`), so their
        # permissions filter what crosses each PoP's link, both ways.
        users = _users(topology, credentials, [("admin", None)]
                       + [(role, None) for role in HUB_ROLES]
                       + [("leaf", p.pop.name) for p in topology.pops])
    routes = ", ".join(f'"nats-route://{o.host}:{o.cluster_port}"'
                       for o in topology.hub if o.name != server.name)
    return f"""# {server.name}: generated by edgeinfer from the topology description; do not edit.
server_name: "{server.name}"
listen: "{bind}:{server.client_port}"
{_LIVENESS}
jetstream {{
  store_dir: "{store_dir}"
  domain: "{HUB_DOMAIN}"
}}
cluster {{
  name: "{CLUSTER_NAME}"
  listen: "{bind}:{server.cluster_port}"
  routes: [{routes}]
}}
leafnodes {{
  listen: "{bind}:{server.leaf_port}"
  compression: "{_LEAF_COMPRESSION}"
}}
{users}"""


def pop_server_config(topology: Topology, pop: PopHost, store_dir: Path,
                      listen_host: str | None = None,
                      credentials: dict[str, str] | None = None) -> str:
    """One PoP's leaf node: its own JetStream domain (usage is stored here first, so a cut
    link delays billing and never loses it), connected to every hub server."""
    bind = listen_host or pop.host
    login = users = ""
    if credentials is not None:
        leaf = user_name("leaf", pop.pop.name)
        login = f"{leaf}:{credentials[leaf]}@"
        users = _users(topology, credentials, [(role, pop.pop.name) for role in POP_USERS])
    remotes = ", ".join(f'"nats-leaf://{login}{s.host}:{s.leaf_port}"' for s in topology.hub)
    return f"""# {pop.pop.name}: generated by edgeinfer from the topology description; do not edit.
server_name: "pop-{pop.pop.name}"
listen: "{bind}:{pop.client_port}"
{_LIVENESS}
jetstream {{
  store_dir: "{store_dir}"
  domain: "{pop.domain}"
}}
leafnodes {{
  # Retry fast after a cut: the PoP's usage streams resume sourcing into the hub once the
  # link is back.
  reconnect: "1s"
  remotes: [{{ urls: [{remotes}], compression: "{_LEAF_COMPRESSION}" }}]
}}
{users}"""


def render(topology: Topology, out_dir: Path, store_root: Path,
           listen_host: str | None = None) -> dict[str, Path]:
    """Every server's config file under `out_dir` (one per host); name → path. With
    `auth = true`, also `credentials.json` (every password: the operator's) and one file
    per host with only its users' passwords (`credentials-hub`, `credentials-pop-<pop>`),
    all mode 0600, as the configs that hold passwords are. `listen_host`: what every
    server binds (`0.0.0.0` in a container); by default its own host."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    credentials = None
    if topology.auth:
        written["credentials"] = out_dir / "credentials.json"
        credentials = topology_credentials(topology, written["credentials"])
        hosts = {"hub": hub_user_names()} | {
            f"pop-{p.pop.name}": [user_name(role, p.pop.name) for role in POP_USERS]
            for p in topology.pops}
        servers = {"hub": ",".join(topology.hub_urls)} | {
            f"pop-{p.pop.name}": p.client_url for p in topology.pops}
        for host, names in hosts.items():
            written[f"credentials-{host}"] = out_dir / f"credentials-{host}.json"
            write_private(written[f"credentials-{host}"],
                          json.dumps({n: credentials[n] for n in names}, indent=2) + "\n")
            # Each role's NATS_URL on that host, e.g. for a Secret (docs/deploy.md):
            # `kubectl create secret generic edgeinfer-nats-urls --from-env-file=…`.
            written[f"nats-urls-{host}"] = out_dir / f"nats-urls-{host}.env"
            write_private(written[f"nats-urls-{host}"], "".join(
                f"{_role(name)}={with_user(servers[host], name, credentials[name])}\n"
                for name in names))
    for server in topology.hub:
        written[server.name] = out_dir / f"{server.name}.conf"
        write_private(written[server.name], hub_server_config(
            topology, server, store_root / server.name, listen_host, credentials))
    for pop in topology.pops:
        name = f"pop-{pop.pop.name}"
        written[name] = out_dir / f"{name}.conf"
        write_private(written[name], pop_server_config(topology, pop, store_root / name,
                                                       listen_host, credentials))
    return written
