"""intake.route(): what a Docker event means for a container's keys (pure: no servers)."""

from __future__ import annotations

import signal

import pytest

from sidekick.docker_parse import signal_number
from sidekick.docker_source import DockerEvent
from sidekick.intake import Action, route

SIGTERM, SIGKILL, SIGHUP = int(signal.SIGTERM), int(signal.SIGKILL), int(signal.SIGHUP)
SIGWINCH, SIGQUIT = int(signal.SIGWINCH), int(signal.SIGQUIT)


def event(action: str, sent: str | None = None, detail: str = "") -> DockerEvent:
    """A container event as the reader hands it to the loop (`kill` carries its signal)."""
    attributes = {"name": "web", "image": "busybox"}
    if sent is not None:
        attributes["signal"] = sent
    return DockerEvent(action, detail, "c0ffee" * 10 + "abcd", "web", attributes)


class TestRouteGone:
    """die, stop, destroy and pause end what a container announces, whatever its stop signal."""

    @pytest.mark.parametrize("action", ["die", "stop", "destroy", "pause"])
    @pytest.mark.parametrize("stop_signal", [None, SIGTERM, SIGWINCH])
    def test_withdraw(self, action: str, stop_signal: int | None) -> None:
        """The event alone is enough: WITHDRAW, no look-up."""
        assert route(event(action), stop_signal) is Action.WITHDRAW


class TestRouteKill:
    """A kill withdraws when it is `docker stop`'s first step or a SIGKILL, else changes nothing."""

    @pytest.mark.parametrize("sent", ["15", "9", "SIGTERM", "SIGKILL", "TERM", "KILL"])
    @pytest.mark.parametrize("stop_signal", [None, SIGTERM, SIGWINCH, SIGQUIT])
    def test_term_and_kill_always_withdraw(self, sent: str, stop_signal: int | None) -> None:
        """SIGTERM and SIGKILL end any container: WITHDRAW, even with the stop signal unknown."""
        assert route(event("kill", sent), stop_signal) is Action.WITHDRAW

    @pytest.mark.parametrize(
        ("sent", "stop_signal"),
        [("28", SIGWINCH), ("SIGWINCH", SIGWINCH), ("3", SIGQUIT), ("SIGQUIT", SIGQUIT)],
    )
    def test_own_stop_signal_withdraws(self, sent: str, stop_signal: int) -> None:
        """The container's own stop signal (httpd's WINCH, nginx's QUIT) is `docker stop`:
        withdraw at once, before the graceful drain."""
        assert route(event("kill", sent), stop_signal) is Action.WITHDRAW

    @pytest.mark.parametrize(
        ("sent", "stop_signal"),
        [("1", SIGTERM), ("SIGHUP", SIGTERM), ("1", SIGWINCH), ("10", SIGQUIT), ("28", SIGTERM)],
    )
    def test_other_signal_changes_nothing(self, sent: str, stop_signal: int) -> None:
        """A reload (HUP, USR1) or a WINCH to a SIGTERM container: it goes on serving."""
        assert route(event("kill", sent), stop_signal) is Action.NOTHING

    @pytest.mark.parametrize("sent", ["28", "1", "3", "SIGUSR1"])
    def test_unknown_stop_signal_is_learnt(self, sent: str) -> None:
        """Another signal to a container whose stop signal is not known yet (found in a
        listing): LEARN_SIGNAL, i.e. inspect it, then decide."""
        assert route(event("kill", sent), None) is Action.LEARN_SIGNAL

    @pytest.mark.parametrize("sent", [None, "", "bogus"])
    @pytest.mark.parametrize("stop_signal", [None, SIGTERM, SIGWINCH])
    def test_unreadable_signal_withdraws(self, sent: str | None, stop_signal: int | None) -> None:
        """A kill whose signal cannot be read is taken as a stop: withdrawing is the safe side
        (the next look-up or reconcile announces it again if it still runs)."""
        assert route(event("kill", sent), stop_signal) is Action.WITHDRAW


class TestRouteOthers:
    """start is a START, the changes that need Docker's view are LOOK_UPs, the rest NOTHING."""

    @pytest.mark.parametrize("stop_signal", [None, SIGTERM])
    def test_start(self, stop_signal: int | None) -> None:
        """start: the look-ahead may know the container already, else look it up."""
        assert route(event("start"), stop_signal) is Action.START

    @pytest.mark.parametrize(
        ("action", "detail"),
        [
            ("health_status", "healthy"),
            ("health_status", "unhealthy"),
            ("restart", ""),
            ("unpause", ""),
        ],
    )
    def test_look_up(self, action: str, detail: str) -> None:
        """health_status, restart and unpause: ask Docker what it announces now."""
        assert route(event(action, detail=detail), None) is Action.LOOK_UP

    @pytest.mark.parametrize("action", ["create", "exec_start", "rename", "update", "oom"])
    def test_nothing(self, action: str) -> None:
        """Events that change no announcement on their own."""
        assert route(event(action), SIGTERM) is Action.NOTHING


class TestSignalNumber:
    """docker_parse.signal_number reads a signal as Docker writes it, or says it cannot."""

    @pytest.mark.parametrize(
        ("text", "number"),
        [
            ("15", SIGTERM),
            ("9", SIGKILL),
            ("28", SIGWINCH),
            ("SIGWINCH", SIGWINCH),
            ("WINCH", SIGWINCH),
            ("sigquit", SIGQUIT),
            (" SIGHUP ", SIGHUP),
            ("", None),
            (None, None),
            ("bogus", None),
            ("SIGBOGUS", None),
            ("-1", None),
        ],
    )
    def test_cases(self, text: str | None, number: int | None) -> None:
        """Numbers pass through; names with or without SIG map to their number."""
        assert signal_number(text) == number
