"""The waits of suspended runs: suspend, fire a timer, find due timers.

Each function runs inside one write (or read) transaction on the caller's
connection. They implement two moves of the run state machine
(``stepd.server.engine.transitions``): SUSPEND (running -> suspended, under the
run's lease) and WAKE (suspended -> pending).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from sqlalchemy import (
    BindParameter,
    Connection,
    Insert,
    RowMapping,
    Update,
    bindparam,
    func,
    select,
    text,
    update,
)

from stepd.server.domain import (
    RUN_EXPIRY_KEY,
    DueTimer,
    HistoryType,
    HookOutcome,
    HookStatus,
    PendingWaitRow,
    PublishOutcome,
    RunRecord,
    RunStatus,
    SignalOutcome,
    SignalStatus,
    StepRow,
    SuspendOutcome,
    SuspendStatus,
    WaitKind,
    WaitRow,
    WaitSpec,
    WaitStatus,
)
from stepd.server.store import child_outcome, events, history, rows, signals
from stepd.server.store.dialects import insert_for, lock_event_names, lock_run
from stepd.server.store.schema import UNFINISHED, hooks, run_waits, runs, step_attempts, steps

_OPEN, _MET, _ABANDONED = WaitStatus.OPEN.value, WaitStatus.MET.value, WaitStatus.ABANDONED.value

# The statements of suspending, firing and waking, built once with bound
# parameters: building one per call (expressions, cache key) cost more than
# running it.
_RUN: BindParameter[str] = bindparam("p_run_id")
_KEYS: BindParameter[list[str]] = bindparam("p_keys", expanding=True)
_MINE = run_waits.c.run_id == _RUN
_ABANDON_OTHER_KEYS = (
    update(run_waits)
    .where(_MINE, run_waits.c.status == _OPEN, run_waits.c.wait_key.not_in(_KEYS))
    .values(status=_ABANDONED)
)
_REOPEN_KEYS = (
    update(run_waits)
    .where(_MINE, run_waits.c.wait_key.in_(_KEYS), run_waits.c.status == _ABANDONED)
    .values(status=_OPEN)
)
_MET_AMONG_KEYS = (
    select(func.count())
    .select_from(run_waits)
    .where(_MINE, run_waits.c.wait_key.in_(_KEYS), run_waits.c.status == _MET)
)
_OPEN_TIMERS = select(run_waits.c.wait_key, run_waits.c.fire_time).where(
    _MINE, run_waits.c.status == _OPEN, run_waits.c.kind == WaitKind.TIMER.value
)
_MEET = (
    update(run_waits)
    .where(_MINE, run_waits.c.wait_key == bindparam("p_key"), run_waits.c.status == _OPEN)
    .values(
        status=_MET,
        met_time=bindparam("p_met"),
        payload_json=bindparam("p_payload"),
        met_lease_id=select(runs.c.lease_id).where(runs.c.run_id == _RUN).scalar_subquery(),
    )
)
_OPEN_TIMES = select(run_waits.c.wait_key, run_waits.c.fire_time).where(
    _MINE, run_waits.c.status == _OPEN
)
_ABANDON_OPEN = (
    update(run_waits).where(_MINE, run_waits.c.status == _OPEN).values(status=_ABANDONED)
)
_ABANDON_OPEN_BUT = (
    update(run_waits)
    .where(_MINE, run_waits.c.status == _OPEN, run_waits.c.wait_key != bindparam("p_keep"))
    .values(status=_ABANDONED)
)
_WAKE = (
    update(runs)
    .where(runs.c.run_id == _RUN, runs.c.status == RunStatus.SUSPENDED.value)
    .values(status=RunStatus.PENDING.value, update_time=bindparam("p_now"))
    .returning(*runs.c)
)
# ordered_journal's reads: the whole journal, or what came after a lease.
_AFTER: BindParameter[int] = bindparam("p_after_lease")
_STEPS = select(steps).where(steps.c.run_id == _RUN).order_by(steps.c.sequence)
_STEPS_AFTER = (
    select(steps)
    .where(steps.c.run_id == _RUN, steps.c.lease_id > _AFTER)
    .order_by(steps.c.sequence)
)
_ATTEMPTS = (
    select(step_attempts).where(step_attempts.c.run_id == _RUN).order_by(step_attempts.c.sequence)
)
_ATTEMPTS_AFTER = (
    select(step_attempts)
    .where(step_attempts.c.run_id == _RUN, step_attempts.c.lease_id > _AFTER)
    .order_by(step_attempts.c.sequence)
)
_MET_WAITS = (
    select(run_waits).where(_MINE, run_waits.c.status == _MET).order_by(run_waits.c.sequence)
)
_MET_WAITS_AFTER = (
    select(run_waits)
    .where(_MINE, run_waits.c.status == _MET, run_waits.c.met_lease_id >= _AFTER)
    .order_by(run_waits.c.sequence)
)
# By the names of the extra columns a move out of RUNNING sets.
_LEAVE_RUNNING: dict[tuple[str, ...], Update] = {}
# By dialect name.
_INSERT_WAITS: dict[str, Insert] = {}


def _leave_running_statement(names: tuple[str, ...]) -> Update:
    stmt = _LEAVE_RUNNING.get(names)
    if stmt is None:
        stmt = _LEAVE_RUNNING[names] = (
            update(runs)
            .where(
                runs.c.run_id == _RUN,
                runs.c.status == RunStatus.RUNNING.value,
                runs.c.lease_id == bindparam("p_lease_id"),
            )
            .values(
                status=bindparam("p_status"),
                update_time=bindparam("p_now"),
                lease_owner=None,
                lease_expires_at=None,
                **{name: bindparam(f"v_{name}") for name in names},
            )
            .returning(*runs.c)
        )
    return stmt


def _insert_waits(conn: Connection) -> Insert:
    name = conn.dialect.name
    stmt = _INSERT_WAITS.get(name)
    if stmt is None:
        stmt = _INSERT_WAITS[name] = insert_for(name)(run_waits).on_conflict_do_nothing()
    return stmt


def leave_running(
    conn: Connection,
    run_id: str,
    lease_id: int,
    status: RunStatus,
    now: int,
    **values: object,
) -> RowMapping | None:
    """Move a RUNNING run under ``lease_id`` to ``status``, giving up the lease (and
    setting ``values``); its new row, or None when the lease is gone."""
    stmt = _leave_running_statement(tuple(sorted(values)))
    params = {f"v_{name}": value for name, value in values.items()}
    params.update(p_run_id=run_id, p_lease_id=lease_id, p_status=status.value, p_now=now)
    return conn.execute(stmt, params).mappings().first()


def suspend(
    conn: Connection, run_id: str, lease_id: int, waits: Sequence[WaitSpec], now: int
) -> SuspendOutcome:
    """Suspend a RUNNING run under ``lease_id`` until one of ``waits`` is met.

    A wait key seen before keeps its first fire_time (a replayed sleep keeps
    its time). Open waits left out of this set are abandoned. When one of
    the waits was met already, the run goes straight back to PENDING (WOKEN).
    """
    lock_event_names(conn, [w.target for w in waits if w.kind is WaitKind.EVENT and w.target])
    row = leave_running(conn, run_id, lease_id, RunStatus.SUSPENDED, now)
    if row is None:
        return SuspendOutcome(SuspendStatus.LEASE_LOST)
    keys = [w.wait_key for w in waits]
    mine = (run_waits.c.run_id == run_id,)
    of_keys = {"p_run_id": run_id, "p_keys": keys}
    conn.execute(_ABANDON_OTHER_KEYS, of_keys)
    inserted = conn.execute(
        _insert_waits(conn),
        [
            {
                "run_id": run_id,
                "wait_key": w.wait_key,
                "kind": w.kind.value,
                "status": _OPEN,
                "fire_time": w.fire_time,
                "target": w.target,
                "match_json": w.match_json,
                "since_time": w.since_time,
                "create_time": now,
                "timed_out": 0,
            }
            for w in waits
        ],
    ).rowcount
    history.add(conn, run_id, HistoryType.SUSPENDED, now, detail=", ".join(keys))
    # Every key new (the usual first suspension at a wait): none of them was
    # abandoned or met before. Otherwise (a replay, a driver that does not
    # count rows) look.
    fresh = inserted == len(waits)
    if not fresh:
        conn.execute(_REOPEN_KEYS, of_keys)
        if conn.execute(_MET_AMONG_KEYS, of_keys).scalar():
            _abandon_others(conn, run_id, None)
            woken = _wake(conn, run_id, now)
            return SuspendOutcome(SuspendStatus.WOKEN, woken)
    for wait in waits:
        if wait.kind is WaitKind.SIGNAL and wait.target is not None:
            signal = signals.oldest_unconsumed(conn, run_id, wait.target)
            if signal is not None:
                signals.consume(conn, signal.sequence, wait.wait_key)
                woken = meet(conn, run_id, wait.wait_key, now, signal.payload_json)
                return SuspendOutcome(SuspendStatus.WOKEN, woken)
        elif wait.kind is WaitKind.HOOK:
            pending = conn.execute(
                select(hooks.c.token_hash, hooks.c.payload_json, hooks.c.actor).where(
                    hooks.c.run_id == run_id,
                    hooks.c.wait_key == wait.wait_key,
                    hooks.c.status == "pending",
                )
            ).first()
            if pending is not None:
                conn.execute(
                    update(hooks)
                    .where(hooks.c.token_hash == pending.token_hash)
                    .values(status="delivered")
                )
                woken = meet(conn, run_id, wait.wait_key, now, pending.payload_json, pending.actor)
                return SuspendOutcome(SuspendStatus.WOKEN, woken)
        elif wait.kind is WaitKind.CHILD and wait.target is not None:
            outcome = child_outcome.finished_outcome(conn, wait.target)
            if outcome is not None:  # the child ended before the parent waited
                woken = meet(conn, run_id, wait.wait_key, now, outcome)
                return SuspendOutcome(SuspendStatus.WOKEN, woken)
        elif wait.kind is WaitKind.EVENT and wait.target is not None:
            # An event published since the wait began (perhaps while the run was
            # still running) is not missed: the stored (first) since_time counts.
            stored = conn.execute(
                select(run_waits.c.since_time, run_waits.c.match_json).where(
                    *mine, run_waits.c.wait_key == wait.wait_key
                )
            ).one()
            event = events.first_match(conn, wait.target, stored.since_time or 0, stored.match_json)
            if event is not None:
                woken = meet(conn, run_id, wait.wait_key, now, event.payload_json, event.actor)
                return SuspendOutcome(SuspendStatus.WOKEN, woken)
    if fresh:  # the open timers are this suspension's, as given
        timers = [
            DueTimer(run_id, w.wait_key, w.fire_time)
            for w in waits
            if w.kind is WaitKind.TIMER and w.fire_time is not None
        ]
    else:
        timers = [
            DueTimer(run_id, t.wait_key, t.fire_time)
            for t in conn.execute(_OPEN_TIMERS, {"p_run_id": run_id})
        ]
    return SuspendOutcome(SuspendStatus.SUSPENDED, rows.run_from_row(row), timers)


def fire_timer(conn: Connection, run_id: str, wait_key: str, now: int) -> RunRecord | None:
    """Mark an open timer met and wake its run; return the run when it woke.

    A timer of a run that is not suspended (running, cancelled) is still
    marked met: a running run sees it in its journal next time.
    """
    lock_run(conn, run_id)
    return meet(conn, run_id, wait_key, now, None)


def fire_timer_early(
    conn: Connection, run_id: str, wait_key: str, now: int
) -> tuple[bool, RunRecord | None]:
    """Meet an open timer before its time, as met at its fire time, when it is its
    run's only open wait (nothing could still end the wait before it): (whether
    it was met, the run when that woke it)."""
    lock_run(conn, run_id)
    open_waits = conn.execute(_OPEN_TIMES, {"p_run_id": run_id}).all()
    if len(open_waits) != 1 or open_waits[0].wait_key != wait_key:
        return False, None
    fire_time = open_waits[0].fire_time
    if fire_time is None:
        return False, None
    woken = meet(conn, run_id, wait_key, now, None, met_time=max(fire_time, now))
    return True, woken


def meet(
    conn: Connection,
    run_id: str,
    wait_key: str,
    now: int,
    payload_json: str | None,
    actor: str | None = None,
    *,
    met_time: int | None = None,
) -> RunRecord | None:
    """Mark an open wait met (with what it delivered), abandon the run's other
    open waits (first of wins), and wake the run if it is suspended. The wait
    is met ``now`` unless ``met_time`` says when (a timer met early: its time).

    Returns the woken run; None when the wait was not open or the run was
    not suspended.
    """
    params = {
        "p_run_id": run_id,
        "p_key": wait_key,
        "p_met": now if met_time is None else met_time,
        "p_payload": payload_json,
    }
    met = conn.execute(_MEET, params).rowcount
    if not met:
        return None
    _abandon_others(conn, run_id, wait_key)
    history.add(
        conn,
        run_id,
        HistoryType.WAIT_MET,
        now,
        key=wait_key,
        actor=actor or None,
        payload_json=payload_json,
    )
    return _wake(conn, run_id, now)


def send_signal(
    conn: Connection,
    run_id: str,
    name: str,
    payload_json: str,
    request_id: str | None,
    now: int,
    actor: str = "",
) -> SignalOutcome:
    """Store a signal for an unfinished run and hand it to the run's oldest open
    wait for that name, if there is one (which wakes the run)."""
    status = conn.execute(
        select(runs.c.status).where(runs.c.run_id == run_id).with_for_update()  # lock_run
    ).scalar()
    if status is None:
        return SignalOutcome(SignalStatus.UNKNOWN_RUN)
    run_status = RunStatus(status)
    # A retry of a stored signal gets the first answer, even once the run ended.
    if request_id is not None and signals.seen(conn, run_id, request_id):
        return SignalOutcome(SignalStatus.DUPLICATE, run_status=run_status)
    if run_status.is_terminal:
        return SignalOutcome(SignalStatus.FINISHED_RUN, run_status=run_status)
    sequence = signals.insert(conn, run_id, name, payload_json, request_id, now)
    if sequence is None:
        return SignalOutcome(SignalStatus.DUPLICATE, run_status=run_status)
    history.add(
        conn,
        run_id,
        HistoryType.SIGNAL_RECEIVED,
        now,
        name=name,
        payload_json=payload_json,
        actor=actor or None,
    )
    wait_key = open_signal_wait(conn, run_id, name)
    if wait_key is None:
        return SignalOutcome(SignalStatus.BUFFERED, run_status=run_status)
    signals.consume(conn, sequence, wait_key)
    woken = meet(conn, run_id, wait_key, now, payload_json)
    return SignalOutcome(SignalStatus.DELIVERED, woken=woken, run_status=run_status)


def execute_hook(
    conn: Connection,
    run_id: str,
    wait_key: str,
    token_hash: str,
    payload_json: str,
    now: int,
    actor: str = "",
) -> HookOutcome:
    """Execute a hook once: deliver its payload to the run waiting on it, or
    keep it until the run waits; refuse a second execution and a hook whose
    run no longer waits for it."""
    status = conn.execute(
        select(runs.c.status).where(runs.c.run_id == run_id).with_for_update()  # lock_run
    ).scalar()
    if status is None:
        return HookOutcome(HookStatus.UNKNOWN_RUN)
    seen = conn.execute(select(hooks.c.status).where(hooks.c.token_hash == token_hash)).first()
    if seen is not None:
        return HookOutcome(HookStatus.ALREADY_EXECUTED)
    if RunStatus(status).is_terminal:
        return HookOutcome(HookStatus.EXPIRED)
    wait = conn.execute(
        select(run_waits.c.status).where(
            run_waits.c.run_id == run_id, run_waits.c.wait_key == wait_key
        )
    ).first()
    if wait is not None and wait.status == _MET:
        return HookOutcome(HookStatus.ALREADY_EXECUTED)
    if wait is not None and wait.status == _ABANDONED:
        return HookOutcome(HookStatus.EXPIRED)
    delivered = wait is not None  # open: the run waits on it now
    conn.execute(
        hooks.insert().values(
            token_hash=token_hash,
            run_id=run_id,
            wait_key=wait_key,
            payload_json=payload_json,
            status="delivered" if delivered else "pending",
            execute_time=now,
            actor=actor or None,
        )
    )
    if not delivered:
        return HookOutcome(HookStatus.BUFFERED)
    return HookOutcome(HookStatus.DELIVERED, meet(conn, run_id, wait_key, now, payload_json, actor))


def publish_event(
    conn: Connection, event_id: str, name: str, payload_json: str, now: int, actor: str = ""
) -> PublishOutcome:
    """Store an event and meet every open wait for it whose match fits and that
    began at or before now; a repeated event_id does nothing."""
    lock_event_names(conn, [name])
    if not events.insert(conn, event_id, name, payload_json, now, actor):
        return PublishOutcome(already_published=True)
    waiting = conn.execute(
        select(
            run_waits.c.run_id,
            run_waits.c.wait_key,
            run_waits.c.match_json,
            run_waits.c.since_time,
        )
        .where(
            run_waits.c.kind == WaitKind.EVENT.value,
            run_waits.c.target == name,
            run_waits.c.status == _OPEN,
        )
        .order_by(run_waits.c.sequence)
    ).all()
    fits = [
        w
        for w in waiting
        if (w.since_time or 0) <= now and events.matches(w.match_json, payload_json)
    ]
    for run_id in sorted({w.run_id for w in fits}):  # one lock order between publishers
        lock_run(conn, run_id)
    woken: list[RunRecord] = []
    for wait in fits:
        run = meet(conn, wait.run_id, wait.wait_key, now, payload_json, actor)
        if run is not None:
            woken.append(run)
    return PublishOutcome(already_published=False, woken=woken)


def open_signal_wait(conn: Connection, run_id: str, name: str) -> str | None:
    """The key of the run's oldest open wait for a signal of ``name``, if any."""
    row = conn.execute(
        select(run_waits.c.wait_key)
        .where(
            run_waits.c.run_id == run_id,
            run_waits.c.status == _OPEN,
            run_waits.c.kind == WaitKind.SIGNAL.value,
            run_waits.c.target == name,
        )
        .order_by(run_waits.c.sequence)
        .limit(1)
    ).first()
    return None if row is None else str(row.wait_key)


