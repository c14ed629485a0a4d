"""Event payloads against a wait's match: JSON equality, field by field."""

import pytest

from stepd.server.store.events import matches


@pytest.mark.parametrize(
    ("match", "payload", "expected"),
    [
        (None, '{"a": 1}', True),
        ("{}", "[1]", True),
        ('{"order": 7}', '{"order": 7, "x": 1}', True),
        ('{"order": 7}', '{"order": 8}', False),
        ('{"order": 7}', '{"other": 7}', False),
        ('{"order": 7}', "[7]", False),
        ('{"n": 1}', '{"n": true}', False),
        ('{"n": false}', '{"n": 0}', False),
        ('{"n": 1}', '{"n": 1.0}', True),
        ('{"tags": ["a", "b"]}', '{"tags": ["a", "b"]}', True),
        ('{"tags": [1]}', '{"tags": [true]}', False),
        ('{"o": {"k": null}}', '{"o": {"k": null}}', True),
        ('{"o": {"k": 1}}', '{"o": {"k": 1, "j": 2}}', False),
    ],
)
def test_matches(match: str | None, payload: str, expected: bool) -> None:
    assert matches(match, payload) is expected
