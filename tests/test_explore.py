"""The explorer (GET /explore) against the real `storerec serve`, with an experiment running and
traffic from `storerec simulate-traffic`: its pages over HTTP, then in a real browser (Debian's
chromium driven by Playwright; skipped, with the reason, where either is missing).

The browser tests save a screenshot of each page, in the test's temporary folder, or in
``$STOREREC_SCREENSHOTS`` when set (the README's pictures: ``make screenshots``)."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import time
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from storerec.cli import main
from storerec.evaluation.beyond import intra_list_diversity
from tests._serve import start, stop, write_config

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # this machine has no internet: no background calls
EXPERIMENTS = """
[[experiment]]
name = "als-vs-itemknn"
salt = "explore-test"
[[experiment.variant]]
name = "control"
model = "2"
share = 0.5
[[experiment.variant]]
name = "treatment"
model = "1"
share = 0.5
"""


@pytest.fixture(scope="module")
def served(store: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("explore")
    (root / "experiments.toml").write_text(EXPERIMENTS)
    cfg = write_config(root, store, extra=f'[serving]\nadmin_token = "s3cret"\n[experiments]\nfile = "{root / "experiments.toml"}"')
    assert main(["--config", str(cfg), "-q", "train", "--model", "als"]) == 0
    assert main(["--config", str(cfg), "-q", "train", "--model", "itemknn"]) == 0
    assert main(["--config", str(cfg), "-q", "promote", "--version", "1"]) == 0
    assert main(["--config", str(cfg), "-q", "promote", "--version", "2", "--alias", "challenger"]) == 0
    assert main(["--config", str(cfg), "-q", "train", "--model", "popularity"]) == 0  # version 3: served by no one
    proc, client = start(cfg, root / "serve.log")
    try:
        base = str(client.base_url).rstrip("/")
        assert main(["--config", str(cfg), "-q", "simulate-traffic", "--url", base, "--shoppers", "120"]) == 0
        yield {"client": client, "base": base, "root": root, "cfg": cfg, "store": store}
    finally:
        client.close()
        stop(proc)


class _Page(HTMLParser):
    """What the tests read off a page: list items in order (per list), history titles, reasons."""

    def __init__(self) -> None:
        super().__init__()
        self.lists: dict[str, list[str]] = {}
        self.categories: dict[str, list[str]] = {}
        self.history: list[str] = []
        self._list: str | None = None
        self._in: list[str] = []
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "ol" and "items" in (a.get("class") or ""):
            self._list = a.get("data-testid") or f"list{len(self.lists)}"
            self.lists[self._list] = []
            self.categories[self._list] = []
        elif tag == "li" and a.get("class") == "item" and self._list is not None:
            self.lists[self._list].append(a["data-item-id"] or "")
        elif tag == "span" and a.get("class") == "category" and self._list is not None:
            self._in.append("category")
            self._text = []
        elif tag == "tr" and a.get("data-item-id"):
            self._in.append("history")
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "ol":
            self._list = None
        elif tag == "span" and self._in and self._in[-1] == "category":
            self._in.pop()
            assert self._list is not None
            self.categories[self._list].append("".join(self._text).strip())
        elif tag == "a" and self._in and self._in[-1] == "history":
            self.history.append("".join(self._text).strip())
            self._in.pop()

    def handle_data(self, data: str) -> None:
        if self._in:
            self._text.append(data)


def parse(html: str) -> _Page:
    p = _Page()
    p.feed(html)
    return p


def hot_users(store: Path, n: int = 20) -> list[str]:
    ev = pl.read_parquet(store / "events.parquet")
    counts = ev.filter(pl.col("event_type") == "purchase").group_by("user_id").len()
    return counts.filter(pl.col("len") >= 3).sort("user_id")["user_id"].head(n).to_list()


def impressions_of(root: Path, user_id: str) -> int:
    with sqlite3.connect(root / "events.db") as conn:
        return int(conn.execute("select count(*) from impressions where user_id = ?", (user_id,)).fetchone()[0])


# ---- over HTTP ---------------------------------------------------------------------------------


def test_every_page_answers_with_what_it_promises(served) -> None:
    c = served["client"]
    shopper = c.get("/explore")
    assert shopper.status_code == 200 and shopper.headers["content-type"].startswith("text/html")
    page = parse(shopper.text)
    assert len(page.lists["list"]) == 10 and page.history, "the default shopper has a list and a history"
    for label in ("Segment", "Tier", "Points", "RFM", "Top categories", "Price band", "Recent history"):
        assert label in shopper.text
    compare = c.get("/explore/compare")
    assert compare.status_code == 200 and "Overlap:" in compare.text
    assert re.search(r"A: als version 1 <small>\(champion\)", compare.text) and re.search(r"B: itemknn version 2 <small>\(challenger\)", compare.text)
    exp = c.get("/explore/experiments")
    assert exp.status_code == 200 and 'data-experiment="als-vs-itemknn"' in exp.text and "Sample ratio" in exp.text
    item = c.get("/explore/item")
    assert item.status_code == 200 and len(parse(item.text).lists["similar"]) == 10
    for name in ("explore.css", "explore.js"):
        r = c.get(f"/explore/static/{name}")
        assert r.status_code == 200 and len(r.content) > 500
    for html in (shopper.text, compare.text, exp.text, item.text):  # nothing from another host: the machines have no internet
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)


def test_the_explorer_shows_the_served_list_without_serving_it(served) -> None:
    """Same list as POST /recommend for the same knobs (experiment variant included), and looking
    is not an impression."""
    c, root = served["client"], served["root"]
    for user in hot_users(served["store"], 6):
        for knobs, body in (({}, {}), ({"cap": "1", "strength": "0"}, {"diversity": {"max_per_category": 1, "strength": 0.0}})):
            time.sleep(0.3)  # the event log flushes impressions within eventlog.flush_ms
            before = impressions_of(root, user)
            html = c.get("/explore", params={"user_id": user, **knobs}).text
            time.sleep(0.3)
            assert impressions_of(root, user) == before, "looking at a shopper must not log an impression"
            served_list = c.post("/recommend", json={"user_id": user, **body}).json()
            assert parse(html).lists["list"] == [i["item_id"] for i in served_list["items"]]
            if served_list["experiment"]:
                assert f"variant <strong>{served_list['variant']}</strong>" in html


def test_a_version_the_service_does_not_serve_is_loaded_for_the_comparison(served) -> None:
    c = served["client"]
    user = hot_users(served["store"], 1)[0]
    for _ in range(2):  # the second time from the explorer's own cache
        html = c.get("/explore/compare", params={"user_id": user, "a": "3", "b": "challenger"}).text
        assert re.search(r"A: popularity version 3 <small>\(3\)", html) and re.search(r"B: itemknn version 2 <small>\(challenger\)", html)
    assert c.get("/readyz").json()["model_version"] == "1", "comparing loads a version beside the served one, it serves nothing else"


def test_bad_parameters_are_named_and_nothing_is_a_server_error(served) -> None:
    c = served["client"]
    cases = {
        "/explore?k=abc": "k", "/explore?k=0": "k", "/explore?cap=0": "cap", "/explore?strength=2": "strength",
        "/explore?page=nope": "page", "/explore?min_price=9&max_price=1": "min_price", "/explore/compare?a=999": "a",
        "/explore/item?k=-1": "k",
    }
    for url, field in cases.items():
        r = c.get(url)
        assert r.status_code == 400, (url, r.status_code)
        assert f'data-field="{field}"' in r.text and f"{field}:" in r.text, (url, r.text[-600:])
    assert c.get("/explore/item?item_id=nope").status_code == 404
    assert c.get("/explore/nowhere").status_code == 404
    assert c.get("/explore/static/../service.py").status_code == 404
    assert c.get("/explore?include=No%20such%20category").status_code == 404


def test_experiment_dashboard_counts_the_logged_users(served) -> None:
    """Users per variant on the dashboard = distinct users in the event log's impressions."""
    c, root = served["client"], served["root"]
    time.sleep(0.3)
    html = c.get("/explore/experiments").text
    with sqlite3.connect(root / "events.db") as conn:
        rows = conn.execute("select variant, count(distinct coalesce(user_id, session_id)) from impressions "
                            "where experiment = 'als-vs-itemknn' group by variant").fetchall()
    assert len(rows) == 2
    for variant, users in rows:
        m = re.search(rf'<tr data-variant="{variant}">.*?<td data-col="users">([\d,]+)</td>', html, flags=re.S)
        assert m and int(m.group(1).replace(",", "")) == users, (variant, users)
    assert "Sample ratio: OK" in html
    assert re.search(r'data-col="ctr">[\d.]+ % <span class="ci">\[[\d.]+ %, [\d.]+ %\]', html)


