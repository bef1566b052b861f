"""The desired state in etcd, laid out as Calico's etcdv3 datastore lays it out.

Keys (libcalico-go's `lib/backend/etcdv3` with the v3 model's resource keys):

    /calico/resources/v3/projectcalico.org/<plural>/[<namespace>/]<name>
                              Calico's kinds (globalnetworkpolicies, networkpolicies, tiers,
                              hostendpoints, ...): the v3 object as JSON, as calicoctl stores it,
                              so `etcdctl get --prefix` and Calico's own tools see them
    /flowtui/resources/<group or core>/<plural>/[<namespace>/]<name>
                              the kinds Calico's etcd mode does not hold as such: Pods, Namespaces,
                              Nodes, Kubernetes NetworkPolicies, ExternalHosts... Calico would hold
                              WorkloadEndpoints written by its CNI plugin; converting Pods to them
                              is for later, so they stay under flowtui's own prefix
    /flowtui/meta/<object key without its leading />
                              flowtui's bookkeeping per object: where it was applied from, its
                              position in that input; rewritten with every change but a toggle, so
                              its mod_revision is the object's generation
    /flowtui/layout           rewritten by every write but a toggle: its mod_revision is the layout
    /flowtui/state/...        what the machines sharing the store tell each other (rule ids, each
                              agent's applied state: `shared.py`); not part of the desired state,
                              outside the range it is listed and watched from

Logging in (etcd's `auth enable`): a `Login` is traded for a token per member, traded again when
etcd says the token expired; a refused login is `EtcdAuthFailed`, naming the endpoint.

Revisions are etcd's: an object's revision is its key's mod_revision, its creation revision the
key's create_revision, the datastore revision the store's. Every write is one etcd transaction
that compares revisions (compare-and-swap): an apply or delete compares `/flowtui/layout`, so
writers are serialised and one that lost the race re-reads, re-validates and tries again (no write
is ever lost or applied against state it did not validate); a toggle compares and writes the one
policy key, so an apply also compares every key it rewrites (else it would write back a policy as
it was before a toggle that committed in between, and the toggle would be lost). A transaction
etcd refuses changes nothing.

Objects written by other tools under Calico's prefix (no meta key) are read too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import ConnectionFailedError, ConnectionTimeoutError, Etcd3Exception, InternalServerError

from enforcer.datastore.backend import DatastoreURL, Login, TLSFiles
from enforcer.datastore.kinds import BY_MODEL_KIND, KIND_INFO, KindInfo, ObjectKey, resolve_kinds
from enforcer.datastore.records import Change, ChangeSet, Preview, StoredObject
from enforcer.datastore.sources import Document, annotation, documents, read_sources, skipped_in, with_annotation
from enforcer.datastore.store import Ambiguous, Catalog, DatastoreError, LocalRecords, NotFound, _merge, default_home
from enforcer.loader import LoadError, Problem, load_text
from enforcer.loader.metadata import DISABLED_ANNOTATION
from enforcer.model import ResourceSet

CALICO_PREFIX = "/calico/resources/v3/projectcalico.org/"
CALICO_API = "projectcalico.org/v3"
OWN_PREFIX = "/flowtui/"
OWN_RESOURCES = OWN_PREFIX + "resources/"
META = OWN_PREFIX + "meta/"
LAYOUT = OWN_PREFIX + "layout"
# flowtui's shared records (rule ids, each agent's applied state): under flowtui's prefix, but
# sorting after its resources, so neither the desired state's list nor the agents' watch (both
# end at the end of OWN_RESOURCES) carries them.
SHARED = OWN_PREFIX + "state/"
TIMEOUT = 3.0  # seconds per endpoint and request: an unreachable etcd is an error, never a hang
# gRPC metadata through etcd's gateway: serve a watch only while the member has a leader.
REQUIRE_LEADER = {"Grpc-Metadata-hasleader": "true"}
RETRIES = 50  # compare-and-swap attempts before giving up (each one lost to another writer)
_KIND_ORDER = {k.model_kind: i for i, k in enumerate(KIND_INFO)}


class EtcdUnavailable(DatastoreError):
    """No endpoint answered (or every one refused us): the message names each and why."""


class EtcdRefused(DatastoreError):
    """etcd answered and refused the request (too large, not permitted): nothing was written."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


def _refused(exc: Exception) -> bool:
    """An answer from a working member (HTTP 4xx from the gateway), not a member that is down,
    unreachable, or without a leader (those are worth the next endpoint)."""
    if not isinstance(exc, Etcd3Exception) or isinstance(exc, ConnectionTimeoutError | ConnectionFailedError
                                                         | InternalServerError):
        return False
    text = f"{exc.detail_text or ''} {exc.args}".lower()
    return not any(word in text for word in ("leader", "unavailable", "timed out", "timeout"))


class EtcdAuthFailed(EtcdRefused):
    """etcd refused the login (wrong user or password, or a login it needs and was not given)."""


def _auth_answer(exc: Exception) -> str | None:
    """What etcd said about the login, when that is why it refused (None otherwise)."""
    if not isinstance(exc, Etcd3Exception):
        return None
    text = f"{exc.detail_text or ''} {' '.join(map(str, exc.args))}"
    for marker in ("authentication failed", "user name is empty", "invalid auth token",
                   "revision of auth store is old"):
        if marker in text:
            return marker
    return None


class KeyExists(DatastoreError):
    pass


class RevisionConflict(DatastoreError):
    """A compare-and-swap lost: the key changed since the revision given."""


