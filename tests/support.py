"""Small helpers shared by several test modules."""
from __future__ import annotations

import pytest


def assert_raises_naming(case: str, call, error, words) -> str:
    """``call()`` raises ``error`` whose message contains every one of ``words``; returns the message."""
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, f"{case}: {word!r} not in {message!r}"
    return message


class RecordingLogger:
    """A Lightning-style logger that keeps what it is given (``logged``: ``[(step, metrics)]``)."""

    def __init__(self):
        self.logged = []

    def log_metrics(self, metrics, step):
        self.logged.append((step, dict(metrics)))

    def save(self):
        pass
