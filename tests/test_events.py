"""Docker events as plain records: odd messages never break the reader."""

from __future__ import annotations

import pytest

from sidekick.docker_source import event_from_raw


class TestEventFromRaw:
    """Decoded /events messages to DockerEvent, tolerating whatever arrives."""

    def test_health_status(self) -> None:
        """ "health_status: healthy" splits into the action and its detail, with the labels."""
        event = event_from_raw(
            {
                "Type": "container",
                "Action": "health_status: healthy",
                "Actor": {"ID": "c1", "Attributes": {"name": "web", "sidekick.enable": "true"}},
                "timeNano": 1,
            }
        )
        assert event is not None
        assert (event.action, event.detail, event.container_id, event.name) == (
            "health_status",
            "healthy",
            "c1",
            "web",
        )
        assert event.attributes["sidekick.enable"] == "true"

    @pytest.mark.parametrize(
        "raw",
        [
            None,
            [],
            "start",
            {},
            {"Type": "network", "Action": "connect", "Actor": {"ID": "n1"}},
            {"Action": "start", "Actor": None},
            {"Action": "start", "Actor": "c1"},
            {"Action": "", "Actor": {"ID": "c1"}},
        ],
    )
    def test_not_a_container_event(self, raw: object) -> None:
        """Anything that is not a container event with an id and an action is None."""
        assert event_from_raw(raw) is None

    def test_odd_attributes(self) -> None:
        """Attributes that are not a mapping count as none."""
        event = event_from_raw({"Action": "kill", "Actor": {"ID": "c1", "Attributes": [1]}})
        assert event is not None and event.attributes == {}

    @pytest.mark.parametrize(
        ("time_nano", "at"),
        [(1_764_450_000_123_456_789, 1_764_450_000.123_456_789), (None, 0.0), ("soon", 0.0)],
    )
    def test_when_it_happened(self, time_nano: object, at: float) -> None:
        """dockerd's timeNano becomes Unix seconds (0.0 when missing or odd), for the lag."""
        raw = {"Action": "start", "Actor": {"ID": "c1"}, "timeNano": time_nano}
        event = event_from_raw(raw)
        assert event is not None and event.at == pytest.approx(at)
        actor = {"Attributes": {"container": "c1", "name": "net"}}
        connect = {"Type": "network", "Action": "connect", "Actor": actor, "timeNano": time_nano}
        network = event_from_raw(connect)
        assert network is not None and network.at == pytest.approx(at)
