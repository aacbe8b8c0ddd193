"""The job watch (controller/informer.py) as the API server drives it: a paged LIST, watch events, a bookmark, an
expired watch (410 Gone) and the fresh LIST after it. The API is a scripted fake here, byte for byte the list and
watch responses the Kubernetes API sends; the real-API-server and kmock tiers run the same code under the operator."""

import json
import threading

from vita_operator.controller import informer
from vita_operator.controller.cache import Store
from vita_operator.controller.informer import Informer, JobWatch


def job(name: str, run: str | None, phase: str = "Running") -> dict:
    labels = {"app.kubernetes.io/managed-by": "vita-operator", **({"vita.training.dev/run": run} if run else {})}
    return {"metadata": {"name": name, "namespace": "ns", "labels": labels, "managedFields": [{"big": 1}]},
            "status": {"phase": phase}}


class Response:
    """What urllib3 hands the client for _preload_content=False: a LIST's body, or a watch's event stream."""

    status = 200

    def __init__(self, data: bytes = b"", lines: list[dict] = ()):
        self.data, self.lines = data, lines

    def stream(self, amt=None, decode_content=False):
        for line in self.lines:
            yield (json.dumps(line) + "\n").encode()

    def close(self):
        pass

    def release_conn(self):
        pass


class FakeApi:
    def __init__(self, objects: list[dict], watches: list[list[dict]], objects_later: list[dict]):
        """`objects_later`: the server's objects once the first watch has ended."""
        self.objects, self.watches, self.objects_later = objects, watches, objects_later
        self.lists: list[dict] = []  # the query of each LIST page
        self.watched_from: list[str] = []

    def __call__(self, **kw):
        if kw.get("watch"):
            self.watched_from.append(kw["resource_version"])
            assert kw["label_selector"] == "app.kubernetes.io/managed-by=vita-operator" and kw["allow_watch_bookmarks"]
            lines = self.watches.pop(0)
            self.objects = self.objects_later
            return Response(lines=lines)
        self.lists.append({k: kw.get(k) for k in ("limit", "_continue", "label_selector")})
        start = int(kw.get("_continue") or 0)
        page = self.objects[start:start + kw["limit"]]
        more = start + kw["limit"] < len(self.objects)
        meta = {"resourceVersion": f"rv-list-{len(self.lists)}", **({"continue": str(start + kw["limit"])}
                                                                     if more else {})}
        return Response(data=json.dumps({"items": page, "metadata": meta}).encode())


def test_the_job_watch_lists_in_pages_follows_events_and_lists_again_after_a_410(monkeypatch):
    objects = [job("r1-s1-1", "r1", "Succeeded"), job("r1-s2-1", "r1"), job("r2-s1-1", "r2"), job("x", None),
               job("r2-s1-2", "r2")]
    stop = threading.Event()
    changed: list[tuple[str, str]] = []

    def on_change(key):
        changed.append(key)
        if key == ("ns", "r3"):
            stop.set()  # the last scripted event
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "rv-bookmark"}}}
    api = FakeApi(objects, watches=[
        [{"type": "MODIFIED", "object": job("r1-s2-1", "r1", "Failed")},
         {"type": "DELETED", "object": job("r2-s1-1", "r2")},
         bookmark,
         {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}}],
        [{"type": "ADDED", "object": job("r3-s1-1", "r3")}]],
        # meanwhile r2-s1-2 goes without an event reaching this watch (the 410 says events were missed): only the
        # fresh LIST can drop it
        objects_later=[job("r1-s1-1", "r1", "Succeeded"), job("r1-s2-1", "r1", "Failed"), job("x", None)])
    monkeypatch.setattr(informer, "_call", lambda w: api)
    monkeypatch.setattr(informer, "PAGE", 2)
    store = Store()

    def slim(obj):
        return {"metadata": {k: v for k, v in obj["metadata"].items() if k != "managedFields"},
                "status": obj["status"]}
    w = JobWatch("kubeflow.org", "v1", "pytorchjobs", "app.kubernetes.io/managed-by=vita-operator", None, store,
                 slim, on_change)

    thread = threading.Thread(target=Informer(w).run, args=(stop,), daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive()

    # three pages of two, then (after the 410) two pages of the state the server has now
    assert [q["_continue"] for q in api.lists] == [None, "2", "4", None, "2"] and {q["limit"] for q in api.lists} == {2}
    # the first watch starts from the first list's version; the second from the second list's (not the bookmark's:
    # a 410 means that version is gone)
    assert api.watched_from == ["rv-list-3", "rv-list-5"]
    # only events after a listing ask for reconciles, and only for jobs of a run
    assert changed == [("ns", "r1"), ("ns", "r2"), ("ns", "r3")]
    cached = {o["metadata"]["name"]: o["status"]["phase"] for o in store.all()}
    assert cached == {"r1-s1-1": "Succeeded", "r1-s2-1": "Failed", "r3-s1-1": "Running"}
    assert all("managedFields" not in o["metadata"] for o in store.all())
    assert [o["metadata"]["name"] for o in store.group(("ns", "r2"))] == []


def test_a_watch_without_a_store_lists_one_object_for_its_version(monkeypatch):
    """The batch Jobs' watch keeps nothing: its LIST asks for one object (only the resourceVersion matters), and its
    events still ask for their runs' reconciles."""
    stop = threading.Event()
    changed = []

    def on_change(key):
        changed.append(key)
        stop.set()
    api = FakeApi([job(f"r{i}-preflight-1", f"r{i}") for i in range(5)],
                  watches=[[{"type": "MODIFIED", "object": job("r4-preflight-1", "r4", "Failed")}]], objects_later=[])
    monkeypatch.setattr(informer, "_call", lambda w: api)
    w = JobWatch("batch", "v1", "jobs", "app.kubernetes.io/managed-by=vita-operator", "ns", None, lambda o: o,
                 on_change)
    thread = threading.Thread(target=Informer(w).run, args=(stop,), daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive()
    assert [(q["limit"], q["_continue"]) for q in api.lists] == [(1, None)]
    assert api.watched_from == ["rv-list-1"] and changed == [("ns", "r4")]
