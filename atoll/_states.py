"""The sandbox state machine: every allowed transition, in one table.

Nothing else in Atoll compares states to decide what may happen; it asks ``next_state``.

    starting ──booted──▶ running ──pause──▶ paused ──resume──▶ unpausing ──resumed──▶ running
        │                  │  ▲                                    │
        │ failed           │  └──────────snapshotted──────┐        └─failed──▶ paused
        ▼                  ├──snapshot──▶ snapshotting ───┘
     stopped ◀──stopped── stopping ◀──stop── running;  stopped ──start──▶ starting
                           running ──delete──▶ deleting ──deleted──▶ deleted
    (running, paused and stopped all accept ``delete``; a state in transition answers 409)
    (at start-up, a sandbox whose processes are gone is ``lost``: stopped, its disk kept)
    (any state but deleted ──quarantine──▶ failed: a sandbox that could not be repaired, by
     start-up reconciliation or after a transition that timed out or failed and could not be
     undone. Its processes are removed and its disk kept for inspection; the record carries the
     reason (``state_reason``). It accepts ``delete``, and ``start``, which boots the template
     over the kept disk as for a stopped sandbox; nothing else.)

Every transition's work is bounded (``Settings.transition_timeout_s``): on expiry the sandbox
takes the ``failed`` event back to a resting state, with the reason recorded, so no state in
``TRANSIENT_STATES`` outlives its operation.
"""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    UNPAUSING = "unpausing"
    SNAPSHOTTING = "snapshotting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"  # quarantined: could not be repaired (see ``state_reason``)


class Event(enum.StrEnum):
    BOOTED = "booted"  # the runtime reports the init process started
    FAILED = "failed"  # a transition's work failed; fall back
    PAUSE = "pause"  # user pause, or timeout with auto_pause
    RESUME = "resume"  # any request reached a paused sandbox
    RESUMED = "resumed"
    SNAPSHOT = "snapshot"
    SNAPSHOTTED = "snapshotted"
    STOP = "stop"
    STOPPED = "stopped"
    START = "start"
    DELETE = "delete"  # user delete, or timeout without auto_pause
    DELETED = "deleted"
    LOST = "lost"  # start-up found its processes gone; the disk is intact
    QUARANTINE = "quarantine"  # could not be repaired: processes removed, disk kept, reason kept


TRANSITIONS: dict[tuple[State, Event], State] = {
    # boot: a new sandbox, or a stopped one started again
    (State.STARTING, Event.BOOTED): State.RUNNING,
    # a boot that fails keeps the disk; a brand-new sandbox is then deleted by its creator
    (State.STARTING, Event.FAILED): State.STOPPED,
    # pause keeps memory and disk; compute stops
    (State.RUNNING, Event.PAUSE): State.PAUSED,
    (State.PAUSED, Event.RESUME): State.UNPAUSING,
    (State.UNPAUSING, Event.RESUMED): State.RUNNING,
    (State.UNPAUSING, Event.FAILED): State.PAUSED,
    # a snapshot is a brief pause of a running sandbox
    (State.RUNNING, Event.SNAPSHOT): State.SNAPSHOTTING,
    (State.SNAPSHOTTING, Event.SNAPSHOTTED): State.RUNNING,
    (State.SNAPSHOTTING, Event.FAILED): State.RUNNING,
    (State.SNAPSHOTTING, Event.DELETE): State.DELETING,
    # stop keeps only the disk diff; start boots the template over it
    (State.RUNNING, Event.STOP): State.STOPPING,
    (State.STOPPING, Event.STOPPED): State.STOPPED,
    (State.STOPPING, Event.FAILED): State.STOPPED,
    (State.STOPPED, Event.START): State.STARTING,
    # delete from any resting state
    (State.RUNNING, Event.DELETE): State.DELETING,
    (State.PAUSED, Event.DELETE): State.DELETING,
    (State.STOPPED, Event.DELETE): State.DELETING,
    (State.DELETING, Event.DELETED): State.DELETED,
    (State.DELETING, Event.FAILED): State.DELETED,
    # start-up reconciliation: memory is gone; the disk is kept, and ``start`` boots it again
    (State.RUNNING, Event.LOST): State.STOPPED,
    (State.PAUSED, Event.LOST): State.STOPPED,
    (State.UNPAUSING, Event.LOST): State.STOPPED,
    (State.SNAPSHOTTING, Event.LOST): State.STOPPED,
    (State.STOPPING, Event.LOST): State.STOPPED,
    (State.STOPPED, Event.LOST): State.STOPPED,
    # quarantine: from anywhere a record can be; only delete (or start over the kept disk) follows
    **{(state, Event.QUARANTINE): State.FAILED for state in State if state != State.DELETED},
    (State.FAILED, Event.DELETE): State.DELETING,
    (State.FAILED, Event.START): State.STARTING,
}

# States in which the sandbox's processes exist on the host (the reconciler adopts these).
LIVE_STATES = frozenset({State.RUNNING, State.PAUSED, State.UNPAUSING, State.SNAPSHOTTING})
# States that are a transition under way: a concurrent request gets 409.
TRANSIENT_STATES = frozenset(
    {State.STARTING, State.UNPAUSING, State.SNAPSHOTTING, State.STOPPING, State.DELETING}
)
# States with no processes on the host, only (perhaps) a disk: not counted as active
RESTING_WITHOUT_PROCESSES = frozenset({State.STOPPED, State.FAILED})


class InvalidTransition(Exception):
    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"cannot {event.value} a sandbox that is {state.value}")
        self.state = state
        self.event = event


def next_state(state: State, event: Event) -> State:
    """The state after ``event``, or ``InvalidTransition`` when the table does not allow it."""
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise InvalidTransition(state, event) from None


def allows(state: State, event: Event) -> bool:
    return (state, event) in TRANSITIONS
