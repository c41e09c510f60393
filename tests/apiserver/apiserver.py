#!/usr/bin/env python3
"""A Kubernetes API server stand-in for the lab's cluster tests (lab_cluster).

No real kube-apiserver can run on the build machines, so the cluster path
(lvs-controller, lvs-agent run) is run against this: plain HTTP, one process,
state in memory, Python's standard library only.

    apiserver.py [--address 0.0.0.0] [--port 6443] [--log FILE] [--state FILE]

With --state, SIGTERM saves the objects (and the resourceVersion counter) to
FILE before it exits, and a start loads them: the test stops the API server
and brings it back with the same objects (the watch history is not kept).

What it does, for any resource under /api/v1/... and /apis/GROUP/VERSION/...
(one generic store keyed by group and plural, so VirtualServices, LvsNodes,
Nodes, EndpointSlices, Services, Leases, Events all work alike; namespaced when
the path names a namespace, cluster-scoped otherwise):
  - get, list, create (POST; generateName), replace (PUT; a resourceVersion
    given must match, else 409), delete;
  - list and watch with labelSelector (=, ==, !=, in, notin, exists, !key) and
    fieldSelector (metadata.name, metadata.namespace; = and ==),
    resourceVersion (a watch starts after it; absent or 0: ADDED for every
    current object first), allowWatchBookmarks (a BOOKMARK every
    BOOKMARK_SECONDS), timeoutSeconds; an object that stops matching a watch's
    selector is sent to it as DELETED;
  - PATCH: server-side apply (application/apply-patch+yaml; the body must be
    JSON, which kube-rs sends), JSON merge patch, JSON patch (add, remove,
    replace, test; `test` of an absent path against null passes, as the real
    server's library does), and strategic merge patch treated as a merge patch;
  - the /status subresource: writes there change only `status`, writes to the
    object leave its `status` alone (except at create: a seeded Node keeps its
    addresses);
  - metadata: uid, creationTimestamp, a resourceVersion from one counter
    (monotonic across all kinds), generation 1 at create and bumped when
    anything but metadata and status changes; finalizers: a delete sets
    deletionTimestamp and the object goes once its last finalizer is removed;
  - GET /healthz; every request is logged to --log, unknown paths as 404.

Server-side apply, simplified: each field manager's last applied object is
kept per object; a new apply first removes the fields that manager applied
before and no longer applies (at map level: lists are atomic, replaced whole),
then merges the applied fields in. There is no field ownership between
managers, so no conflicts (409) and `force` is ignored; managedFields are not
written.

What it does NOT do: authentication or authorization (RBAC is not exercised),
admission, defaulting and schema validation (CRD OpenAPI and CEL rules are not
checked: the Rust validation is), discovery beyond a stub, pagination (limit
is ignored, everything comes in one page), 410 Gone (the whole event history
is kept in memory), protobuf, table output, dry-run, garbage collection by
ownerReferences, namespace lifecycle, server-side field defaults of core
kinds, strategic merge's list semantics, YAML bodies, HTTPS, persistence
(stopping it loses everything).
"""

import argparse
import copy
import json
import os
import re
import signal
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

BOOKMARK_SECONDS = 2.0

# Kinds by plural, for lists and bookmarks (objects carry their own kind).
KINDS = {
    "virtualservices": "VirtualService",
    "lvsnodes": "LvsNode",
    "vippools": "VipPool",
    "nodes": "Node",
    "namespaces": "Namespace",
    "services": "Service",
    "endpointslices": "EndpointSlice",
    "leases": "Lease",
    "events": "Event",
    "configmaps": "ConfigMap",
    "pods": "Pod",
}


def now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    def __init__(self, code, reason, message):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self):
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


# --- selectors -----------------------------------------------------------------

def parse_label_selector(text):
    """A list of predicates over a labels dict."""
    terms = []
    for term in re.findall(r"(?:[^,(]|\([^)]*\))+", text or ""):
        term = term.strip()
        if not term:
            continue
        m = re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^)]*)\)", term)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if op == "in":
                terms.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                terms.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
            continue
        m = re.fullmatch(r"([^!=]+?)\s*(==|!=|=)\s*(.*)", term)
        if m:
            key, op, value = m.group(1).strip(), m.group(2), m.group(3).strip()
            if op == "!=":
                terms.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                terms.append(lambda labels, k=key, v=value: labels.get(k) == v)
            continue
        if term.startswith("!"):
            terms.append(lambda labels, k=term[1:].strip(): k not in labels)
        else:
            terms.append(lambda labels, k=term: k in labels)
    return terms


