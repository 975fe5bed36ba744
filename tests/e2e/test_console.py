"""The web console in a real headless browser (Debian's chromium driven by Playwright)
against the real stack: start, watch live, logs, stop, roles, time travel, screenshots."""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright.async_api import Browser, Dialog, Locator, Page, async_playwright, expect

from tests.support import Stack

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "console"
CHROMIUM = os.environ.get("SHOAL_TEST_CHROMIUM", "/usr/bin/chromium")

DEMO = {"name": "console-demo", "params": {"greeting": "hello"}, "tasks": [
    {"name": "greet", "command": "echo 'says ${greeting}'\necho second line"},
    {"name": "wait", "command": "sleep 1", "depends_on": ["greet"]},
    {"name": "done", "command": "echo done", "depends_on": ["wait"]}]}
PARAMS = {"name": "console-params", "params": {"day": "$[yyyyMMdd-1]", "region": "eu"},
          "tasks": [{"name": "t", "command": "echo ${day} ${region}"}]}
LONG = {"name": "console-long", "tasks": [
    {"name": "sleeper", "command": "sleep 60"},
    {"name": "after", "command": "true", "depends_on": ["sleeper"]}]}


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no browser at {CHROMIUM}: `make test` installs Debian's chromium")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            await b.close()


async def signed_in(browser: Browser, stack: Stack, role: str,
                    hosts: set[str] | None = None) -> Page:
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    if hosts is not None:
        page.on("request", lambda r: hosts.add(urlparse(r.url).netloc or r.url.split(":")[0]))
    await page.goto(stack.api + "/")
    await page.get_by_label("API token").fill(stack.tokens[role])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#whoami")).to_have_text(f"signed in as {role}")
    return page


def node(page: Page, task: str) -> Locator:
    return page.locator(f'#dag g.node[data-task="{task}"]')


async def test_start_with_a_param_watch_it_turn_green_and_read_a_log(stack: Stack,
                                                                      browser: Browser):
    """Acceptance 1, and 4's "no request to any other host"."""
    await stack.apply(DEMO)
    hosts: set[str] = set()
    page = await signed_in(browser, stack, "operator", hosts)
    await page.goto(stack.api + "/#/workflows/console-demo")
    await page.get_by_label("greeting").fill("bonjour")
    await page.get_by_role("button", name="Run", exact=True).click()
    await expect(page).to_have_url(re.compile(r"/#/runs/[0-9a-f-]{36}$"))
    # Live: the graph turns green without a reload.
    for task in ("greet", "wait", "done"):
        await expect(node(page, task)).to_have_attribute("data-state", "succeeded",
                                                         timeout=45_000)
    await expect(page.locator("h1 .badge")).to_have_text("succeeded")
    await node(page, "greet").click()
    await expect(page.locator("#log")).to_contain_text("says bonjour")
    await expect(page.locator("#log")).to_contain_text("second line")
    await expect(page.locator("#events li").first).to_contain_text("WorkflowSubmitted")
    assert hosts == {urlparse(stack.api).netloc} | ({"data"} & hosts), hosts


async def test_stop_from_the_console_and_viewers_get_no_controls(stack: Stack,
                                                                 browser: Browser):
    """Acceptance 2, and the runs list updating live."""
    await stack.apply(LONG)
    page = await signed_in(browser, stack, "operator")
    await expect(page.locator("#runs")).to_be_visible()  # the runs list, following events
    r = await stack.request("POST", "/api/v1/workflows/console-long/runs", json={})
    iid = r.json()["instance_id"]
    row = page.locator(f'#runs tr[data-run="{iid}"]')
    await expect(row).to_be_visible(timeout=20_000)  # arrived without a reload
    await expect(row.locator(".badge")).to_have_text("running", timeout=20_000)
    await row.get_by_role("link").click()
    await expect(page).to_have_url(re.compile(f"/#/runs/{iid}$"))
    await expect(node(page, "sleeper")).to_have_attribute("data-state", "running")
    await page.get_by_role("button", name="stop").click()
    await expect(node(page, "sleeper")).to_have_attribute("data-state", "killed",
                                                          timeout=30_000)
    await expect(page.locator("h1 .badge")).to_have_text("stopped")
    # A stopped run offers what its state accepts: rerun and recover, no pause.
    await expect(page.locator("[data-action]")).to_have_count(2)
    await expect(page.get_by_role("button", name="recover")).to_be_visible()
    await expect(page.get_by_role("button", name="pause")).to_have_count(0)

    viewer = await signed_in(browser, stack, "viewer")
    await viewer.goto(stack.api + f"/#/runs/{iid}")
    await expect(viewer.locator("h1 .badge")).to_have_text("stopped")
    await expect(viewer.locator("[data-action]")).to_have_count(0)
    await expect(viewer.get_by_text("Read-only (viewer token).")).to_be_visible()


