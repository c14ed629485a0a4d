"""pytest fixtures for testing stepd workflows: ``stepd_workflows`` and ``stepd_env``.

pytest loads this plugin through stepd's ``pytest11`` entry point wherever stepd
is installed (``-p no:stepd`` turns it off). Define a ``stepd_workflows``
fixture returning the workflows to serve (in the test module or a conftest.py);
a test that takes ``stepd_env`` gets a started ``WorkflowEnvironment`` serving
them, closed after the test. ``stepd_env`` is an async fixture: it needs
pytest-asyncio (it is declared with ``pytest_asyncio.fixture`` when that is
installed, so it also works in pytest-asyncio's strict mode).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from stepd._definitions import Workflow
    from stepd.testing._environment import WorkflowEnvironment


def _async_fixture(fn: Callable[..., Any]) -> Any:
    try:
        import pytest_asyncio
    except ImportError:
        return pytest.fixture(fn)
    return pytest_asyncio.fixture(fn)


@pytest.fixture
def stepd_workflows() -> list[Workflow[Any, Any]]:
    """The workflows ``stepd_env`` serves: override this fixture to name yours."""
    pytest.fail(
        "stepd_env needs a fixture named stepd_workflows that returns the workflows to "
        "serve, e.g. in conftest.py:\n\n"
        "    @pytest.fixture\n"
        "    def stepd_workflows():\n"
        "        return [my_workflow]\n",
        pytrace=False,
    )


@_async_fixture
async def stepd_env(
    stepd_workflows: list[Workflow[Any, Any]],
) -> AsyncIterator[WorkflowEnvironment]:
    """A started ``stepd.testing.WorkflowEnvironment`` serving ``stepd_workflows``,
    with time skipping."""
    from stepd.testing import WorkflowEnvironment

    async with WorkflowEnvironment(stepd_workflows) as env:
        yield env
