"""The web UI in a real browser (Debian's chromium, driven by Selenium) against
a real ``stepd serve`` and a real worker: list and filter runs, open one, watch
it change as a signal is sent from the page, cancel one; a reader's key sees
no buttons and the server refuses its actions anyway. Saves screenshots of the
main pages into docs/images/ (the README shows one).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stepd import Client, RunStatus
from tests.e2e import workflows as wf
from tests.e2e.harness import ROOT, Server, Stack
from tests.e2e.test_security import admin_key, stepd
from tests.e2e.test_signals import wait_for_status

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
#: Where the test saves its screenshots: docs/images (the README's pictures) only
#: when STEPD_UI_SCREENSHOTS=1 asks for new ones, so a test run leaves the tree clean.
SCREENSHOTS = ROOT / "docs" / "images"
SAVE_SCREENSHOTS = os.environ.get("STEPD_UI_SCREENSHOTS") == "1"
WAIT_SECONDS = 20

webdriver = pytest.importorskip("selenium.webdriver")
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):  # pragma: no cover
    pytest.skip(
        "the browser tests need Debian's chromium and chromium-driver (apt-get install "
        "chromium chromium-driver; .ci/run installs them)",
        allow_module_level=True,
    )

from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def until(browser: WebDriver, check: Callable[[WebDriver], Any], what: str) -> Any:
    """Wait until ``check`` gives something true (the page updates by itself, so
    an element found a moment ago may have been replaced: ``check`` runs again)."""
    wait = WebDriverWait(
        browser,
        WAIT_SECONDS,
        poll_frequency=0.1,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )
    return wait.until(check, message=what)


def click(browser: WebDriver, by: str, value: str) -> None:
    """Click the element, finding it again if the page replaced it meanwhile."""

    def clicked(b: WebDriver) -> bool:
        b.find_element(by, value).click()
        return True

    until(browser, clicked, f"click {value}")


def text_of(browser: WebDriver, css: str) -> str:
    try:
        return str(browser.find_element(By.CSS_SELECTOR, css).text)
    except NoSuchElementException:
        return ""


def shot(browser: WebDriver, name: str) -> None:
    if SAVE_SCREENSHOTS:
        browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
    else:
        assert browser.get_screenshot_as_png().startswith(b"\x89PNG")


@pytest.mark.sqlite_only
async def test_runs_list_filter_open_signal_and_cancel_in_a_browser(
    server: Server, worker: object, client: Client, tag: str, browser: WebDriver
) -> None:
    url = server.http_url
    done = await client.trigger(wf.square_workflow, 12)
    assert await done.result() == 144
    failed = await client.trigger(wf.fail, wf.Job(tag=tag))
    await wait_for_status(client, failed.run_id, RunStatus.FAILED)
    waiting = await client.trigger(wf.await_signal, wf.Awaiting(tag=tag, name="go"))
    await wait_for_status(client, waiting.run_id, RunStatus.SUSPENDED)

    # The list shows every run, newest first, and live.
    browser.get(f"{url}/#/runs")
    until(
        browser,
        lambda b: len(b.find_elements(By.CSS_SELECTOR, "#runs tr[data-run]")) == 3,
        "3 runs",
    )
    shot(browser, "ui-runs")
    # Filter by status: only the failed run.
    click(browser, By.CSS_SELECTOR, "select[name=status] option[value=FAILED]")
    click(browser, By.CSS_SELECTOR, "#run-filters button[type=submit]")
    until(
        browser,
        lambda b: (
            [
                r.get_attribute("data-run")
                for r in b.find_elements(By.CSS_SELECTOR, "#runs tr[data-run]")
            ]
            == [failed.run_id]
        ),
        "only the failed run",
    )
    # Filter by workflow.
    browser.get(f"{url}/#/runs?workflow=e2e.square")
    until(
        browser,
        lambda b: (
            [
                r.get_attribute("data-run")
                for r in b.find_elements(By.CSS_SELECTOR, "#runs tr[data-run]")
            ]
            == [done.run_id]
        ),
        "only the square run",
    )

    # Open the suspended run from the list; send the signal from the page and
    # watch the page change by itself.
    browser.get(f"{url}/#/runs?status=SUSPENDED")
    until(
        browser,
        lambda b: b.find_elements(By.CSS_SELECTOR, f"a[href='#/runs/{waiting.run_id}']"),
        "link",
    )
    click(browser, By.CSS_SELECTOR, f"a[href='#/runs/{waiting.run_id}']")
    until(browser, lambda b: text_of(b, "#run-status") == "suspended", "suspended")
    assert "e2e.await_signal" in browser.page_source
    click(browser, By.ID, "signal")
    browser.find_element(By.ID, "signal-name").send_keys("go")
    data = browser.find_element(By.ID, "signal-data")
    data.clear()
    data.send_keys('{"approved": true}')
    click(browser, By.ID, "confirm-yes")
    until(browser, lambda b: text_of(b, "#run-status") == "completed", "completed after the signal")
    until(browser, lambda b: '"approved": true' in text_of(b, "#run-result"), "the result")
    assert browser.find_elements(By.CSS_SELECTOR, "#history tr[data-event=signal_received]")
    assert browser.find_elements(By.CSS_SELECTOR, "#timeline .step")
    assert not browser.find_elements(By.ID, "cancel")  # a finished run offers no cancel
    shot(browser, "ui-run")
    assert await waiting.result() == {"approved": True}

    # Cancel a run from its page, after confirming.
    other = await client.trigger(wf.await_signal, wf.Awaiting(tag=tag, name="never"))
    await wait_for_status(client, other.run_id, RunStatus.SUSPENDED)
    browser.get(f"{url}/#/runs/{other.run_id}")
    until(browser, lambda b: text_of(b, "#run-status") == "suspended", "suspended")
    click(browser, By.ID, "cancel")
    browser.find_element(By.ID, "cancel-reason").send_keys("not needed")
    click(browser, By.ID, "confirm-yes")
    until(browser, lambda b: text_of(b, "#run-status") == "cancelled", "cancelled")
    info = await client.get_run(other.run_id)
    assert info.status is RunStatus.CANCELLED

    # Retry the failed run from its page: it runs again (e2e.fail fails again)
    # and its page says it was retried.
    browser.get(f"{url}/#/runs/{failed.run_id}")
    until(browser, lambda b: text_of(b, "#run-status").startswith("failed"), "failed")
    assert not browser.find_elements(By.ID, "cancel")
    click(browser, By.ID, "retry")
    click(browser, By.ID, "confirm-yes")
    until(
        browser,
        lambda b: b.find_elements(By.CSS_SELECTOR, "#history tr[data-event=retried]"),
        "the retry in the history",
    )
    until(browser, lambda b: "1 time" in b.page_source, "the retry count")
    await wait_for_status(client, failed.run_id, RunStatus.FAILED)
    assert (await client.get_run(failed.run_id)).dispatch_count >= 2

    # The schedules page lists schedules with their next occasions.
    browser.get(f"{url}/#/schedules")
    until(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#schedules tr"), "schedules table")
    shot(browser, "ui-schedules")


@pytest.mark.sqlite_only
async def test_a_readers_key_sees_no_buttons_and_cannot_act(
    stack: Stack, database: str, tag: str, browser: WebDriver
) -> None:
    admin = admin_key(database)
    made = stepd("keys", "create", "--role", "reader", "--name", "viewer", "--database", database)
    assert made.returncode == 0, made.stderr
    reader = made.stdout.strip()
    server = stack.start_server(database, args=["--auth", "keys"])
    stack.start_worker(server, args=["--api-key", admin])
    url = server.http_url
    async with Client(server.address, api_key=admin) as client:
        run = await client.trigger(wf.await_signal, wf.Awaiting(tag=tag, name="go"))
        await wait_for_status(client, run.run_id, RunStatus.SUSPENDED)

        # Without a key the page asks for one; a wrong key is refused.
        browser.get(f"{url}/#/runs/{run.run_id}")
        until(browser, lambda b: b.find_elements(By.ID, "api-key"), "the sign-in form")
        browser.find_element(By.ID, "api-key").send_keys("stepd_nope_nope")
        click(browser, By.ID, "sign-in")
        until(browser, lambda b: "API key" in text_of(b, ".signin .error"), "refused")
        key_box = browser.find_element(By.ID, "api-key")
        key_box.clear()
        key_box.send_keys(reader)
        click(browser, By.ID, "sign-in")
        until(browser, lambda b: text_of(b, "#run-status") == "suspended", "the run page")
        assert "viewer (reader)" in text_of(browser, "#who")
        assert not browser.find_elements(By.ID, "cancel")
        assert not browser.find_elements(By.ID, "signal")

        # The server refuses the action anyway, with the reader's cookie.
        cookie = browser.get_cookie("stepd_session")
        assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        async with aiohttp.ClientSession(cookies={"stepd_session": cookie["value"]}) as session:
            cancel = f"{url}/api/stepd.v1.WorkflowService/CancelRun"
            body = json.dumps({"run_id": run.run_id})
            async with session.post(cancel, data=body, headers={"Stepd-UI": "1"}) as answer:
                assert answer.status == 403
                assert "lacks the right 'cancel'" in (await answer.json())["error"]
            # Without the UI header a cookie-signed call is refused (another site's form).
            async with session.post(cancel, data=body) as answer:
                assert answer.status == 403
        assert (await client.get_run(run.run_id)).status is RunStatus.SUSPENDED