async def test_a_run_offers_only_what_its_state_allows_and_shows_the_params_used(
        stack: Stack, browser: Browser):
    """A succeeded run shows no pause/resume/stop; its params as written and the value the
    run used; a page that missed a change still shows the API's 409 reason."""
    await stack.apply(PARAMS)
    r = await stack.request("POST", "/api/v1/workflows/console-params/runs",
                            json={"schedule_time": "2026-03-01T01:00:00+08:00"})
    iid = r.json()["instance_id"]
    assert (await stack.wait_run(iid))["state"] == "succeeded"
    run = (await stack.request("GET", f"/api/v1/runs/{iid}")).json()
    assert run["allowed_actions"] == ["rerun"]
    assert (run["params"], run["resolved_params"]) == (
        PARAMS["params"], {"day": "20260228", "region": "eu"})
    page = await signed_in(browser, stack, "operator")
    await page.goto(stack.api + f"/#/runs/{iid}")
    await expect(page.locator("h1 .badge")).to_have_text("succeeded")
    await expect(page.locator("[data-action]")).to_have_count(1)
    await expect(page.get_by_role("button", name="rerun")).to_be_visible()
    for refused in ("pause", "resume", "stop", "recover"):
        await expect(page.get_by_role("button", name=refused)).to_have_count(0)
    await expect(page.locator('#params [data-param="day"]')).to_have_text(
        "day=$[yyyyMMdd-1] → 20260228")
    await expect(page.locator('#params [data-param="region"]')).to_have_text("region=eu")

    # A race: this page does not hear that another user stopped the run meanwhile.
    await stack.apply(LONG)
    r = await stack.request("POST", "/api/v1/workflows/console-long/runs", json={})
    iid = r.json()["instance_id"]
    await stack.wait_task_state(iid, "running")
    await page.route(re.compile(r"/stream\?"), lambda route: route.abort())
    await page.goto(stack.api + f"/#/runs/{iid}")
    await expect(page.get_by_role("button", name="resume")).to_have_count(0)
    stop = page.get_by_role("button", name="stop")
    await expect(stop).to_be_visible()
    r = await stack.request("POST", f"/api/v1/runs/{iid}/stop")
    assert r.status_code == 202, r.text
    await stack.wait_run(iid, ("stopped",), timeout=30)
    await stop.click()
    await expect(page.locator("#control-error")).to_have_text(
        "stop: run already finished (stopped)")


async def test_backfill_says_its_plan_and_asks_before_a_large_one(stack: Stack,
                                                                  browser: Browser):
    """The workflow's schedule fires every minute: a two-day backfill is 2,881 runs; the
    form says so before it is sent, and starting it asks for a confirmation."""
    await stack.apply(DEMO)
    r = await stack.request("POST", "/api/v1/schedules", json={
        "workflow": "console-demo", "cron": "0 * * * * ?", "enabled": False})
    assert r.status_code == 201, r.text
    page = await signed_in(browser, stack, "admin")
    await page.goto(stack.api + "/#/workflows/console-demo")
    await page.get_by_label("Start", exact=True).fill("2026-01-01")
    await page.get_by_label("End", exact=True).fill("2026-01-03")
    await expect(page.locator("#backfill-plan")).to_have_text(
        "Plan: 2,881 runs: the fires of the workflow's schedule '0 * * * * ?' (UTC), from "
        "2026-01-01 00:00:00 to 2026-01-03 00:00:00.")
    asked: list[str] = []

    async def answer(dialog: Dialog, accept: bool) -> None:
        asked.append(dialog.message)
        await (dialog.accept() if accept else dialog.dismiss())

    page.once("dialog", lambda d: answer(d, False))
    await page.get_by_role("button", name="Backfill", exact=True).click()
    await expect(page.get_by_text("Backfill not started.")).to_be_visible()
    assert len(asked) == 1 and "more than 1,000 runs" in asked[0], asked
    assert (await stack.request("GET", "/api/v1/backfills")).json() == []
    page.once("dialog", lambda d: answer(d, True))
    await page.get_by_role("button", name="Backfill", exact=True).click()
    await expect(page.locator("#backfills")).to_contain_text("0/2881 finished")
    assert len(asked) == 2
    assert [b["planned"] for b in (await stack.request("GET", "/api/v1/backfills")).json()
            ] == [2881]