def _abandon_others(conn: Connection, run_id: str, keep: str | None) -> None:
    if keep is None:
        conn.execute(_ABANDON_OPEN, {"p_run_id": run_id})
    else:
        conn.execute(_ABANDON_OPEN_BUT, {"p_run_id": run_id, "p_keep": keep})


def due_timers(conn: Connection, until: int, limit: int) -> list[DueTimer]:
    """Open timers firing at or before ``until``, soonest first."""
    stmt = (
        select(run_waits.c.run_id, run_waits.c.wait_key, run_waits.c.fire_time)
        .where(
            run_waits.c.status == _OPEN,
            run_waits.c.fire_time <= until,
            run_waits.c.kind == WaitKind.TIMER.value,
        )
        .order_by(run_waits.c.fire_time)
        .limit(limit)
    )
    timers = [DueTimer(r.run_id, r.wait_key, r.fire_time) for r in conn.execute(stmt)]
    expiring = (
        select(runs.c.run_id, runs.c.expire_time)
        .where(runs.c.expire_time <= until, text(UNFINISHED))
        .order_by(runs.c.expire_time)
        .limit(limit)
    )
    timers.extend(DueTimer(r.run_id, RUN_EXPIRY_KEY, r.expire_time) for r in conn.execute(expiring))
    return timers


