"""The runtime's named error hierarchy: every error it raises derives from ActorError."""

from __future__ import annotations


class ActorError(Exception):
    """Base class of every error raised by the actor runtime."""


class ActorStopped(ActorError):
    """The actor has stopped for good: the message was not (and will not be) handled.

    Raised by ``tell``/``ask`` on an actor that is gone, and in the askers whose
    messages were still waiting when it stopped.  Each such message counts as a dead
    letter in ``system.stats().dead_letters``.
    """


class AskTimeout(ActorError, TimeoutError):
    """``ask(..., timeout=...)`` got no reply in time.

    The message may still be handled later; its reply is then dropped.
    """


class MailboxFull(ActorError):
    """``tell_nowait`` found the actor's bounded mailbox full; nothing was sent."""


class SupervisorGaveUp(ActorError):
    """A supervisor saw more than ``max_restarts`` restarts within ``within`` seconds.

    When a top-level supervisor (or the system's root) gives up, every actor is stopped
    and this error leaves ``open_actor_system()`` inside an ExceptionGroup, as trio
    nurseries report errors.  ``__cause__`` is the last crash that tipped it over.
    """

    def __init__(self, supervisor: str, restarts: int, within: float) -> None:
        super().__init__(
            f"supervisor {supervisor!r} gave up: more than {restarts} restarts "
            f"within {within} s"
        )
        self.supervisor = supervisor
        self.restarts = restarts
        self.within = within
