"""A supervised actor runtime on trio; knows nothing about tasks, SQLite or the Hive."""

from ._actor import Actor, ActorRef
from ._bus import Bus, Subscription
from ._errors import ActorError, ActorStopped, AskTimeout, MailboxFull, SupervisorGaveUp
from ._faults import Fault, FaultInjector, InjectedCrash
from ._messages import ActorStats, Missed, Published, SystemStats, Terminated
from ._supervisor import SupervisorRef
from ._system import ActorSystem, open_actor_system

__all__ = [
    "Actor",
    "ActorError",
    "ActorRef",
    "ActorStats",
    "ActorStopped",
    "ActorSystem",
    "AskTimeout",
    "Fault",
    "FaultInjector",
    "InjectedCrash",
    "Bus",
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