def ordered_journal(
    conn: Connection, run_id: str, after_lease: int = 0, known: int = 0
) -> tuple[list[StepRow], list[WaitRow]]:
    """A run's recorded steps and met waits, each numbered by its place in the
    one journal order: by lease, steps of a lease before the wait met after it.

    With ``after_lease``, only the entries past that lease's own steps (the
    waits met after it suspended, and anything of a later lease), numbered
    after the ``known`` entries before them: what a worker that suspended the
    run under ``after_lease`` has not seen. The statements then read only
    those rows (by lease), not the whole journal.
    """
    params = {"p_run_id": run_id, "p_after_lease": after_lease}
    step_query, attempt_query, wait_query = (
        (_STEPS_AFTER, _ATTEMPTS_AFTER, _MET_WAITS_AFTER)
        if after_lease
        else (_STEPS, _ATTEMPTS, _MET_WAITS)
    )
    step_rows = conn.execute(step_query, params).mappings()
    keyed: list[tuple[tuple[int, int, int, int], StepRow | WaitRow]] = [
        ((row["lease_id"] or 0, 0, 0, row["sequence"]), rows.step_from_row(row))
        for row in step_rows
    ]
    attempt_rows = conn.execute(attempt_query, params).mappings()
    keyed.extend(
        ((row["lease_id"] or 0, 0, row["record_time"], row["sequence"]), rows.attempt_from_row(row))
        for row in attempt_rows
    )
    for row in conn.execute(wait_query, params).mappings():
        wait = WaitRow(
            wait_key=row["wait_key"],
            met_time=row["met_time"],
            payload_json=row["payload_json"],
            timed_out=bool(row["timed_out"]),
        )
        keyed.append(((row["met_lease_id"] or 0, 1, row["met_time"], row["sequence"]), wait))
    keyed.sort(key=lambda item: item[0])
    ordered_steps: list[StepRow] = []
    ordered_waits: list[WaitRow] = []
    for position, (_, entry) in enumerate(keyed, start=known + 1):
        if isinstance(entry, StepRow):
            ordered_steps.append(replace(entry, sequence=position))
        else:
            ordered_waits.append(replace(entry, sequence=position))
    return ordered_steps, ordered_waits


def abandon_open(conn: Connection, run_id: str) -> int:
    """Abandon every open wait of a run (it finished); return how many."""
    return int(conn.execute(_ABANDON_OPEN, {"p_run_id": run_id}).rowcount)


def _wake(conn: Connection, run_id: str, now: int) -> RunRecord | None:
    row = conn.execute(_WAKE, {"p_run_id": run_id, "p_now": now}).mappings().first()
    return rows.run_from_row(row) if row is not None else None


def pending(conn: Connection, run_id: str) -> list[PendingWaitRow]:
    """The open waits of a run, in the order they were registered."""
    stmt = (
        select(
            run_waits.c.wait_key,
            run_waits.c.kind,
            run_waits.c.create_time,
            run_waits.c.fire_time,
            run_waits.c.target,
            run_waits.c.match_json,
        )
        .where(run_waits.c.run_id == run_id, run_waits.c.status == _OPEN)
        .order_by(run_waits.c.sequence)
    )
    return [
        PendingWaitRow(
            wait_key=row.wait_key,
            kind=WaitKind(row.kind),
            create_time=row.create_time,
            fire_time=row.fire_time,
            target=row.target,
            match_json=row.match_json,
        )
        for row in conn.execute(stmt)
    ]