class Compacted(DatastoreError):
    """A watch asked for revisions etcd has compacted away: list again and watch from there."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"etcd compacted its history up to revision {revision}")
        self.revision = revision


def _plural(kind: str) -> str:
    lower = kind.lower()
    return lower[:-1] + "ies" if lower.endswith("y") else lower + "s"


_CALICO_BY_PLURAL = {_plural(k.kind): k for k in KIND_INFO if k.api_version == CALICO_API}


def etcd_key(key: ObjectKey) -> str:
    """Where `key` lives: Calico's resource key for Calico's kinds, flowtui's own otherwise."""
    info = BY_MODEL_KIND[key.kind]
    tail = f"{key.namespace}/{key.name}" if info.namespaced else key.name
    if info.api_version == CALICO_API:
        return f"{CALICO_PREFIX}{_plural(info.kind)}/{tail}"
    group = info.api_version.rpartition("/")[0] or "core"
    return f"{OWN_RESOURCES}{group}/{_plural(info.kind)}/{tail}"


def _meta_key(key: str) -> str:
    return META + key.lstrip("/")


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def _prefix_end(prefix: str) -> str:
    raw = prefix.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode()


# What the desired state is, as key ranges: what an agent watches. Two ranges, not one from the
# first to the last: a login whose role grants /calico/ and /flowtui/ may not watch between them.
DESIRED_RANGES = ((CALICO_PREFIX, _prefix_end(CALICO_PREFIX)), (OWN_PREFIX, _prefix_end(OWN_RESOURCES)))
# One range from the first to the last: what an agent watches unless etcd refuses it. A transaction
# then arrives whole, in one response (over two streams its halves arrive apart, and the agent could
# report a revision enforced before its second half is).
SPANNING_RANGE = ((CALICO_PREFIX, _prefix_end(OWN_RESOURCES)),)
assert _prefix_end(OWN_RESOURCES) <= SHARED  # the shared records stay out of the watch
# The keys a read of the desired state lists (an agent's mirror holds exactly these): all inside
# DESIRED_RANGES, so the watch keeps every one of them current.
DESIRED_PREFIXES = (CALICO_PREFIX, LAYOUT, META, OWN_RESOURCES)


@dataclass(frozen=True)
class KVPair:
    """One key at one revision (libcalico-go's model.KVPair: key, value, revision)."""

    key: str
    value: bytes
    revision: int  # mod_revision
    created: int  # create_revision


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # put | delete
    kv: KVPair  # for a delete: the key and the revision of the deletion
    # The last event of its watch response: etcd sends a revision's events (one transaction) in
    # one response, so a reader that stops only after such an event never sees half a transaction.
    last: bool = True


def _kv(raw: Mapping[str, Any]) -> KVPair:
    return KVPair(base64.b64decode(raw["key"]).decode(), base64.b64decode(raw.get("value", "")),
                  int(raw.get("mod_revision", 0)), int(raw.get("create_revision", 0)))


def _cause(exc: Exception, timeout: float) -> str:
    """A short human reason for a failed request (no traceback, no urllib3 object reprs)."""
    text = str(exc.args[0] if exc.args else exc) if not isinstance(exc, Etcd3Exception) else (
        f"{exc.detail_text or ''} {' '.join(map(str, exc.args))}")
    if isinstance(exc, ConnectionTimeoutError) or "timed out" in text.lower():
        return f"no answer within {timeout:g} s"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "TLS: the server's certificate is not signed by the CA given (--etcd-ca)"
    if "SSL" in text or "TLS" in text:
        found = re.search(r"\[SSL[^\]]*\] ([^()']+)", text)
        return f"TLS handshake failed: {found.group(1).strip() if found else 'the server refused this client'}"
    if "Connection refused" in text:
        return "connection refused (is etcd running there?)"
    if "Name or service not known" in text or "Temporary failure in name resolution" in text:
        return "unknown host name"
    if isinstance(exc, Etcd3Exception):
        try:
            message = json.loads(exc.detail_text or "{}").get("error") or json.loads(exc.detail_text or "{}").get(
                "message")
        except ValueError:
            message = None
        return f"refused: {message or text.strip()}"
    return text.splitlines()[0][:200] if text else type(exc).__name__


