"""The store's primitives for exactly-once work, on both real stores: leases, per-project event queues acknowledged
with their counters in one fenced step, atomic counters, compare-and-set; and SQLite failures as 503s."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from cliplabel.core.errors import StoreUnavailableError
from cliplabel.store.base import event_lease


def test_a_lease_has_one_holder_until_it_expires(make_store, store_kind: str) -> None:  # type: ignore[no-untyped-def]
    store = make_store(store_kind)
    assert store.acquire_lease("p", "a", 0.5)
    assert not store.acquire_lease("p", "b", 5.0)  # held by a
    assert store.acquire_lease("p", "a", 0.5)  # a renews
    time.sleep(0.7)
    assert store.acquire_lease("p", "b", 5.0)  # a's expired: b takes it over
    store.release_lease("p", "a")  # not a's any more: changes nothing
    assert not store.acquire_lease("p", "a", 5.0)
    store.release_lease("p", "b", hold_s=0.5)  # given back, but held for nobody (a backoff)
    assert not store.acquire_lease("p", "a", 5.0)
    time.sleep(0.7)
    assert store.acquire_lease("p", "a", 5.0)
    store.release_lease("p", "a")
    assert store.acquire_lease("p", "c", 5.0)


def test_events_queue_per_project_and_are_acked_with_their_counts(make_store, store_kind: str) -> None:  # type: ignore[no-untyped-def]
    store = make_store(store_kind)
    assert store.event_projects() == [] and store.pending_events(10, "1") == []
    seqs = [store.push_event(f'{{"n": {i}}}', "1" if i % 2 else "2") for i in range(6)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 6
    assert store.event_projects() == ["1", "2"]
    assert [p for _, p in store.pending_events(10, "1")] == ['{"n": 1}', '{"n": 3}', '{"n": 5}']
    assert [s for s, _ in store.pending_events(10)] == seqs  # all projects, oldest first
    one = [s for s, _ in store.pending_events(10, "1")]
    # without the lease nothing is acknowledged, nothing counted
    assert not store.ack_events(one, "1", owner="w1", counts={"created": 3})
    assert store.event_counts("1") == {} and len(store.pending_events(10, "1")) == 3
    assert store.acquire_lease(event_lease("1"), "w1", 5.0)
    assert store.ack_events(one[:2], "1", owner="w1", counts={"created": 2, "since": 1})
    assert store.ack_events(one[2:], "1", owner="w1", counts={"created": 1})
    assert store.event_counts("1") == {"created": 3, "since": 1}
    assert store.event_projects() == ["2"] and store.pending_events(10, "1") == []
    assert store.event_counts("2") == {}


def test_counters_add_atomically_from_many_threads(make_store, store_kind: str) -> None:  # type: ignore[no-untyped-def]
    store = make_store(store_kind)
    start = threading.Barrier(8)

    def count() -> None:
        start.wait()
        for _ in range(50):
            store.add_counts("7", {"since": 1, "other": 2})

    threads = [threading.Thread(target=count) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.event_counts("7") == {"since": 400, "other": 800}
    assert store.add_counts("7", {"since": -400}) == {"since": 0}


def test_claim_blob_is_a_compare_and_set(make_store, store_kind: str) -> None:  # type: ignore[no-untyped-def]
    store = make_store(store_kind)
    assert store.claim_blob("slot", "k", None, "a")
    assert not store.claim_blob("slot", "k", None, "b")  # no longer absent
    assert not store.claim_blob("slot", "k", "x", "b")  # not what it holds
    assert store.claim_blob("slot", "k", "a", "b") and store.get_blob("slot", "k") == "b"


def test_concurrent_claims_have_one_winner(make_store, store_kind: str) -> None:  # type: ignore[no-untyped-def]
    store = make_store(store_kind)
    start = threading.Barrier(8)
    won: list[str] = []

    def claim(name: str) -> None:
        start.wait()
        if store.claim_blob("slot", "race", None, name):
            won.append(name)

    threads = [threading.Thread(target=claim, args=(f"t{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and store.get_blob("slot", "race") == won[0]


def test_any_sqlite_failure_is_the_store_being_unavailable(make_store) -> None:  # type: ignore[no-untyped-def]
    store = make_store("embedded")
    store.put_blob("ns", "k", "v")
    with sqlite3.connect(store.path) as other:  # the file loses a table behind the store's back
        other.execute("DROP TABLE blobs")
    with pytest.raises(StoreUnavailableError, match="embedded store unavailable"):
        store.get_blob("ns", "k")
    with pytest.raises(StoreUnavailableError):
        store.put_blob("ns", "k", "w")


def test_a_lease_is_renewed_only_while_held(make_store, store_kind: str) -> None:  # type: ignore[no-untyped-def]
    store = make_store(store_kind)
    assert not store.renew_lease("p", "a", 5.0)  # nobody holds it: renewing does not take it
    assert store.acquire_lease("p", "a", 0.3) and store.renew_lease("p", "a", 0.3)
    time.sleep(0.5)
    assert not store.renew_lease("p", "a", 5.0)  # expired
    assert store.acquire_lease("p", "b", 5.0) and not store.renew_lease("p", "a", 5.0)


def test_events_acknowledged_by_another_worker_are_not_counted_again(make_store, store_kind: str) -> None:  # type: ignore[no-untyped-def]
    store = make_store(store_kind)
    seqs = [store.push_event("{}", "1") for _ in range(2)]
    assert store.ack_events(seqs, "1", counts={"created": 2})
    assert not store.ack_events(seqs, "1", counts={"created": 2})  # gone already: nothing counted
    assert store.event_counts("1") == {"created": 2}