def test_list_diversity_is_the_evaluations(served) -> None:
    """The diversity shown per list is the evaluation's intra-list diversity of that list."""
    c, store = served["client"], served["store"]
    user = hot_users(store, 1)[0]
    html = c.get("/explore", params={"user_id": user, "k": "12"}).text
    items = parse(html).lists["list"]
    cats = pl.read_parquet(store / "profiles" / "items.parquet").select("item_id", "category")
    reco = pl.DataFrame({"user_id": [user] * len(items), "item_id": items, "rank": list(range(1, len(items) + 1))})
    want = intra_list_diversity(reco, 12, cats)
    shown = float(re.search(r'data-stat="diversity">([\d.]+)<', html).group(1))  # type: ignore[union-attr]
    assert shown == pytest.approx(want, abs=5e-4)


# ---- in a real browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM}: install Debian's chromium and chromium-driver (make browser, which make test runs)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed in .venv (make install installs it from requirements.lock)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("STOREREC_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _page(browser: Any, width: int = 1280, height: int = 900) -> Any:
    ctx = browser.new_context(viewport={"width": width, "height": height})
    ctx.set_default_timeout(15_000)
    return ctx.new_page()


def _with_reason(c: httpx.Client, store: Path, codes: tuple[str, ...]) -> str:
    for user in hot_users(store, 40):
        items = c.post("/recommend", json={"user_id": user}).json()["items"]
        if any(r["code"] in codes for it in items for r in it["reasons"]):
            return user
    raise AssertionError(f"no hot shopper's list has a reason of {codes}")


