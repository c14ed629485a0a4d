"""ListRuns page tokens."""

import pytest

from stepd.server.api import page_tokens
from stepd.server.domain import RunFilter, RunStatus
from stepd.server.engine.errors import InvalidArgument


def test_round_trip() -> None:
    f = RunFilter(workflow_name="orders", statuses=frozenset({RunStatus.FAILED}))
    assert page_tokens.decode(page_tokens.encode(42, f), f) == 42
    assert page_tokens.decode("", f) is None


def test_token_bound_to_filters() -> None:
    token = page_tokens.encode(42, RunFilter(workflow_name="orders"))
    with pytest.raises(InvalidArgument, match="different filters"):
        page_tokens.decode(token, RunFilter(workflow_name="billing"))


@pytest.mark.parametrize("token", ["garbage!", "djE6eDp5", "AAAA"])
def test_malformed_token(token: str) -> None:
    with pytest.raises(InvalidArgument, match="page_token"):
        page_tokens.decode(token, RunFilter())