def parse_field_selector(text):
    terms = []
    for term in (text or "").split(","):
        term = term.strip()
        if not term:
            continue
        m = re.fullmatch(r"([^!=]+?)\s*(==|!=|=)\s*(.*)", term)
        if not m:
            raise ApiError(400, "BadRequest", f"fieldSelector: cannot parse {term!r}")
        field, op, value = m.groups()
        if field not in ("metadata.name", "metadata.namespace"):
            raise ApiError(400, "BadRequest", f"fieldSelector: field {field!r} is not supported by the stand-in")
        attr = field.split(".")[1]
        if op == "!=":
            terms.append(lambda meta, a=attr, v=value: meta.get(a, "") != v)
        else:
            terms.append(lambda meta, a=attr, v=value: meta.get(a, "") == v)
    return terms


class Filter:
    """Which objects a list or watch sees: namespace, labels, fields."""

    def __init__(self, namespace, query):
        self.namespace = namespace
        self.labels = parse_label_selector(query.get("labelSelector", [""])[0])
        self.fields = parse_field_selector(query.get("fieldSelector", [""])[0])

    def matches(self, obj):
        if obj is None:
            return False
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        labels = meta.get("labels") or {}
        return all(t(labels) for t in self.labels) and all(t(meta) for t in self.fields)


# --- patches -------------------------------------------------------------------