def test_a_reasons_evidence_is_in_the_shoppers_history(served, browser, shots) -> None:
    c = served["client"]
    user = _with_reason(c, served["store"], ("because_bought", "because_viewed"))
    page = _page(browser)
    page.goto(f"{served['base']}/explore?user_id={user}")
    page.wait_for_selector("ol[data-testid=list] li.item")
    history = page.locator("table.history td a").all_inner_texts()
    evidence = page.locator(".reason[data-code=because_bought] .evidence-item, .reason[data-code=because_viewed] .evidence-item")
    assert evidence.count() > 0
    for title in evidence.all_inner_texts():
        assert title in history, f"the evidence {title!r} is not in the shopper's history {history}"
    assert page.locator("[data-field=segment]").inner_text().strip() in ("new", "active", "dormant", "churned")
    page.screenshot(path=str(shots / "explore-shopper.png"), full_page=False)
    page.context.close()


def test_changing_the_category_cap_reranks_in_place(served, browser, shots) -> None:
    c = served["client"]
    user = hot_users(served["store"], 1)[0]
    page = _page(browser)
    page.goto(f"{served['base']}/explore?user_id={user}&k=12&strength=0")
    page.wait_for_selector("ol[data-testid=list] li.item")
    page.evaluate("window.__same_document = true")
    before = page.locator("ol[data-testid=list] li.item").evaluate_all("els => els.map(e => e.dataset.itemId)")
    before_cats = Counter(page.locator("ol[data-testid=list] .category").all_inner_texts())
    assert max(before_cats.values()) > 1, "the uncapped list repeats a category (else the cap changes nothing)"
    loaded = page.evaluate("document.body.dataset.loaded")
    cap = page.get_by_label("Category cap")
    cap.fill("1")
    cap.press("Tab")  # a change event, as a keyboard user makes it
    page.wait_for_function(f"document.body.dataset.loaded !== '{loaded}' && document.getElementById('results').getAttribute('aria-busy') === 'false'")
    after = page.locator("ol[data-testid=list] li.item").evaluate_all("els => els.map(e => e.dataset.itemId)")
    cats = Counter(page.locator("ol[data-testid=list] .category").all_inner_texts())
    assert after != before and max(cats.values()) == 1
    assert page.evaluate("window.__same_document") is True, "re-ranked in place, not by loading a new page"
    assert "cap=1" in page.url
    served_list = c.post("/recommend", json={"user_id": user, "k": 12, "diversity": {"strength": 0.0, "max_per_category": 1}}).json()
    assert after == [i["item_id"] for i in served_list["items"]]
    page.context.close()