async def test_time_travel_slider_and_screenshots(stack: Stack, browser: Browser):
    """Acceptance 3 and 4: the slider's first event shows nothing started, its last the
    final states; PNGs of the runs list, a run and the workflows page."""
    await stack.apply(DEMO)
    r = await stack.request("POST", "/api/v1/workflows/console-demo/runs", json={})
    iid = r.json()["instance_id"]
    assert (await stack.wait_run(iid))["state"] == "succeeded"
    hosts: set[str] = set()
    page = await signed_in(browser, stack, "admin", hosts)
    await page.goto(stack.api + f"/#/runs/{iid}")
    for task in ("greet", "wait", "done"):
        await expect(node(page, task)).to_have_attribute("data-state", "succeeded")
    slider = page.locator("#travel")
    last = int(await slider.get_attribute("max") or 0)
    assert last == len(await stack.events(iid))
    await slider.fill("1")
    await expect(page.locator("#travel-label")).to_contain_text("after event 1: WorkflowSubmitted")
    for task in ("greet", "wait", "done"):
        await expect(node(page, task)).to_have_attribute("data-state", "none")
    await expect(page.get_by_role("button", name="Fork from event 1")).to_be_visible()
    await slider.fill(str(last))
    for task in ("greet", "wait", "done"):
        await expect(node(page, task)).to_have_attribute("data-state", "succeeded")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shots = {"run-detail": (f"/#/runs/{iid}", "Run " + iid[:8]),
             "runs-list": ("/#/runs", iid[:8]),
             "workflows": ("/#/workflows", "console-demo")}
    for name, (path, text) in shots.items():
        await page.goto(stack.api + path)
        await expect(page.locator("main")).to_contain_text(text)
        await page.wait_for_timeout(400)  # let the graph and charts finish drawing
        png = ARTIFACTS / f"{name}.png"
        await page.screenshot(path=str(png), full_page=True)
        width, height, colours = png_facts(png.read_bytes())
        assert width >= 1000 and height >= 300, (name, width, height)
        assert colours > 50, f"{name}.png looks blank ({colours} distinct bytes)"
    assert hosts == {urlparse(stack.api).netloc} | ({"data"} & hosts), hosts


def png_facts(data: bytes) -> tuple[int, int, int]:
    """Width, height and how many distinct byte values the decoded pixel rows hold."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    pos, idat = 8, b""
    while pos < len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    return width, height, len(set(zlib.decompress(idat)))


async def test_tokens_page_shows_a_new_token_once_lists_and_revokes_it(stack: Stack,
                                                                      browser: Browser):
    """Tokens minted at run time, from the console; who started and stopped a run."""
    import hashlib

    import httpx

    await stack.apply(LONG)
    operator = await signed_in(browser, stack, "operator")
    await expect(operator.locator("#nav-tokens")).to_be_hidden()  # admins only
    page = await signed_in(browser, stack, "admin")
    await page.locator("#nav-tokens").click()
    await page.get_by_label("token name").fill("console-op")
    await page.get_by_label("role").select_option("operator")
    await page.get_by_role("button", name="Create token").click()
    value = page.locator("#token-value")
    await expect(value).to_have_text(re.compile(r"^shoal_[A-Za-z0-9_-]{43}$"))
    token = (await value.text_content() or "").strip()
    row = page.locator('#tokens tr[data-token="console-op"]')
    await expect(row.locator(".state")).to_have_text("active")
    assert token not in (await page.locator("#tokens").text_content() or "")
    # Shown once: back on the page later, the value is gone and no answer holds it.
    await page.goto(stack.api + "/#/runs")
    await page.goto(stack.api + "/#/tokens")
    await expect(row).to_be_visible()
    await expect(page.locator("#token-value")).to_have_count(0)

    # The token starts a run: the list and the run page say who started and who stopped it.
    async with httpx.AsyncClient(base_url=stack.api, timeout=30) as c:
        r = await c.post("/api/v1/workflows/console-long/runs", json={},
                         headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 202, r.text
        iid = r.json()["instance_id"]
        await stack.wait_task_state(iid, "running", task="sleeper")
        await page.goto(stack.api + "/#/runs")
        await expect(page.locator(f'#runs tr[data-run="{iid}"] .actor')).to_have_text(
            "console-op", timeout=20_000)
        assert (await stack.request("POST", f"/api/v1/runs/{iid}/stop")).status_code == 202
        await stack.wait_run(iid, states=("stopped",))
        admin = "admin-" + hashlib.sha256(stack.tokens["admin"].encode()).hexdigest()[:8]
        await page.goto(stack.api + f"/#/runs/{iid}")
        await expect(page.locator("#run-actors")).to_have_text(
            f"started by console-op · stopped by {admin}")

        # Revoked from the console: refused from the next request on.
        await page.goto(stack.api + "/#/tokens")
        await page.get_by_role("button", name="revoke console-op").click()
        await expect(row.locator(".state")).to_have_text("revoked")
        r = await c.get("/api/v1/runs", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401