def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def pointer(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"JSON patch: bad path {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc, operations):
    """RFC 6902: add, remove, replace, test (what kube-rs's finalizer helper sends)."""
    doc = copy.deepcopy(doc)
    for op in operations:
        parts = pointer(op["path"])
        parent, last = doc, None
        for i, part in enumerate(parts[:-1]):
            parent = parent[int(part)] if isinstance(parent, list) else parent.get(part)
            if parent is None:
                if op["op"] == "test" and op.get("value") is None:
                    break
                raise ApiError(422, "Invalid", f"JSON patch: {op['path']} does not exist")
        last = parts[-1] if parts else None
        kind = op["op"]
        if kind == "test":
            if parent is None or last is None:
                current = None if parent is None else doc
            elif isinstance(parent, list):
                current = parent[int(last)] if int(last) < len(parent) else None
            else:
                current = parent.get(last)
            if current != op.get("value"):
                raise ApiError(422, "Invalid", f"JSON patch: test of {op['path']} failed")
        elif kind in ("add", "replace"):
            value = copy.deepcopy(op["value"])
            if isinstance(parent, list):
                if last == "-":
                    parent.append(value)
                elif kind == "add":
                    parent.insert(int(last), value)
                else:
                    parent[int(last)] = value
            else:
                if kind == "replace" and last not in parent:
                    raise ApiError(422, "Invalid", f"JSON patch: {op['path']} does not exist")
                parent[last] = value
        elif kind == "remove":
            try:
                if isinstance(parent, list):
                    del parent[int(last)]
                else:
                    del parent[last]
            except (KeyError, IndexError, TypeError) as error:
                raise ApiError(422, "Invalid", f"JSON patch: {op['path']} does not exist") from error
        else:
            raise ApiError(422, "Invalid", f"JSON patch: op {kind!r} not supported by the stand-in")
    return doc


def remove_unapplied(obj, before, after):
    """Removes from obj the map fields in `before` (a manager's last apply) that
    `after` (its new apply) no longer has."""
    if not isinstance(obj, dict) or not isinstance(before, dict):
        return
    for key, value in before.items():
        if not isinstance(after, dict) or key not in after:
            obj.pop(key, None)
        elif isinstance(value, dict) and isinstance(after.get(key), dict):
            remove_unapplied(obj.get(key), value, after[key])


def deep_merge(target, applied):
    """Maps merge, everything else (lists included) is replaced."""
    if not isinstance(target, dict) or not isinstance(applied, dict):
        return copy.deepcopy(applied)
    result = dict(target)
    for key, value in applied.items():
        result[key] = deep_merge(result.get(key), value)
    return result


# --- the store -----------------------------------------------------------------

class Store:
    def __init__(self):
        self.lock = threading.Condition()
        self.rv = 0
        self.objects = {}  # (group, plural) -> {(namespace, name): object}
        self.applied = {}  # ((group, plural), namespace, name, subresource, manager) -> last applied
        self.log = []  # (rv, (group, plural), type, object, previous object)

    def next_rv(self):
        self.rv += 1
        return self.rv

    def record(self, rkey, event_type, obj, previous):
        self.log.append((int(obj["metadata"]["resourceVersion"]), rkey, event_type, copy.deepcopy(obj), previous))
        self.lock.notify_all()

    def table(self, rkey):
        return self.objects.setdefault(rkey, {})

    def get(self, rkey, namespace, name):
        obj = self.table(rkey).get((namespace, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{rkey[1]} "{name}" not found')
        return obj

    def create(self, rkey, api_version, namespace, obj):
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        if (namespace, name) in self.table(rkey):
            raise ApiError(409, "AlreadyExists", f'{rkey[1]} "{name}" already exists')
        obj["apiVersion"] = api_version
        obj.setdefault("kind", KINDS.get(rkey[1], rkey[1]))
        if namespace is not None:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now()
        meta["generation"] = 1
        meta.pop("deletionTimestamp", None)
        meta["resourceVersion"] = str(self.next_rv())
        self.table(rkey)[(namespace, name)] = obj
        self.record(rkey, "ADDED", obj, None)
        return obj

    def update(self, rkey, namespace, name, new, subresource):
        """Stores `new` as the object's next version (its status or the rest of
        it, per subresource); handles generation, finalizers, resourceVersion."""
        old = self.get(rkey, namespace, name)
        new = copy.deepcopy(new)
        if subresource == "status":
            updated = copy.deepcopy(old)
            if "status" in new:
                updated["status"] = new["status"]
            else:
                updated.pop("status", None)
        else:
            updated = new
            if "status" in old:
                updated["status"] = copy.deepcopy(old["status"])
            else:
                updated.pop("status", None)
        meta = updated.setdefault("metadata", {})
        old_meta = old["metadata"]
        # Immutable or server-owned metadata.
        for key in ("name", "namespace", "uid", "creationTimestamp", "generation", "deletionTimestamp"):
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        updated["apiVersion"], updated["kind"] = old["apiVersion"], old["kind"]
        if not meta.get("finalizers"):
            meta.pop("finalizers", None)

        def content(o):
            return {k: v for k, v in o.items() if k not in ("metadata", "status")}

        if content(updated) != content(old):
            meta["generation"] = old_meta.get("generation", 1) + 1
        if updated == old:
            return old  # a no-op write: no new resourceVersion, no event
        meta["resourceVersion"] = str(self.next_rv())
        if "deletionTimestamp" in meta and not meta.get("finalizers"):
            del self.table(rkey)[(namespace, name)]
            self.record(rkey, "DELETED", updated, old)
            return updated
        self.table(rkey)[(namespace, name)] = updated
        self.record(rkey, "MODIFIED", updated, old)
        return updated

    def delete(self, rkey, namespace, name):
        old = self.get(rkey, namespace, name)
        if old["metadata"].get("finalizers"):
            if "deletionTimestamp" in old["metadata"]:
                return old
            updated = copy.deepcopy(old)
            updated["metadata"]["deletionTimestamp"] = now()
            updated["metadata"]["deletionGracePeriodSeconds"] = 0
            updated["metadata"]["resourceVersion"] = str(self.next_rv())
            self.table(rkey)[(namespace, name)] = updated
            self.record(rkey, "MODIFIED", updated, old)
            return updated
        del self.table(rkey)[(namespace, name)]
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self.next_rv())
        self.record(rkey, "DELETED", gone, old)
        return gone


STORE = Store()
LOG = sys.stderr


def log(line):
    LOG.write(f"{time.strftime('%H:%M:%S')} {line}\n")
    LOG.flush()


# --- HTTP ------------------------------------------------------------------------

def parse_path(path):
    """-> (group, version, namespace, plural, name, subresource) or None."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else None
    return group, version, namespace, plural, name, subresource


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass

    def send_json(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        log(f"{self.command} {self.path} -> {code}")

    def body(self):
        data = self.raw_body
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError as error:
            raise ApiError(415, "UnsupportedMediaType", f"the stand-in reads JSON bodies only: {error}") from error

    def handle_any(self):
        # Read whole before anything else: an answer must not leave a body
        # unread on a kept-alive connection.
        length = int(self.headers.get("Content-Length") or 0)
        self.raw_body = self.rfile.read(length) if length else b""
        url = urlparse(self.path)
        query = parse_qs(url.query)
        try:
            if url.path in ("/healthz", "/readyz", "/livez"):
                data = b"ok"
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            if url.path == "/version":
                return self.send_json(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0-standin"})
            parsed = parse_path(url.path)
            if parsed is None:
                raise ApiError(404, "NotFound", f"the stand-in serves no {url.path}")
            group, version, namespace, plural, name, subresource = parsed
            if subresource not in (None, "status"):
                raise ApiError(404, "NotFound", f"the stand-in serves no subresource {subresource}")
            rkey = (group, plural)
            api_version = f"{group}/{version}" if group else version
            method = self.command
            if method == "GET" and name is None:
                if query.get("watch", ["false"])[0] in ("true", "1"):
                    return self.watch(rkey, api_version, namespace, query)
                return self.list(rkey, api_version, namespace, query)
            with STORE.lock:
                if method == "GET":
                    return self.send_json(200, STORE.get(rkey, namespace, name))
                if method == "POST" and name is None:
                    obj = self.body() or {}
                    return self.send_json(201, STORE.create(rkey, api_version, namespace, obj))
                if method == "PUT" and name is not None:
                    new = self.body() or {}
                    old = STORE.get(rkey, namespace, name)
                    given = (new.get("metadata") or {}).get("resourceVersion")
                    if given and given != old["metadata"]["resourceVersion"]:
                        raise ApiError(
                            409,
                            "Conflict",
                            f'Operation cannot be fulfilled on {plural} "{name}": the object has been modified; '
                            "please apply your changes to the latest version and try again",
                        )
                    return self.send_json(200, STORE.update(rkey, namespace, name, new, subresource))
                if method == "PATCH" and name is not None:
                    return self.patch(rkey, api_version, namespace, name, subresource, query)
                if method == "DELETE" and name is not None:
                    return self.send_json(200, STORE.delete(rkey, namespace, name))
            raise ApiError(405, "MethodNotAllowed", f"{method} {url.path}")
        except ApiError as error:
            self.send_json(error.code, error.status())

    def patch(self, rkey, api_version, namespace, name, subresource, query):
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        patch = self.body()
        manager = query.get("fieldManager", [""])[0]
        current = STORE.table(rkey).get((namespace, name))
        if content_type == "application/apply-patch+yaml":
            if not manager:
                raise ApiError(422, "Invalid", "fieldManager is required for apply")
            key = (rkey, namespace, name, subresource, manager)
            applied = patch if subresource is None else {"status": patch.get("status")}
            if current is None:
                if subresource is not None:
                    raise ApiError(404, "NotFound", f'{rkey[1]} "{name}" not found')
                obj = copy.deepcopy(patch)
                obj.setdefault("metadata", {})["name"] = name
                created = STORE.create(rkey, api_version, namespace, obj)
                STORE.applied[key] = copy.deepcopy(applied)
                return self.send_json(201, created)
            new = copy.deepcopy(current)
            remove_unapplied(new, STORE.applied.get(key), applied)
            new = deep_merge(new, applied)
            STORE.applied[key] = copy.deepcopy(applied)
        else:
            if current is None:
                raise ApiError(404, "NotFound", f'{rkey[1]} "{name}" not found')
            if content_type == "application/json-patch+json":
                new = json_patch(current, patch)
            elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                new = merge_patch(current, patch)
            else:
                raise ApiError(415, "UnsupportedMediaType", f"patch type {content_type!r}")
        self.send_json(200, STORE.update(rkey, namespace, name, new, subresource))

    def list(self, rkey, api_version, namespace, query):
        selector = Filter(namespace, query)
        with STORE.lock:
            items = [copy.deepcopy(o) for _, o in sorted(STORE.table(rkey).items()) if selector.matches(o)]
            rv = STORE.rv
        kind = KINDS.get(rkey[1], rkey[1])
        self.send_json(
            200,
            {"apiVersion": api_version, "kind": f"{kind}List", "metadata": {"resourceVersion": str(rv)}, "items": items},
        )

    def chunk(self, event):
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def watch(self, rkey, api_version, namespace, query):
        selector = Filter(namespace, query)
        since = query.get("resourceVersion", [""])[0]
        bookmarks = query.get("allowWatchBookmarks", ["false"])[0] == "true"
        timeout = float(query.get("timeoutSeconds", ["1800"])[0])
        kind = KINDS.get(rkey[1], rkey[1])
        deadline = time.monotonic() + timeout
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        log(f"{self.command} {self.path} -> 200 (watch)")
        pending = []
        with STORE.lock:
            if since in ("", "0"):
                for obj in (o for _, o in sorted(STORE.table(rkey).items()) if selector.matches(o)):
                    pending.append({"type": "ADDED", "object": copy.deepcopy(obj)})
                cursor = len(STORE.log)
            else:
                cursor = next((i for i, e in enumerate(STORE.log) if e[0] > int(since)), len(STORE.log))
        next_bookmark = time.monotonic() + BOOKMARK_SECONDS
        try:
            while True:
                for event in pending:
                    self.chunk(event)
                pending = []
                now_ = time.monotonic()
                if now_ >= deadline:
                    break
                if bookmarks and now_ >= next_bookmark:
                    with STORE.lock:
                        rv = STORE.rv
                    self.chunk(
                        {
                            "type": "BOOKMARK",
                            "object": {"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": str(rv)}},
                        }
                    )
                    next_bookmark = now_ + BOOKMARK_SECONDS
                with STORE.lock:
                    if cursor == len(STORE.log):
                        STORE.lock.wait(timeout=max(0.0, min(deadline, next_bookmark) - time.monotonic()))
                    for _, ekey, event_type, obj, previous in STORE.log[cursor:]:
                        if ekey != rkey:
                            continue
                        now_matches, matched = selector.matches(obj), selector.matches(previous)
                        if event_type == "DELETED":
                            if matched or now_matches:
                                pending.append({"type": "DELETED", "object": obj})
                        elif now_matches:
                            pending.append({"type": "ADDED" if event_type == "ADDED" or not matched else "MODIFIED", "object": obj})
                        elif matched:
                            pending.append({"type": "DELETED", "object": obj})
                    cursor = len(STORE.log)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any


def save(path):
    with STORE.lock:
        state = {
            "rv": STORE.rv,
            "objects": [
                {"group": g, "plural": p, "object": o}
                for (g, p), table in STORE.objects.items()
                for o in table.values()
            ],
            "applied": [
                {"key": [list(k[0]), k[1], k[2], k[3], k[4]], "applied": v} for k, v in STORE.applied.items()
            ],
        }
    with open(path + ".partial", "w") as f:
        json.dump(state, f)
    os.replace(path + ".partial", path)


def load(path):
    try:
        with open(path) as f:
            state = json.load(f)
    except FileNotFoundError:
        return
    STORE.rv = state["rv"]
    for entry in state["objects"]:
        meta = entry["object"]["metadata"]
        STORE.table((entry["group"], entry["plural"]))[(meta.get("namespace"), meta["name"])] = entry["object"]
    for entry in state["applied"]:
        k = entry["key"]
        STORE.applied[(tuple(k[0]), k[1], k[2], k[3], k[4])] = entry["applied"]
    log(f"loaded {len(state['objects'])} objects from {path}, resourceVersion {STORE.rv}")


def main():
    global LOG
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=6443)
    parser.add_argument("--log", help="request log (default: standard error)")
    parser.add_argument("--state", help="objects saved here on SIGTERM, loaded at start")
    args = parser.parse_args()
    if args.log:
        LOG = open(args.log, "a", buffering=1)
    if args.state:
        load(args.state)

    def stop(signum, frame):
        if args.state:
            save(args.state)
            log(f"saved to {args.state}")
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer((args.address, args.port), Handler)
    server.daemon_threads = True
    log(f"serving on {args.address}:{args.port}")
    server.serve_forever()


if __name__ == "__main__":
    main()