def test_version_comparison_side_by_side(served, browser, shots) -> None:
    user = hot_users(served["store"], 1)[0]
    page = _page(browser)
    page.goto(f"{served['base']}/explore/compare?user_id={user}")
    sides = page.locator(".side")
    assert sides.count() == 2
    a = set(sides.nth(0).locator("li.item").evaluate_all("els => els.map(e => e.dataset.itemId)"))
    b = set(sides.nth(1).locator("li.item").evaluate_all("els => els.map(e => e.dataset.itemId)"))
    overlap = int(re.search(r"Overlap: (\d+)", page.locator("[data-testid=overlap]").inner_text()).group(1))  # type: ignore[union-attr]
    assert overlap == len(a & b)
    assert sides.nth(0).locator(".badge.both").count() == overlap
    for side in (sides.nth(0), sides.nth(1)):
        assert float(side.locator("[data-stat=novelty]").inner_text()) > 0
    page.screenshot(path=str(shots / "explore-compare.png"), full_page=False)
    page.context.close()


def test_experiment_dashboard_refreshes_on_demand(served, browser, shots) -> None:
    page = _page(browser)
    page.goto(f"{served['base']}/explore/experiments")
    exp = page.locator("[data-experiment=als-vs-itemknn]")
    users_before = sum(int(t.replace(",", "")) for t in exp.locator("[data-col=users]").all_inner_texts())
    assert users_before > 0
    assert "OK" in exp.locator("[data-testid=srm]").inner_text()
    page.screenshot(path=str(shots / "explore-experiments.png"), full_page=False)
    c = served["client"]
    newcomer = "u-explore-refresh"
    assert c.post("/recommend", json={"user_id": newcomer}).status_code == 200
    time.sleep(0.5)  # flushed within eventlog.flush_ms
    loaded = page.evaluate("document.body.dataset.loaded")
    page.get_by_role("button", name="Refresh from the event log").click()
    page.wait_for_function(f"document.body.dataset.loaded !== '{loaded}'")
    users_after = sum(int(t.replace(",", "")) for t in exp.locator("[data-col=users]").all_inner_texts())
    assert users_after == users_before + 1
    page.context.close()


def test_item_page_similar_and_bought_together(served, browser, shots) -> None:
    page = _page(browser)
    page.goto(f"{served['base']}/explore/item")
    assert page.locator("[data-testid=similar] li.item").count() == 10
    together = page.locator("[data-testid=together] li.item")
    assert together.count() > 0 and "Often bought together with" in together.first.inner_text()
    title = page.locator("[data-field=title]").inner_text()
    assert f"Similar to {title}" in page.locator("[data-testid=similar] li.item").first.inner_text()
    page.screenshot(path=str(shots / "explore-item.png"), full_page=False)
    target = page.locator("[data-testid=similar] li.item").first
    target_id = target.get_attribute("data-item-id")
    target.locator("a.title").click()
    page.wait_for_url(re.compile(rf"item_id={target_id}"))
    assert page.locator("h1").inner_text() == f"Item {target_id}"
    page.context.close()


def test_keyboard_and_narrow_screen(served, browser, shots) -> None:
    user = hot_users(served["store"], 2)[1]
    page = _page(browser, 390, 844)
    for path in ("/explore", "/explore/compare", "/explore/experiments", "/explore/item"):
        page.goto(served["base"] + path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path} scrolls sideways on a 390 px screen ({width} px)"
    page.goto(served["base"] + "/explore")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    field = page.get_by_label("User id")
    field.focus()
    field.fill(user)
    loaded = page.evaluate("document.body.dataset.loaded")
    page.keyboard.press("Enter")
    page.wait_for_function(f"document.body.dataset.loaded !== '{loaded}'")
    assert page.locator("h1").inner_text() == f"Shopper {user}" and f"user_id={user}" in page.url
    page.screenshot(path=str(shots / "explore-narrow.png"), full_page=False)
    page.context.close()


def test_reload_needs_the_admin_token(served, browser) -> None:
    """Read-only without the token; with it, the form serves another version on every worker."""
    c = served["client"]
    page = _page(browser)

    def reload_form(token: str) -> None:
        page.goto(f"{served['base']}/explore/compare")
        page.get_by_label("Version or alias").fill("2")
        page.get_by_label("Admin token").fill(token)
        page.get_by_role("button", name="Reload every worker").click()

    reload_form("wrong")
    assert "wrong admin token" in page.locator(".error").inner_text()
    assert c.get("/readyz").json()["model_version"] == "1"
    reload_form("s3cret")
    assert "Now serving itemknn version 2" in page.locator(".ok").inner_text()
    assert c.get("/readyz").json()["model_version"] == "2"
    assert page.locator("[data-testid=served-version]").inner_text() == "2"
    r = c.post("/admin/reload", json={"model": "champion"}, headers={"x-admin-token": "s3cret"})
    assert r.status_code == 200 and r.json()["model_version"] == "1"
    page.context.close()