class EtcdKV:
    """A small etcd v3 client over its HTTP/JSON gateway (etcd3gw): ranges and transactions,
    each request tried on every endpoint in turn, each bounded by `timeout`."""

    def __init__(self, url: DatastoreURL, tls: TLSFiles, timeout: float = TIMEOUT, login: Login | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self.login = login
        # Each member's token: simple tokens are per member (JWT ones are not, but asking each
        # member costs one request per member and process); dropped and asked again when expired.
        self._tokens: dict[str, str] = {}
        self._token_lock = threading.Lock()
        secure = url.tls or tls.given
        self._clients = [
            (f"{host}:{port}", Etcd3Client(host=host, port=port, protocol="https" if secure else "http",
                                           timeout=timeout, api_path="/v3/", session=self._session(tls)))
            for host, port in url.endpoints
        ]

    @staticmethod
    def _session(tls: TLSFiles) -> requests.Session:
        """No settings from the environment: requests would let $REQUESTS_CA_BUNDLE override the CA
        given, and send the endpoints named explicitly through $HTTPS_PROXY."""
        session = requests.Session()
        session.trust_env = False
        session.verify = tls.ca or True
        if tls.cert and tls.key:
            session.cert = (tls.cert, tls.key)
        return session

    def _headers(self, name: str, client: Etcd3Client, renew: bool = False) -> dict[str, str]:
        """The Authorization header for member `name` (empty without a login): its token, asked
        for once and again when `renew` (etcd said the token expired). EtcdAuthFailed when the
        login is refused."""
        if self.login is None:
            return {}
        with self._token_lock:
            token = None if renew else self._tokens.get(name)
            if token is None:
                try:
                    answer = client.post(client.get_url("/auth/authenticate"), data=json.dumps(
                        {"name": self.login.user, "password": self.login.password}))
                except Etcd3Exception as exc:
                    if _auth_answer(exc) or _refused(exc):
                        raise self._auth_failed(name, exc) from None
                    raise
                token = self._tokens[name] = str(answer.get("token", ""))
            return {"Authorization": token}

    def _auth_failed(self, name: str, exc: Exception) -> EtcdAuthFailed:
        answer = _auth_answer(exc)
        if answer == "user name is empty":
            return EtcdAuthFailed(f"etcd datastore {self.url}: {name} authentication failed: etcd requires a login "
                                  f"(--etcd-user USER with --etcd-password-file FILE or $FLOWTUI_ETCD_PASSWORD)",
                                  "authentication failed")
        if answer == "authentication failed":
            who = self.login.user if self.login is not None else "?"
            return EtcdAuthFailed(f"etcd datastore {self.url}: {name} authentication failed for user {who!r} "
                                  f"(wrong user name or password)", "authentication failed")
        return EtcdAuthFailed(f"etcd datastore {self.url}: {name} authentication failed: "
                              f"{_cause(exc, self.timeout)}", "authentication failed")

    def _call(self, name: str, client: Etcd3Client, path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """One request to one member, logged in; an expired token is renewed once."""
        try:
            result: dict[str, Any] = client.post(client.get_url(path), data=json.dumps(payload),
                                                 headers=self._headers(name, client))
            return result
        except Etcd3Exception as exc:
            # an expired token, or one older than a change of users or roles: log in again
            if self.login is None or _auth_answer(exc) not in ("invalid auth token", "revision of auth store is old"):
                raise
        renewed: dict[str, Any] = client.post(client.get_url(path), data=json.dumps(payload),
                                              headers=self._headers(name, client, renew=True))
        return renewed

    def _post(self, path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        failures = []
        for index, (name, client) in enumerate(self._clients):
            try:
                result = self._call(name, client, path, payload)
            except EtcdAuthFailed:
                raise
            except (Etcd3Exception, requests.RequestException, OSError) as exc:
                if _auth_answer(exc):  # a member that answered: the login is the problem, not the member
                    raise self._auth_failed(name, exc) from None
                if _refused(exc):  # a member that answered and said no: another would say the same
                    who = f" for user {self.login.user!r}" if self.login and "permission denied" in str(
                        exc.detail_text if isinstance(exc, Etcd3Exception) else exc) else ""
                    raise EtcdRefused(f"etcd datastore {self.url}: {name} {_cause(exc, self.timeout)}{who}",
                                      _cause(exc, self.timeout)) from None
                failures.append(f"{name}: {_cause(exc, self.timeout)}")
                continue
            if index:  # the one that answered is tried first from now on
                self._clients.insert(0, self._clients.pop(index))
            return result
        raise EtcdUnavailable(f"etcd datastore {self.url} unavailable: " + "; ".join(failures))

    def healthy(self, timeout: float = 1.0) -> str | None:
        """The first member (host:port) whose `/health` says it can serve (it has a leader and a
        quorum read succeeds), each asked for at most `timeout` s; None when none can. A cheap
        probe for a waiting client: no data read, and a member without quorum answers at once
        or within etcd's own 1 s."""
        for name, client in self._clients:
            try:
                answer = client.session.get(client.base_url + "/health", timeout=timeout)
                if answer.ok and answer.json().get("health") == "true":
                    return name
            except (requests.RequestException, OSError, ValueError):
                continue
        return None

    def txn(self, compare: Sequence[Mapping[str, Any]], success: Sequence[Mapping[str, Any]]
            ) -> tuple[bool, int, list[dict[str, Any]]]:
        """One transaction: (whether the comparisons held, the store's revision, responses)."""
        result = self._post("/kv/txn", {"compare": list(compare), "success": list(success)})
        return (bool(result.get("succeeded", False)), int(result.get("header", {}).get("revision", 0)),
                list(result.get("responses", [])))

    def list(self, *prefixes: str) -> tuple[int, dict[str, KVPair]]:
        """Every key under `prefixes`, all at one revision (one read-only transaction)."""
        ranges = [{"request_range": {"key": _b64(p), "range_end": _b64(_prefix_end(p))}} for p in prefixes]
        _, revision, responses = self.txn([], ranges)
        found: dict[str, KVPair] = {}
        for response in responses:
            for raw in response.get("response_range", {}).get("kvs", []):
                kv = _kv(raw)
                found[kv.key] = kv
        return revision, found

    def get(self, key: str) -> KVPair | None:
        result = self._post("/kv/range", {"key": _b64(key)})
        kvs = result.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    # libcalico-go's backend verbs over single keys: Create fails when the key exists, Update and
    # Delete when its revision moved (compare-and-swap), Apply writes whatever is there.

    def create(self, key: str, value: str) -> KVPair:
        ok, revision, _ = self.txn([_created_is(key, 0)], [_put(key, value)])
        if not ok:
            raise KeyExists(f"{key} already exists in {self.url}")
        return KVPair(key, value.encode(), revision, revision)

    def update(self, key: str, value: str, revision: int) -> KVPair:
        ok, new, _ = self.txn([_mod_is(key, revision)], [_put(key, value)])
        if not ok:
            raise RevisionConflict(f"{key} is no longer at revision {revision} in {self.url}")
        found = self.get(key)
        return found if found is not None else KVPair(key, value.encode(), new, new)

    def apply(self, key: str, value: str) -> KVPair:
        _, revision, _ = self.txn([], [_put(key, value)])
        found = self.get(key)
        return found if found is not None else KVPair(key, value.encode(), revision, revision)

    def delete(self, key: str, revision: int | None = None) -> int:
        """Remove `key` (at `revision` if given); the store's revision after. NotFound if absent."""
        compare = [_mod_is(key, revision)] if revision is not None else [_created_is(key, 0, "GREATER")]
        ok, new, _ = self.txn(compare, [_delete(key)])
        if not ok:
            if self.get(key) is None:
                raise NotFound(f"{key} not found in {self.url}")
            raise RevisionConflict(f"{key} is no longer at revision {revision} in {self.url}")
        return new

    def watch(self, prefix: str, start_revision: int, range_end: str | None = None,
              handle: WatchHandle | None = None) -> Iterator[WatchEvent]:
        """Every change under `prefix` (or in [prefix, range_end)) from `start_revision` on, as etcd
        orders them. Raises
        Compacted when etcd no longer has that revision (list again, then watch from the list's
        revision), EtcdUnavailable when the stream cannot be opened or breaks. `handle.close()`,
        from another thread, ends the stream (the iteration stops)."""
        request = {"create_request": {"key": _b64(prefix), "range_end": _b64(range_end or _prefix_end(prefix)),
                                      "start_revision": start_revision}}
        failures = []
        for index, (name, client) in enumerate(self._clients):  # as _post: the first member that answers
            try:
                response = self._open_watch(name, client, request)
            except (requests.RequestException, OSError, Etcd3Exception) as exc:
                failures.append(f"{name}: {_cause(exc, self.timeout)}")
                continue
            if index:
                self._clients.insert(0, self._clients.pop(index))
            break
        else:
            raise EtcdUnavailable(f"etcd datastore {self.url}: watch: " + "; ".join(failures))
        if handle is not None and not handle.attach(response):
            response.close()
            return
        try:
            for line in response.iter_lines():
                if not line.strip():
                    continue
                answer = json.loads(line)
                if "error" in answer:
                    raise EtcdUnavailable(f"etcd datastore {self.url}: watch on {name} ended: "
                                          f"{answer['error'].get('message', answer['error'])}")
                result = answer.get("result", {})
                if int(result.get("compact_revision", 0) or 0):
                    raise Compacted(int(result["compact_revision"]))
                if result.get("canceled"):
                    raise EtcdUnavailable(f"etcd datastore {self.url}: watch canceled by {name}: "
                                          f"{result.get('cancel_reason', 'no reason given')}")
                events = result.get("events", [])
                for i, event in enumerate(events):
                    yield WatchEvent("delete" if event.get("type") == "DELETE" else "put", _kv(event["kv"]),
                                     i == len(events) - 1)
        except (requests.RequestException, OSError, ValueError) as exc:
            raise EtcdUnavailable(f"etcd datastore {self.url}: watch on {name} lost: {exc}") from exc
        finally:
            response.close()


    def _open_watch(self, name: str, client: Etcd3Client, request: Mapping[str, Any]) -> requests.Response:
        """The watch stream on one member, logged in (a token that expired is renewed once: a
        stream outlives its token, but a new stream needs a valid one)."""
        for renew in (False, True):
            # hasleader: the member ends the stream when it loses its leader (a minority member
            # would otherwise keep it open, silent, while the majority moves on).
            headers = {**REQUIRE_LEADER, **self._headers(name, client, renew=renew)}
            response = client.session.post(client.get_url("/watch"), data=json.dumps(request), stream=True,
                                           timeout=(self.timeout, None), headers=headers)
            if response.status_code == 401 and self.login is not None and not renew:
                response.close()
                continue
            if response.status_code in (400, 401):
                text = response.text
                response.close()
                raise self._auth_failed(name, Etcd3Exception(text, response.reason))
            response.raise_for_status()
            return response
        raise AssertionError("unreachable")


class WatchHandle:
    """Ends a watch stream from another thread: its reader may be blocked on a silent connection
    (a peer cut off by a firewall sends nothing, not even a reset), so the socket is shut down,
    which wakes the read; the stream's own clean-up then closes it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._response: requests.Response | None = None
        self.closed = False

    def attach(self, response: requests.Response) -> bool:
        """Called by `watch` with the open stream; False when closed already (do not read)."""
        with self._lock:
            self._response = response
            return not self.closed

    def close(self) -> None:
        with self._lock:
            self.closed = True
            response = self._response
        if response is None:
            return
        sock = getattr(getattr(response.raw, "_connection", None), "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed already


def _put(key: str, value: str) -> dict[str, Any]:
    return {"request_put": {"key": _b64(key), "value": _b64(value)}}


def _delete(key: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": _b64(key)}}


def _mod_is(key: str, revision: int) -> dict[str, Any]:
    return {"key": _b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": str(revision)}


def _created_is(key: str, revision: int, result: str = "EQUAL") -> dict[str, Any]:
    return {"key": _b64(key), "result": result, "target": "CREATE", "create_revision": str(revision)}


@dataclass(frozen=True)
class _Snapshot:
    catalog: Catalog
    texts: Mapping[str, str]  # etcd key -> stored JSON
    layout_revision: int  # mod_revision of /flowtui/layout (0: never written)


def compile_key(layout: int, loose: Sequence[tuple[str, int, int]]) -> int:
    """`Catalog.layout`: equal keys mean equal stored objects but for their toggles. The layout
    key's revision says so while every object is flowtui's and whole; objects written by other tools
    (calicoctl) and bookkeeping without its object (half a transaction, as an agent's two watch
    streams can deliver it) are folded in, as a negative number no revision can equal."""
    if not loose:
        return layout
    digest = hashlib.blake2b(repr((layout, sorted(loose))).encode(), digest_size=7).digest()
    return -1 - int.from_bytes(digest, "big")


def desired_revision(snap: _Snapshot) -> int:
    """The desired state's revision: its last change (every write but a toggle moves the layout
    key; a toggle, its policy's key). Not etcd's own revision, which other writers move too (agents
    publishing their state, Calico's other keys): an agent that enforces everything up to it is in
    sync, and a write that changed nothing reports it. (The reconciler and the watch use the read's
    own revision: where the watch resumes.)"""
    return max([snap.layout_revision, *(o.revision for o in snap.catalog.objects.values())])


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _encode(body: Mapping[str, Any]) -> str:
    """Calico's encoding: the v3 object as JSON, without a resourceVersion (etcd's revision is it)."""
    meta = body.get("metadata")
    if isinstance(meta, dict) and "resourceVersion" in meta:
        body = {**body, "metadata": {k: v for k, v in meta.items() if k != "resourceVersion"}}
    return json.dumps(body, default=str, ensure_ascii=False)


class EtcdDatastore(LocalRecords):
    """The desired state in etcd (see the module's docstring); the same interface as the
    directory `Datastore`. Rule ids and applied tables stay in the local directory `path`."""

    def __init__(self, url: DatastoreURL, tls: TLSFiles | None = None, state_dir: str | os.PathLike[str] | None = None,
                 timeout: float = TIMEOUT, *, login: Login | None = None) -> None:
        self.url = url
        self.kv = EtcdKV(url, tls or TLSFiles(), timeout, login)
        base = Path(state_dir) if state_dir is not None else default_home()
        name = hashlib.sha256(str(url).encode()).hexdigest()[:12]
        super().__init__(base / "etcd" / name)  # this machine's rule ids and applied tables for this store
        self._cache: dict[tuple[str, int], ResourceSet] = {}
        # Each object's catalog entry by (key, revision, its bookkeeping's revision): a read
        # decodes only what changed since the last one (an agent reads after every event).
        self._entries: dict[tuple[str, int, int], StoredObject] = {}
        self._metas: dict[tuple[str, int], tuple[ObjectKey, KindInfo, dict[str, Any]]] = {}  # bookkeeping, decoded
        self._pinned = threading.local()  # .snap: this thread's read inside `one_read`

    def __str__(self) -> str:
        return str(self.url)

    # ---- rule ids shared by every machine (`shared.py`) --------------------------------------

    @property
    def id_lease(self) -> Any:
        """Blocks of rule ids leased from etcd: unique across every machine of this store."""
        from enforcer.datastore.shared import lease_block

        return lambda first: lease_block(self.kv, first)

    def publish_rules(self, refs: Sequence[Any]) -> None:
        from enforcer.datastore.shared import publish_refs

        publish_refs(self.kv, refs)

    def rule_table(self) -> Any:
        """rules.jsonl with every ref the agents published (theirs win: they compiled them)."""
        from enforcer.datastore.shared import published_refs
        from enforcer.ruleids import RuleTable

        published = published_refs(self.kv)
        local = super().rule_table()
        return RuleTable([*(r for r in local if published.get(r.id) is None), *published])

    # ---- reading -----------------------------------------------------------------------------

    @contextmanager
    def one_read(self, given: tuple[int, Mapping[str, KVPair]] | None = None) -> Iterator[None]:
        """The block's reads (catalog, resources, ...) share the first one: one etcd round trip
        and one consistent revision for a reconcile, instead of a list per call. Writes in the
        block would not be seen by its reads: the reconciler only reads. `given`: what that read
        would return, (revision, every key under both prefixes), kept by a caller that follows
        the watch (the agent's `Mirror`): no round trip at all."""
        if getattr(self._pinned, "active", False):  # nested: the outer block's read stands
            yield
            return
        self._pinned.snap = None if given is None else self._parse(*given)
        self._pinned.active = True
        try:
            yield
        finally:
            self._pinned.active = False
            self._pinned.snap = None

    def _read(self) -> _Snapshot:
        """What the read methods see: inside `one_read` the block's one read, else a fresh one.
        Writes (and their retries) always read afresh (`_snapshot`)."""
        if getattr(self._pinned, "active", False):
            snap: _Snapshot | None = self._pinned.snap
            if snap is None:
                snap = self._pinned.snap = self._snapshot()
            return snap
        return self._snapshot()

    def _snapshot(self) -> _Snapshot:
        return self._parse(*self.kv.list(*DESIRED_PREFIXES))

    def _parse(self, revision: int, kvs: Mapping[str, KVPair]) -> _Snapshot:
        objects: dict[ObjectKey, StoredObject] = {}
        described: set[str] = set()
        known, entries = self._entries, {}
        known_metas, metas = self._metas, {}
        loose: list[tuple[str, int, int]] = []
        for kv in kvs.values():
            if not kv.key.startswith(META):
                continue
            described_by = known_metas.get((kv.key, kv.revision))
            if described_by is None:
                try:
                    meta = json.loads(kv.value)
                    key = ObjectKey(meta["kind"], meta["namespace"], meta["name"])
                    described_by = (key, BY_MODEL_KIND[key.kind], meta)
                except (ValueError, KeyError, TypeError) as exc:
                    raise DatastoreError(f"etcd datastore {self.url}: {kv.key} is damaged ({exc!r})") from exc
            metas[(kv.key, kv.revision)] = described_by
            key, info, meta = described_by
            target = kvs.get(etcd_key(key))
            if target is None or target.revision < kv.revision:
                # Removed by another tool (stale bookkeeping), or half of a write: an agent's watch
                # brings the two ranges of one transaction apart. Either way the layout key alone
                # no longer says what is stored.
                loose.append((kv.key, kv.revision, target.revision if target else 0))
            if target is None:
                continue
            described.add(target.key)
            entry = (target.key, target.revision, kv.revision)
            stored = known.get(entry)
            if stored is None or stored.key != key:
                stored = self._stored(key, info, target, str(meta.get("source", "")), int(meta.get("position", 0)),
                                      str(meta.get("updated", "")), kv.revision, meta.get("writtenKind"),
                                      meta.get("apiVersion"))
            objects[key] = entries[entry] = stored
        for kv in kvs.values():  # Calico's kinds written by other tools (calicoctl): read as they are
            if kv.key in described or not kv.key.startswith(CALICO_PREFIX):
                continue
            parts = kv.key[len(CALICO_PREFIX):].split("/")
            found = _CALICO_BY_PLURAL.get(parts[0])
            if found is None or len(parts) != (3 if found.namespaced else 2):
                continue
            key = ObjectKey(found.model_kind, parts[1] if found.namespaced else None, parts[-1])
            loose.append((kv.key, kv.revision, 0))  # written by another tool: not in the layout key
            entry = (kv.key, kv.revision, 0)
            stored = known.get(entry)
            if stored is None or stored.key != key:
                stored = self._stored(key, found, kv, f"etcd {kv.key}", 0, "", kv.revision, None, None)
            objects[key] = entries[entry] = stored
        self._entries, self._metas = entries, metas
        layout = kvs.get(LAYOUT)
        texts = {o.file: kvs[o.file].value.decode("utf-8", errors="replace") for o in objects.values()}
        catalog = Catalog(revision, objects, compile_key(layout.revision if layout else 0, loose))
        return _Snapshot(catalog, texts, layout.revision if layout else 0)

    @staticmethod
    def _stored(key: ObjectKey, info: KindInfo, kv: KVPair, source: str, position: int, updated: str,
                generation: int, written_kind: Any, api_version: Any) -> StoredObject:
        try:
            body = json.loads(kv.value)
        except ValueError:
            body = {}
        disabled = isinstance(body, dict) and annotation(body, DISABLED_ANNOTATION) == "true"
        return StoredObject(key, str(api_version or info.api_version), str(written_kind or info.kind), kv.revision,
                            kv.created, updated, kv.key, source, disabled, position,
                            min(generation, kv.revision) or kv.revision)

    def catalog(self) -> Catalog:
        return self._read().catalog

    @property
    def revision(self) -> int:
        return desired_revision(self._read())

    def objects(self, kind: str | None = None, *, name: str | None = None,
                namespace: str | None = None) -> list[StoredObject]:
        return self._select(self._read(), kind, name, namespace)

    @staticmethod
    def _select(snap: _Snapshot, kind: str | None, name: str | None, namespace: str | None) -> list[StoredObject]:
        kinds = {k.model_kind for k in resolve_kinds(kind)} if kind else None
        return sorted(
            (o for o in snap.catalog.objects.values()
             if (kinds is None or o.key.kind in kinds) and (name is None or o.key.name == name)
             and (namespace is None or not o.info.namespaced or o.key.namespace == namespace)),
            key=lambda o: (_KIND_ORDER.get(o.key.kind, 99), o.key.namespace or "", o.key.name),
        )

    def object_documents(self, kind: str | None = None, *, name: str | None = None,
                         namespace: str | None = None) -> list[tuple[StoredObject, dict[str, Any]]]:
        snap = self._read()
        return [(o, self._body(snap, o)) for o in self._select(snap, kind, name, namespace)]

    def read_document(self, obj: StoredObject) -> str:
        kv = self.kv.get(obj.file)
        if kv is None:
            raise NotFound(f"{obj.key} is no longer in {self.url}")
        return kv.value.decode("utf-8", errors="replace")

    def _body(self, snap: _Snapshot, obj: StoredObject) -> dict[str, Any]:
        try:
            body = json.loads(snap.texts[obj.file])
        except ValueError as exc:
            raise DatastoreError(f"etcd datastore {self.url}: {obj.file} is not JSON ({exc})") from exc
        if not isinstance(body, dict):
            raise DatastoreError(f"etcd datastore {self.url}: {obj.file} is not an object")
        return body

    def find(self, kind: str, name: str, namespace: str | None = None) -> StoredObject:
        return self._find(self._read().catalog, kind, name, namespace)

    @staticmethod
    def _find(index: Catalog, kind: str, name: str, namespace: str | None) -> StoredObject:
        kinds = resolve_kinds(kind)
        wanted = {k.model_kind for k in kinds}
        matches = [o for o in index.objects.values()
                   if o.key.kind in wanted and o.key.name == name
                   and (namespace is None or not o.info.namespaced or o.key.namespace == namespace)]
        if not matches:
            where = f" in namespace {namespace}" if namespace and any(k.namespaced for k in kinds) else ""
            raise NotFound(f"{kind} {name!r} not found{where}")
        if len(matches) > 1:
            keys = ", ".join(sorted(str(o.key) for o in matches))
            raise Ambiguous(f"{kind} {name!r} is ambiguous: {keys} (give the kind or -n NAMESPACE)")
        return matches[0]

    def resources(self) -> ResourceSet:
        snap = self._read()
        res = self._load(snap, snap.catalog.objects.values(), {})
        live = {(o.file, o.revision) for o in snap.catalog.objects.values()}
        for stale in self._cache.keys() - live:
            del self._cache[stale]
        return res

    def _origin(self, obj: StoredObject) -> str:
        """What loaded objects name as their file: the URL and key (`sources` maps it back)."""
        return f"{self.url}{obj.file}"

    def _sources(self, objects: Mapping[ObjectKey, StoredObject]) -> dict[str, str]:
        return {self._origin(o): o.source for o in objects.values()}

    def _load(self, snap: _Snapshot, objects: Iterable[StoredObject], pending: Mapping[str, str]) -> ResourceSet:
        parts: list[tuple[StoredObject, ResourceSet]] = []
        problems: list[Problem] = []
        for obj in sorted(objects, key=lambda o: o.order):
            cached = None if obj.file in pending else self._cache.get((obj.file, obj.revision))
            if cached is None:
                text = pending[obj.file] if obj.file in pending else snap.texts[obj.file]
                try:
                    cached = load_text(text, self._origin(obj))
                except LoadError as err:
                    problems += err.problems
                    continue
                if obj.file not in pending:
                    self._cache[(obj.file, obj.revision)] = cached
            parts.append((obj, cached))
        if problems:
            raise LoadError(problems)
        return _merge(parts)

    # ---- writing -----------------------------------------------------------------------------

    def _plan_apply(self, snap: _Snapshot, docs: Sequence[Document]
                    ) -> tuple[list[Change], dict[ObjectKey, StoredObject], dict[str, str], ResourceSet]:
        index = snap.catalog
        guess = index.revision + 1  # what pending objects are validated with; etcd assigns the real one
        objects = dict(index.objects)
        texts: dict[str, str] = {}
        changes: list[Change] = []
        now = _now()
        for position, doc in enumerate(docs):
            old = index.objects.get(doc.key)
            body = doc.body
            if old is not None:
                stored = self._body(snap, old)
                toggle = annotation(stored, DISABLED_ANNOTATION)
                if toggle is not None and annotation(body, DISABLED_ANNOTATION) is None:
                    body = with_annotation(body, DISABLED_ANNOTATION, toggle)  # the live toggle survives
                if json.loads(_encode(body)) == stored:
                    changes.append(Change(doc.key, "unchanged", old.revision))
                    continue
            key = etcd_key(doc.key)
            texts[key] = _encode(body)
            objects[doc.key] = StoredObject(
                doc.key, doc.info.api_version, doc.info.kind, guess, old.created if old else guess, now, key,
                str(doc.origin), annotation(body, DISABLED_ANNOTATION) == "true",
                old.position if old else position)
            changes.append(Change(doc.key, "configured" if old is not None else "created", 0))
        resources = self._load(snap, objects.values(), texts)  # the merged result must load
        return changes, objects, texts, resources

    def _write(self, snap: _Snapshot, ops: list[dict[str, Any]], guards: Sequence[Mapping[str, Any]] = ()
               ) -> int | None:
        """Commit `ops` plus a new layout if nobody else wrote since `snap` (the layout, and the keys
        `guards` compare: a toggle rewrites a policy's key without moving the layout); the new
        revision or None."""
        try:
            ok, revision, _ = self.kv.txn([_mod_is(LAYOUT, snap.layout_revision), *guards],
                                          [*ops, _put(LAYOUT, _now())])
        except EtcdRefused as err:
            if "too many operations" in err.cause or "too large" in err.cause:
                raise EtcdRefused(
                    f"etcd datastore {self.url} refused this write as one transaction ({err.cause}: "
                    f"{len(ops) + 1} operations, {len(ops) // 2} objects); nothing was stored. Start etcd with "
                    f"--max-txn-ops {len(ops) + 1} or more (default 128) and a --max-request-bytes that fits, "
                    f"or apply fewer objects at a time", err.cause) from None
            raise
        return revision if ok else None

    def _retrying(self, attempt: Callable[[_Snapshot], ChangeSet | None]) -> ChangeSet:
        for _ in range(RETRIES):
            result = attempt(self._snapshot())
            if result is not None:
                return result
        raise DatastoreError(f"etcd datastore {self.url}: {RETRIES} attempts lost to concurrent writers; try again")

    def apply_documents(self, paths: Sequence[str], namespace: str | None = None,
                        check: Callable[[Preview], object] | None = None) -> ChangeSet:
        """As `Datastore.apply_documents`: validated against the merged result, then one
        transaction for the whole input (all or nothing), retried on a concurrent write."""
        sources = read_sources(paths)
        docs = documents(sources, namespace=namespace)

        def attempt(snap: _Snapshot) -> ChangeSet | None:
            changes, objects, texts, resources = self._plan_apply(snap, docs)
            if not texts:
                return ChangeSet(desired_revision(snap), tuple(changes), skipped_in(sources))
            if check is not None:
                check(Preview(ChangeSet(snap.catalog.revision + 1, tuple(changes)), resources,
                              self._sources(objects)))
            ops = []
            guards = []  # each rewritten key as it was read: a toggle since then is never overwritten
            for change in changes:
                if change.action == "unchanged":
                    continue
                obj = objects[change.key]
                old = snap.catalog.objects.get(change.key)
                guards.append(_mod_is(obj.file, old.revision) if old is not None else _created_is(obj.file, 0))
                meta = {"kind": obj.key.kind, "namespace": obj.key.namespace, "name": obj.key.name,
                        "apiVersion": obj.api_version, "writtenKind": obj.kind, "source": obj.source,
                        "position": obj.position, "updated": obj.updated}
                ops += [_put(obj.file, texts[obj.file]), _put(_meta_key(obj.file), json.dumps(meta))]
            revision = self._write(snap, ops, guards)
            if revision is None:
                return None
            done = tuple(c if c.action == "unchanged" else replace(c, revision=revision) for c in changes)
            return ChangeSet(revision, done, skipped_in(sources))

        return self._retrying(attempt)

    def preview_documents(self, paths: Sequence[str], namespace: str | None = None) -> Preview:
        sources = read_sources(paths)
        docs = documents(sources, namespace=namespace)
        snap = self._snapshot()
        changes, objects, _, resources = self._plan_apply(snap, docs)
        revision = snap.catalog.revision + (1 if any(c.action != "unchanged" for c in changes) else 0)
        return Preview(ChangeSet(revision, tuple(changes), skipped_in(sources)), resources,
                       self._sources(objects))

    def _delete_keys(self, keys: Sequence[ObjectKey], strict: bool) -> ChangeSet:
        def attempt(snap: _Snapshot) -> ChangeSet | None:
            found = [snap.catalog.objects.get(k) for k in keys]
            if strict and any(o is None for o in found):
                raise NotFound(f"{keys[0]} not found")
            ops = [op for o in found if o is not None for op in (_delete(o.file), _delete(_meta_key(o.file)))]
            if not ops:
                return ChangeSet(desired_revision(snap), tuple(Change(k, "not found", 0) for k in keys))
            revision = self._write(snap, ops)
            if revision is None:
                return None
            return ChangeSet(revision, tuple(Change(k, "deleted" if o else "not found", revision if o else 0)
                                             for k, o in zip(keys, found, strict=True)))

        return self._retrying(attempt)

    def delete(self, kind: str, name: str, namespace: str | None = None) -> ChangeSet:
        obj = self.find(kind, name, namespace)
        return self._delete_keys([obj.key], strict=True)

    def delete_documents(self, paths: Sequence[str], namespace: str | None = None) -> ChangeSet:
        docs = documents(read_sources(paths), validate=False, namespace=namespace)
        return self._delete_keys([d.key for d in docs], strict=False)

    def _toggle_target(self, kind: str, name: str, namespace: str | None) -> tuple[ObjectKey, KVPair, int]:
        """The one object a toggle names, and the store's revision. Read by key when every kind
        it may be has a known key (one read of a few keys, whatever the size of the store); else
        found in a full read (a namespaced kind without a namespace)."""
        kinds = resolve_kinds(kind)
        if all(not k.namespaced or namespace is not None for k in kinds):
            keys = [ObjectKey(k.model_kind, namespace if k.namespaced else None, name) for k in kinds]
            _, revision, responses = self.kv.txn([], [{"request_range": {"key": _b64(etcd_key(k))}} for k in keys])
            found = [(k, _kv(raw)) for k, r in zip(keys, responses, strict=True)
                     for raw in r.get("response_range", {}).get("kvs", [])]
            if len(found) == 1:
                return found[0][0], found[0][1], revision
            if not found:
                where = f" in namespace {namespace}" if namespace and any(k.namespaced for k in kinds) else ""
                raise NotFound(f"{kind} {name!r} not found{where}")
        snap = self._snapshot()  # several matches: _find names them (Ambiguous)
        obj = self._find(snap.catalog, kind, name, namespace)
        return (obj.key, KVPair(obj.file, snap.texts[obj.file].encode(), obj.revision, obj.created),
                snap.catalog.revision)

    def set_disabled(self, kind: str, name: str, namespace: str | None, disabled: bool) -> ChangeSet:
        """The live toggle: one key rewritten (the policy's own, its annotation flipped), compared
        on that key's revision; its generation and the layout stay."""
        for _ in range(RETRIES):
            key, kv, revision = self._toggle_target(kind, name, namespace)
            info = BY_MODEL_KIND[key.kind]
            if not info.is_policy:
                raise DatastoreError(f"{key} is not a policy: only policies can be disabled")
            try:
                body = json.loads(kv.value)
            except ValueError as exc:
                raise DatastoreError(f"etcd datastore {self.url}: {kv.key} is not JSON ({exc})") from exc
            if (annotation(body, DISABLED_ANNOTATION) == "true") == disabled:
                return ChangeSet(self.revision, (Change(key, "unchanged", kv.revision),))
            body = with_annotation(body, DISABLED_ANNOTATION, "true" if disabled else None)
            ok, revision, _ = self.kv.txn([_mod_is(kv.key, kv.revision)], [_put(kv.key, _encode(body))])
            if ok:
                return ChangeSet(revision, (Change(key, "disabled" if disabled else "enabled", revision),))
        raise DatastoreError(f"etcd datastore {self.url}: {RETRIES} attempts lost to concurrent writers; try again")


__all__ = ["CALICO_PREFIX", "DESIRED_PREFIXES", "DESIRED_RANGES", "SHARED", "SPANNING_RANGE", "Compacted",
           "EtcdAuthFailed", "EtcdDatastore", "EtcdKV", "EtcdRefused", "EtcdUnavailable", "KVPair",
           "KeyExists", "RevisionConflict", "WatchEvent", "etcd_key"]
