"""hive_actors: a durable trio actor runtime that runs many AI coding agents at once.

The generic actor runtime is re-exported here; the durable store lives in
``hive_actors.store`` and the Hive (Queen, Workers, Planner, Reviewer) in
``hive_actors.hive``.
"""

from .actors import (
    Actor,
    ActorError,
    ActorRef,
    ActorStats,
    ActorStopped,
    ActorSystem,
    AskTimeout,
    Bus,
    Fault,
    FaultInjector,
    InjectedCrash,
    MailboxFull,
    Missed,
    Published,
    Subscription,
    SupervisorGaveUp,
    SupervisorRef,
    SystemStats,
    Terminated,
    open_actor_system,
)

__version__ = "0.1.0"

__all__ = [
    "Actor",
    "ActorError",
    "ActorRef",
    "ActorStats",
    "ActorStopped",
    "ActorSystem",
    "AskTimeout",
    "Bus",
    "Fault",
    "FaultInjector",
    "InjectedCrash",
    "MailboxFull",
    "Missed",
    "Published",
    "Subscription",
    "SupervisorGaveUp",
    "SupervisorRef",
    "SystemStats",
    "Terminated",
    "open_actor_system",
]
