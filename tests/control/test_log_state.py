"""The log's state, record by record: bad records are skipped whatever they raise; names stay unique."""

from __future__ import annotations

import json
import logging
import zlib
from typing import Any

import pytest

from framework.control.log_state import LogState
from framework.control.revisions import Revision, code_key, encode, revision_key, sha256
from tests.control.zips import package, zip_of

A = "2f7c1e3a-6a53-4a5b-9a55-3b2f0c1d9e10"
B = "9b1d4c2e-0f3a-4e5b-8c6d-7e8f9a0b1c2d"
CODE = package("async def handle(payload, ctx):\n    return 1\n")


def spec(uuid: str, name: str) -> dict[str, Any]:
    return {"name": name, "uuid": uuid, "handler": "functions.m:handle", "state": "productive"}


def rev(uuid: str, number: int, name: str, action: str = "deploy") -> Revision:
    return Revision.from_json(
        {
            "uuid": uuid,
            "function": name,
            "revision": number,
            "action": action,
            "spec": spec(uuid, name),
            "code_sha256": sha256(CODE),
        }
    )


def apply(state: LogState, r: Revision, offset: int) -> bool:
    return state.apply(r.key, encode(r), f"at offset {offset}")


def served(state: LogState) -> dict[str, str]:
    """uuid -> the name it is served under."""
    return {uuid: r.spec["name"] for uuid, r in state.live().items()}


