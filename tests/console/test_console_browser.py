"""The web console in a real browser (headless Chromium driven by Playwright) against
``agoramesh up --http-port 0``: what a person sees, on a desktop and on a phone.

Debian's ``chromium`` is used (never Playwright's own browsers). Without it or
Playwright the test is skipped, saying which is missing; with
``AGORAMESH_REQUIRE_TOOLS=1`` (as CI runs) it fails instead. Screenshots of
every view at 1280x800 and 390x844 go to ``$AGORAMESH_ARTIFACTS`` (default
``build/artifacts/console/`` in the repository), printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agoramesh.nodes.capability import Capability
from agoramesh.testing import NodeProcess, UpProcess
from agoramesh.testing.plugin import AgentFactory

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOKEN = "browser-test-token-0123456789"
#: A name and a card that would run script if the console ever took them as markup.
EVIL = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
VIEWS = ("topology", "agents", "auctions", "tasks", "activity")
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}


def _need(what: str) -> None:
    if os.environ.get("AGORAMESH_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{what} (AGORAMESH_REQUIRE_TOOLS=1)")
    pytest.skip(what)


@pytest.fixture
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        _need("no chromium on PATH (Debian: apt-get install chromium)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        _need("playwright is not installed (pip install -e '.[dev]')")
    return path


@pytest.fixture
def up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[UpProcess]:
    monkeypatch.setenv("AGORAMESH_API_TOKEN", TOKEN)  # not on the command line
    process = UpProcess(tmp_path / "mesh", "--http-port", "0")
    try:
        yield process
        process.stop_cleanly()
    finally:
        process.reap()


@pytest_asyncio.fixture
async def browser(chromium: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        launched = await driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


async def test_the_console_shows_the_mesh_live_and_safely(
        up: UpProcess, browser: Any, agent_factory: AgentFactory, tmp_path: Path,
        artifacts: Path) -> None:
    assert up.http is not None
    victim = NodeProcess(tmp_path / "victim", "--type", "offline", "--name", "victim",
                         "--capability", "echo", "--connect", up.url, "--heartbeat", "0.3")
    try:
        evil = await agent_factory(up.url, EVIL, [
            Capability(name="echo", description=EVIL,
                       input_schema={"type": "object", "properties": {"text": {}}})],
            metadata={"note": EVIL})
        await _browse(up, browser, victim, evil.agent_id, artifacts)
    finally:
        victim.reap()


async def _browse(up: UpProcess, browser: Any, victim: NodeProcess, evil_id: str,
                  artifacts: Path) -> None:
    http = up.http
    assert http is not None
    problems: list[str] = []
    width, height = SIZES["desktop"]
    context = await browser.new_context(viewport={"width": width, "height": height})
    page = await context.new_page()
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("dialog", lambda dialog: problems.append(f"dialog: {dialog.message}"))

    # The token once in the address bar; then a cookie, and the token gone from the URL.
    await page.goto(f"{http}/?token={TOKEN}")
    assert page.url == f"{http}/"
    cookie = next(c for c in await context.cookies() if c["name"] == "agoramesh_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]
    await page.wait_for_selector("body[data-ready=true]")

    # The topology: 3 seeds, routed, with the agents on them.
    seeds = page.locator("#graph .server-node.seed")
    await seeds.nth(2).wait_for()
    assert await seeds.count() == 3
    assert await page.locator("#servers li[data-role=seed]").count() == 3

    # From the keyboard: a view is a link away, and every field has its label.
    await page.focus("nav a[data-view=agents]")
    await page.keyboard.press("Enter")
    await page.locator("section#agents").wait_for()
    assert await page.locator("section#topology").is_hidden()
    assert await page.evaluate("""[...document.querySelectorAll('input, select, textarea')]
        .every((field) => field.labels.length > 0)""")

    # Every agent, the one with markup in its name shown as text.
    await page.click("nav a[data-view=agents]")
    names = {"coder", "runner", "analyst", "pro", "con", "victim", EVIL}
    for name in names:
        await page.locator("#agents-table tbody th", has_text=name).first.wait_for()
    listed = await page.locator("#agents-table tbody th").all_inner_texts()
    assert set(listed) == names
    await page.locator(f"#agents-table tr[data-id='{evil_id}'] button").click()
    detail = page.locator("#agent-detail")
    await detail.get_by_text(EVIL).first.wait_for()  # the card's metadata and description
    assert await detail.locator("dd", has_text=EVIL).count() == 1
    assert await page.locator("img[src=x], #main script").count() == 0
    assert await page.evaluate("window.pwned") is None

    # A task from the form built from the capability's input schema, completed.
    await page.click("nav a[data-view=tasks]")
    await page.select_option("#task-capability", "echo")
    await page.fill("#task-fields [data-name=text]", "from the browser")
    assert await page.evaluate("""[...document.querySelectorAll('#task-form input,'
        + ' #task-form select, #task-form textarea')].every((field) => field.labels.length)""")
    await page.click("#task-form button[type=submit]")
    done = page.locator("#submitted-table tbody tr[data-state=completed]")
    await done.wait_for()
    task_id = await done.get_attribute("data-task-id")
    assert "from the browser" in await done.inner_text()
    await page.fill("#task-fields [data-name=text]", "kept in the job store")
    await page.check("#task-durable")  # queued in JetStream, then its stored result
    await page.click("#task-form button[type=submit]")
    await page.locator("#submitted-table tbody tr[data-state=completed]",
                       has_text="kept in the job store").wait_for(timeout=15_000)
    await page.uncheck("#task-durable")

    # Its auction: every bid (analyst, victim, the evil agent all offer echo), the winner.
    await page.click("nav a[data-view=auctions]")
    item = page.locator(f"#auction-list li[data-task-id='{task_id}']")
    await item.wait_for(timeout=10_000)
    await item.locator("summary").click()
    bids = item.locator("table.bids tbody tr")
    await bids.first.wait_for()
    assert await bids.count() == 3
    assert {await row.get_attribute("data-agent") for row in await bids.all()} >= {victim.id,
                                                                                   evil_id}
    winner = item.locator("tr.winner")
    assert await winner.count() == 1 and "winner" in await winner.inner_text()
    assert await item.get_by_text("Score = 0.3 \u00d7 load").count() == 1

    # math.evaluate has one agent (the analyst): a direct award, shown as such, no bids.
    evaluated = await asyncio.to_thread(post, f"{http}/api/tasks", {
        "capability": "math.evaluate", "parameters": {"expression": "6*7"}})
    assert evaluated["status"] == "COMPLETED"
    item = page.locator(f"#auction-list li[data-task-id='{evaluated['task_id']}']")
    await item.wait_for(timeout=10_000)
    await item.locator("summary").click()
    direct = item.locator("p.direct")
    await direct.wait_for()
    assert "analyst was the one agent known to offer math.evaluate" in await \
        direct.inner_text()
    assert "a direct award" in await item.locator("h4").inner_text()
    assert await item.locator("table.bids").count() == 0

    # A debate and a workflow run through the API, shown as a transcript and a DAG.
    await asyncio.to_thread(post, f"{http}/api/collaborate", {
        "mode": "debate", "topic": "tabs or spaces", "agents": ["pro", "con"], "rounds": 1})
    await asyncio.to_thread(post, f"{http}/api/workflows", {"workflow": {
        "name": "sum", "steps": [
            {"name": "add", "capability": "math.evaluate", "parameters": {"expression": "2+3"}},
            {"name": "say", "capability": "echo", "depends_on": ["add"],
             "parameters": {"text": "${steps.add.output.value}"}}]}})
    await page.click("nav a[data-view=activity]")
    await page.locator("#activity-list .dag rect.COMPLETED").nth(1).wait_for()
    assert await page.locator("#activity-list .turn").count() >= 3  # 2 turns, the consensus

    await _screenshots(browser, context, page, artifacts)

    # An agent killed: lost, then gone.
    await page.click("nav a[data-view=agents]")
    row = page.locator(f"#agents-table tr[data-id='{victim.id}']")
    os.kill(victim.process.pid, signal.SIGKILL)
    await row.locator("td.presence-lost").wait_for(timeout=10_000)
    await row.wait_for(state="detached", timeout=20_000)

    assert problems == []
    await context.close()

    # Without the token: the page and its stream are refused; the form lets one in.
    stranger = await browser.new_context()
    page = await stranger.new_page()
    assert (await page.goto(f"{http}/")).status == 401
    assert (await page.goto(f"{http}/api/console/events")).status == 401
    await page.goto(f"{http}/")
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_selector("body[data-ready=true]")
    await stranger.close()


#: The text in the page whose contrast with what is behind it is under WCAG 2's AA
#: (4.5:1, large text 3:1), as "<tag>.<class> <ratio>: <text>".
LOW_CONTRAST = r"""() => {
  const parse = (text) => {
    const m = /rgba?\(([^)]+)\)/.exec(text || "");
    if (!m) return null;
    const p = m[1].split(",").map(Number);
    return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1};
  };
  const luminance = ({r, g, b}) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const behind = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c.a > 0) return c;
    }
    return {r: 255, g: 255, b: 255, a: 1};
  };
  const low = [];
  for (const el of document.querySelectorAll("body *")) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    const box = el.getBoundingClientRect();
    if (!own || box.width === 0 || box.height === 0 || box.right < 0 || el.closest("[hidden]")) {
      continue;
    }
    const style = getComputedStyle(el);
    if (style.visibility === "hidden" || el.disabled) continue;
    const ink = parse(el instanceof SVGElement ? style.fill : style.color);
    if (!ink) continue;
    const [hi, lo] = [luminance(ink), luminance(behind(el))].sort((a, b) => b - a);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const size = parseFloat(style.fontSize), bold = parseInt(style.fontWeight, 10) >= 700;
    const large = size >= 24 || (size >= 18.66 && bold);
    if (ratio < (large ? 3 : 4.5)) {
      low.push(`${el.tagName.toLowerCase()}.${el.getAttribute("class") || ""} `
               + `${ratio.toFixed(2)}: ${el.textContent.trim().slice(0, 40)}`);
    }
  }
  return low;
}"""


async def _screenshots(browser: Any, context: Any, page: Any, artifacts: Path) -> None:
    """Every view at both sizes, desktop in ``page``, the phone in a context of its own;
    in each, no text under AA contrast."""
    width, height = SIZES["phone"]
    phone = await browser.new_context(viewport={"width": width, "height": height},
                                      storage_state=await context.storage_state())
    small = await phone.new_page()
    errors: list[str] = []
    small.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    small.on("pageerror", lambda error: errors.append(str(error)))
    await small.goto(page.url.split("#")[0])
    await small.wait_for_selector("body[data-ready=true]")
    for view in VIEWS:
        for name, shown in (("desktop", page), ("phone", small)):
            await shown.click(f"nav a[data-view={view}]")
            await shown.locator(f"section#{view}").wait_for()
            await shown.screenshot(path=str(artifacts / f"{view}-{name}.png"), full_page=True)
            low = await shown.evaluate(LOW_CONTRAST)
            assert low == [], f"{view} ({name}): text under AA contrast: {low[:5]}"
    await phone.close()
    assert errors == []