@pytest.mark.parametrize(
    "error",
    [
        zlib.error("Error -3 while decompressing data"),
        RuntimeError("File is encrypted, password required for extraction"),
        NotImplementedError("That compression method is not supported"),
        EOFError(),
        KeyError("functions/m.py"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_code_record_failing_in_any_way_skips_only_itself(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    """1. A state whose code sink raises `error` for one zip. 2. Apply, as one fetch would: that code
    record, a good code record, a revision using the good code, a revision using the bad one.
    Result: apply never raises; the bad code record and the revision needing it are skipped with
    warnings naming their offsets and why; the good code and its revision apply."""
    bad = b"the broken code"

    def sink(sha: str, data: bytes) -> None:
        if data == bad:
            raise error

    state = LogState(on_code=sink)
    with caplog.at_level(logging.WARNING, "faas.deployments"):
        assert state.apply(code_key(sha256(bad)), bad, "at offset 3") is False
        assert state.apply(code_key(sha256(CODE)), CODE, "at offset 4") is False
        assert apply(state, rev(A, 1, "alpha"), 5) is True
        broken = Revision(**{**rev(B, 1, "beta").to_json(), "code_sha256": sha256(bad)})
        assert apply(state, broken, 6) is False
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "at offset 3" in warnings[0] and type(error).__name__ in warnings[0]
    assert "at offset 6" in warnings[1] and "is missing" in warnings[1]
    assert state.codes == {sha256(CODE)} and served(state) == {A: "alpha"} and state.skipped == 2


def test_a_revision_taking_a_live_functions_name_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    """1. alpha (uuid A) is live. 2. A revision of another function B named alpha. 3. B as beta.
    4. B renamed to alpha while A is live. 5. A undeploys. 6. B renamed to alpha again.
    7. The records of 1 and 3 are read again (a lost log read anew). Result: 2 and 4 are refused with
    warnings naming both uuids and the offset, A keeps serving as alpha (and B as beta after 3); after A
    undeploys, 6 is accepted; reading again what was accepted warns about nothing."""
    state = LogState()
    state.apply(code_key(sha256(CODE)), CODE)
    first = rev(A, 1, "alpha")
    assert apply(state, first, 1) is True
    with caplog.at_level(logging.WARNING, "faas.deployments"):
        assert apply(state, rev(B, 1, "alpha"), 2) is False
        assert served(state) == {A: "alpha"} and state.kept(B) == []
        assert apply(state, rev(B, 1, "beta"), 3) is True
        assert apply(state, rev(B, 2, "alpha"), 4) is False
        assert served(state) == {A: "alpha", B: "beta"}
    refusals = [r.getMessage() for r in caplog.records]
    assert len(refusals) == 2, refusals
    for offset, message in zip((2, 4), refusals, strict=True):
        assert f"at offset {offset}" in message and A in message and B in message, message
        assert "'alpha'" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, "faas.deployments"):
        assert apply(state, rev(A, 2, "alpha", "undeploy"), 5) is True
        assert apply(state, rev(B, 2, "alpha"), 6) is True
        assert served(state) == {B: "alpha"}
        state.keys.clear()
        assert apply(state, first, 7) is False and apply(state, rev(B, 1, "beta"), 8) is False
    assert caplog.records == [] and served(state) == {B: "alpha"}
    assert {revision_key(A, 1), revision_key(B, 1)} <= state.keys


def test_order_is_the_order_revisions_were_applied_in() -> None:
    """1. Apply B:1, A:1, B:2, then a tombstone of B:1. Result: `order` ranks A:1 before B:2 (log order,
    not revision numbers) and forgets B:1."""
    state = LogState()
    state.apply(code_key(sha256(CODE)), CODE)
    for offset, r in enumerate([rev(B, 1, "beta"), rev(A, 1, "alpha"), rev(B, 2, "gamma")]):
        apply(state, r, offset)
    state.apply(revision_key(B, 1), None)
    assert sorted(state.order, key=state.order.__getitem__) == [revision_key(A, 1), revision_key(B, 2)]


def test_productive_since_is_the_first_deploy_after_the_last_undeploy() -> None:
    """Deploys 1 and 2, an undeploy 3, deploys 4 and 5 (each stamped with its number). Result: served since
    4's time; after a new undeploy, not served (None); a function whose revision 1 is kept and never
    undeployed: since 1; one whose older revisions were dropped and never undeployed: unknown (None)."""

    def at(r: Revision) -> Revision:
        return Revision.from_json({**r.to_json(), "deployed_at": f"2026-12-07T10:00:0{r.revision}+00:00"})

    state = LogState()
    state.apply(code_key(sha256(CODE)), CODE)
    actions = ["deploy", "deploy", "undeploy", "deploy", "deploy"]
    for n, action in enumerate(actions, start=1):
        apply(state, at(rev(A, n, "alpha", action)), n)
    assert state.productive_since(A) == "2026-12-07T10:00:04+00:00"
    apply(state, at(rev(A, 6, "alpha", "undeploy")), 6)
    assert state.productive_since(A) is None
    apply(state, at(rev(B, 1, "beta")), 7)
    apply(state, at(rev(B, 2, "beta")), 8)
    assert state.productive_since(B) == "2026-12-07T10:00:01+00:00"
    state.apply(revision_key(B, 1), None)  # dropped from the kept history
    assert state.productive_since(B) is None


def test_a_refused_record_leaves_the_state_as_it_was() -> None:
    """1. alpha live (A). 2. A revision of B named alpha. Result: nothing of B is kept: no key, no
    number taken (B's next revision is 1), no order; the live set is unchanged."""
    state = LogState()
    state.apply(code_key(sha256(CODE)), CODE)
    apply(state, rev(A, 1, "alpha"), 1)
    before = (json.dumps(sorted(state.keys)), dict(state.order), served(state))
    assert apply(state, rev(B, 1, "alpha"), 2) is False
    assert (json.dumps(sorted(state.keys)), dict(state.order), served(state)) == before
    assert state.next_number(B) == 1 and state.newest(B) is None


C = "5d2e7f10-3b4c-4d5e-9f60-718293a4b5c6"


@pytest.mark.parametrize(
    ("batch", "refused"),
    [
        ([(B, "alpha")], {B: A}),  # A holds alpha, outside the batch
        ([(A, "gamma"), (B, "alpha")], {}),  # A renames away first: B may take alpha
        ([(B, "alpha"), (A, "gamma")], {}),  # the same, whatever order it is given in
        ([(A, "beta"), (B, "alpha")], {A: B, B: A}),  # a swap: no order frees a name first
        ([(C, "gamma")], {}),  # a new function, a free name
        ([(C, "beta"), (B, "delta")], {}),  # B frees beta for the new C
    ],
    ids=["held", "rename-frees", "rename-frees-any-order", "swap", "new", "new-takes-freed"],
)
def test_refused_names_predicts_what_readers_refuse(
    batch: list[tuple[str, str]], refused: dict[str, str]
) -> None:
    """1. A is live as alpha and B as beta. 2. `refused_names(batch)`. 3. The batch's revisions applied in
    the order publishers write them (free names first, then names held when the batch starts).
    Result: the prediction names the holders expected, and exactly the predicted revisions are refused
    when read."""
    state = LogState()
    state.apply(code_key(sha256(CODE)), CODE)
    apply(state, rev(A, 1, "alpha"), 1)
    apply(state, rev(B, 1, "beta"), 2)
    assert state.refused_names(batch) == refused
    order = sorted(batch, key=lambda item: state.holder(item[1], item[0]) is not None)
    accepted = {uuid for uuid, name in order if apply(state, rev(uuid, state.next_number(uuid), name), 3)}
    assert accepted == {uuid for uuid, _ in batch} - set(refused)


def by_definition(state: LogState) -> dict[str, str]:
    """uuid -> name served, worked out from `revisions` alone: each function whose newest kept revision is
    a deploy."""
    out = {}
    for uuid, kept in state.revisions.items():
        if kept and kept[max(kept)].action == "deploy":
            out[uuid] = kept[max(kept)].spec["name"]
    return out


def test_what_is_served_and_who_holds_each_name_follow_every_kind_of_record() -> None:
    """1. alpha (A) deploys, then undeploys; B takes alpha. 2. A's undeploy is tombstoned: A's deploy is its
    newest again, and alpha has two holders. 3. B's only revision is tombstoned. 4. A's code record is
    tombstoned. 5. A renames itself beta, then C takes alpha. 6. The log is read again (keys cleared, the
    same records applied). Result: after every step `live()` is what the kept revisions say, and `holder`
    names a live function serving the name other than the one asked about (the first to hold it: B in
    step 2), or None."""
    state = LogState()
    state.apply(code_key(sha256(CODE)), CODE)
    live = state.live()  # a view: it follows the state

    def check(holders: dict[tuple[str, str], str | None]) -> None:
        assert served(state) == {u: r.spec["name"] for u, r in live.items()} == by_definition(state)
        for (name, besides), uuid in holders.items():
            found = state.holder(name, besides)
            assert (found.uuid if found else None) == uuid, (name, besides)
            assert state.claims(besides, name) is (uuid is not None)

    apply(state, rev(A, 1, "alpha"), 1)
    check({("alpha", B): A, ("alpha", A): None})
    apply(state, rev(A, 2, "alpha", "undeploy"), 2)
    assert apply(state, rev(B, 1, "alpha"), 3) is True
    check({("alpha", A): B, ("alpha", C): B})
    assert state.apply(revision_key(A, 2), None) is True
    check({("alpha", C): B, ("alpha", B): A, ("alpha", A): B})
    assert state.apply(revision_key(B, 1), None) is True
    check({("alpha", C): A, ("alpha", A): None})
    state.apply(code_key(sha256(CODE)), None)
    state.apply(code_key(sha256(CODE)), CODE)
    check({("alpha", C): A})
    apply(state, rev(A, 3, "beta"), 4)
    assert apply(state, rev(C, 1, "alpha"), 5) is True
    check({("alpha", A): C, ("beta", C): A, ("gamma", C): None})
    state.keys.clear()
    for offset, r in enumerate([rev(A, 1, "alpha"), rev(A, 3, "beta"), rev(C, 1, "alpha")]):
        assert apply(state, r, 6 + offset) is False
    check({("alpha", A): C, ("beta", C): A})
    assert state.refused_names([(B, "beta"), (B, "delta")]) == {B: A}


def test_code_this_nodes_disk_refuses_is_kept_so_numbering_stays_the_clusters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. A state whose code sink fails with ENOSPC (this node's disk is full) for a code record. 2. A
    revision using that code, numbered 2 after a revision 1. 3. The sink stores it when called again.
    Result: the code record and revision 2 are kept (an error is logged, nothing is skipped), so the next
    number is 3 as on every other node (skipping it had made this node publish a second revision 2 over
    the first); the zip is held in `unstored` until it is stored."""
    import errno

    full = package("# code while the disk is full\n")
    calls: list[bytes] = []

    def sink(sha: str, data: bytes) -> None:
        calls.append(data)
        if data == full:
            raise OSError(errno.ENOSPC, "No space left on device")

    state = LogState(on_code=sink)
    assert state.apply(code_key(sha256(CODE)), CODE, "at offset 1") is False
    assert apply(state, rev(A, 1, "alpha"), 2) is True
    with caplog.at_level(logging.ERROR, "faas.deployments"):
        assert state.apply(code_key(sha256(full)), full, "at offset 3") is False
    second = Revision(**{**rev(A, 2, "alpha").to_json(), "code_sha256": sha256(full)})
    assert apply(state, second, 4) is True
    assert state.skipped == 0 and state.newest(A) == second and state.next_number(A) == 3
    assert state.unstored == {sha256(full): full}
    assert any("No space left on device" in r.getMessage() for r in caplog.records), caplog.records
    state.apply(code_key(sha256(full)), None, "at offset 5")  # a tombstone: nothing to hold any more
    assert state.unstored == {}


def test_a_revision_whose_handler_is_not_in_its_code_is_refused() -> None:
    """1. A code record holding package `functions/`. 2. Hand-written deploy revisions using it whose
    handlers are `operator:is_not` (a standard module), `os:system` and `other.m:handle` (no such package in
    the code), then one whose handler is in it. Result: the first three are skipped, naming the handler and
    what the code holds (every node served `operator.is_not`, the revision's code unused); the last is
    served."""
    state = LogState()
    state.apply(code_key(sha256(CODE)), CODE, "at offset 1")
    for number, handler in enumerate(("operator:is_not", "os:system", "other.m:handle"), 1):
        forged = Revision(
            **{**rev(A, number, "alpha").to_json(), "spec": {**spec(A, "alpha"), "handler": handler}}
        )
        assert apply(state, forged, 1 + number) is False
    assert state.skipped == 3 and state.live() == {}
    assert apply(state, rev(A, 4, "alpha"), 5) is True and served(state) == {A: "alpha"}


def test_a_revision_with_empty_code_of_a_handler_outside_the_project_is_still_served() -> None:
    """A revision `faas deploy` wrote before it refused handlers outside the project: an empty code zip, a
    handler of an installed package. Result: served as before (only code that holds other packages refuses
    a handler it does not hold)."""
    empty = zip_of({})
    state = LogState()
    state.apply(code_key(sha256(empty)), empty, "at offset 1")
    legacy = {**spec(A, "alpha"), "handler": "installed_pkg.mod:handle"}
    old = Revision(**{**rev(A, 1, "alpha").to_json(), "spec": legacy, "code_sha256": sha256(empty)})
    assert apply(state, old, 2) is True and served(state) == {A: "alpha"}
