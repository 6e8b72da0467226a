"""The labeling page (pipeline/rounds/label.py) in a real browser: Debian's Chromium driven by Selenium through the
system's chromedriver (nothing downloaded), against the real server started as its own process.

.ci/run installs chromium + chromium-driver and sets RLHF_BROWSER_TESTS=required, so CI runs these tests; on a
machine without them they skip with the package names to install.
"""

from __future__ import annotations

import json
import os

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from pipeline.rounds.comparisons import RANKED
from pipeline.rounds.labels import LETTERS
from tests.label_browser import (
    CHROMEDRIVER,
    CHROMIUM,
    Page,
    Server,
    free_port,
    have_browser,
    start_browser,
    wait_for,
    write_round,
)

if not have_browser():
    if os.environ.get("RLHF_BROWSER_TESTS") == "required":
        raise RuntimeError(f"RLHF_BROWSER_TESTS=required but {CHROMIUM} or {CHROMEDRIVER} is missing")
    pytest.skip("no browser: apt-get install chromium chromium-driver (Debian) to run the labeling page's tests",
                allow_module_level=True)  # fmt: skip

pytestmark = pytest.mark.multiprocess
SCRIPT = '<script>window.__owned = 1</script><img src="x" onerror="window.__owned = 2"><b>bold</b> & more'


@pytest.fixture(scope="module", autouse=True)
def no_server_left():
    """A test that fails midway leaves no labeling server running."""
    yield
    Server.stop_all()


@pytest.fixture(scope="module")
def browser():
    driver = start_browser()
    yield driver
    driver.quit()


def expected_ranks(order: str, shown: list[int], unusable: tuple[int, ...] = ()) -> list[int]:
    """What a ranking typed as `order` over `shown` means, worked out here apart from the page's own parser."""
    tiers = [[shown[LETTERS.index(c)] for c in tier.split("=")] for tier in order.split()]
    left = [i for i in range(len(shown)) if not any(i in tier for tier in tiers)]
    assert set(left) == set(unusable)
    ranks, place = [0] * len(shown), 1
    for tier in [*tiers, left] if left else tiers:
        for i in tier:
            ranks[i] = place
        place += len(tier)
    return ranks


def plan(row: dict, shown: list[int], step: int) -> str:
    """The order a 'person' chooses: by answer length, longest first (what the screen shows decides it), a tie
    between the first two on every third prompt."""
    letters = sorted(LETTERS[: len(shown)], key=lambda c: -len(row["responses"][shown[LETTERS.index(c)]]))
    return f"{letters[0]}={letters[1]} " + " ".join(letters[2:]) if step % 3 == 1 else " ".join(letters)


def test_rank_by_clicks_and_keys_kill_the_server_restart_and_the_file_is_what_was_done(tmp_path, browser):
    config, rows = write_round(tmp_path, 9)
    by_prompt = {r["prompt"].strip(): r for r in rows}
    port = free_port()
    server = Server(config, port, "--rater", "ana")
    page = Page(browser, f"{server.url}/?rater=ana")
    assert "prompt 1 of 9" in page.progress()
    done = []  # (id, ranks or "skipped", unusable, note) in the order the person did them
    for step in range(6):
        row, shown = page.shown(by_prompt)
        order = plan(row, shown, step)
        unusable, note = (), ""
        if step == 4:  # flag the last-placed answer unusable with a note, and leave it out of the order
            dropped = order.split()[-1]
            unusable, note = (shown[LETTERS.index(dropped)],), "rambles"
            order = " ".join(order.split()[:-1])
            page.flag(dropped, note)
        done.append((row["id"], expected_ranks(order, shown, unusable), list(unusable), note))
        if step < 3:
            page.rank_by_clicks(order)
        else:
            page.rank_by_keys(order.replace(" ", "").lower() if step == 3 else order)
    # a ranking refused (an answer left out) saves nothing and keeps the prompt on screen
    row, shown = page.shown(by_prompt)
    box = browser.find_element(By.CSS_SELECTOR, "#order textarea, #order input")
    box.send_keys("A B" + Keys.ENTER)
    wait_for(lambda: "Not saved" in browser.find_element(By.ID, "message").text)
    assert page.shown(by_prompt)[0]["id"] == row["id"]

    server.kill()  # no goodbye: what was saved must already be on disk
    written = [json.loads(line) for line in (tmp_path / "rounds/1/labels/ana.jsonl").read_text().splitlines()]
    assert len(written) == 6
    server = Server(config, port)
    page = Page(browser, f"{server.url}/?rater=ana")
    assert "prompt 7 of 9" in page.progress() and "you: 6 ranked" in page.progress()
    assert page.shown(by_prompt)[0]["id"] == row["id"]  # the first prompt not yet ranked, as before the kill
    page.after(lambda: page.click("skip"))
    done.append((row["id"], "skipped", [], ""))
    done.append((page.shown(by_prompt)[0]["id"], "skipped", [], ""))
    page.rank_by_keys("skip")  # the keyboard's skip
    row, shown = page.shown(by_prompt)
    assert len(shown) == 3 and not any(e.is_displayed() for e in browser.find_elements(By.ID, "answer-D"))
    order = plan(row, shown, 0)
    page.rank_by_keys(order)
    done.append((row["id"], expected_ranks(order, shown), [], ""))
    wait_for(lambda: "All prompts of this round are done" in page.value("prompt"))
    server.kill()

    written = [json.loads(line) for line in (tmp_path / "rounds/1/labels/ana.jsonl").read_text().splitlines()]
    got = [(r["id"], "skipped" if r.get("skipped") else r["ranks"], r.get("unusable", []), r.get("note", ""))
           for r in written]  # fmt: skip
    assert got == done
    assert [r["id"] for r in written] == [r["id"] for r in rows]  # every prompt once, in the round's order
    assert all(r["rater"] == "ana" for r in written)
    # the shuffle is recorded, and differs between prompts (position cannot carry a preference)
    assert len({tuple(r["shown"]) for r in written if "shown" in r}) > 1


@pytest.fixture(scope="module")
def shared_round(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shared")
    config, rows = write_round(folder, 6, special=SCRIPT)
    server = Server(config, free_port())
    yield folder, config, rows, server
    server.kill()


def test_two_raters_at_once_merge_and_their_agreement_is_reported(shared_round, browser, capsys):
    from pipeline.rounds.rank import main as rank

    folder, config, rows, server = shared_round
    by_prompt = {r["prompt"].strip(): r for r in rows}
    alice = Page(browser, f"{server.url}/?rater=alice")
    browser.switch_to.new_window("tab")
    bob = Page(browser, f"{server.url}/?rater=bob")
    wanted = {}  # prompt id -> {rater: ranks}
    for step in range(3):  # turn by turn: each saves while the other has a prompt open
        for name, page in (("alice", alice), ("bob", bob)):
            browser.switch_to.window(page.handle)
            row, shown = page.shown(by_prompt)
            order = " ".join(sorted(LETTERS[:4], key=lambda c: shown[LETTERS.index(c)]))  # answer 0 first ...
            if name == "bob" and step == 2:
                order = " ".join(reversed(order.split()))  # ... except bob, on the third prompt, reversed
            page.rank_by_keys(order)
            wanted.setdefault(row["id"], {})[name] = expected_ranks(order, shown)
    assert "others: alice 3" in bob.progress()
    rank(["--config", str(config), "--round", "1"])
    out = capsys.readouterr().out
    ranked = {r["id"]: r for r in map(json.loads, (folder / "rounds/1" / RANKED).read_text().splitlines())}
    assert len(ranked) == 6
    for prompt, by_rater in wanted.items():
        assert ranked[prompt]["by_rater"] == by_rater and ranked[prompt]["rater"] == "alice+bob"
    first, second, third = list(wanted)
    assert ranked[first]["ranks"] == [1, 2, 3, 4] and ranked[third]["ranks"] == [
        1,
        1,
        1,
        1,
    ]  # disagreement: ties
    assert all(
        r["rater"] == "labeler:data_prep.task:labeler_scores" for i, r in ranked.items() if i not in wanted
    )
    summary = json.loads((folder / "rounds/1/rank_summary.json").read_text())
    # 2 prompts alike (6 + 6 pairs agree), 1 reversed (6 disagree): 12 / 18
    assert summary["agreement"]["agreement"] == pytest.approx(12 / 18) and summary["agreement"]["pairs"] == 18
    assert summary["by_rater"] == {"alice": 3, "bob": 3} and summary["filled_by_labeler"] == 3
    assert "alice 3, bob 3, the labeler 3; raters agree on 66.7% of the 18 answer pairs" in out


def test_an_answer_holding_a_script_shows_as_text_to_a_rater_named_on_the_page(shared_round, browser):
    folder, config, rows, server = shared_round
    page = Page(browser, server.url, ready="Type your name")  # no ?rater=: the page asks
    name = browser.find_element(By.CSS_SELECTOR, "#rater textarea, #rater input")
    name.send_keys("../carol" + Keys.ENTER)
    wait_for(lambda: "cannot name a file" in browser.find_element(By.ID, "message").text)
    name.clear()
    page.after(lambda: name.send_keys("carol" + Keys.ENTER))
    assert "rater carol" in page.progress()
    row, shown = page.shown({r["prompt"].strip(): r for r in rows})
    assert row["id"] == rows[0]["id"]
    letter = LETTERS[shown.index(2)]
    assert page.value(f"answer-{letter}") == SCRIPT  # the text, every character of it
    assert browser.execute_script("return window.__owned") is None  # neither the script nor the handler ran
    made = "return document.querySelectorAll('img[src=\"x\"]').length + [...document.querySelectorAll('b')]" \
           ".filter(e => e.textContent === 'bold').length"  # fmt: skip
    assert browser.execute_script(made) == 0  # no element was made from the answer's markup


def test_with_an_auth_file_nothing_is_served_before_a_login(tmp_path):
    """Gradio's `auth` from a file of user:password lines (the README's way to serve the page to others)."""
    import http.cookiejar
    import urllib.error
    import urllib.parse
    import urllib.request

    from pipeline.common.config import UserError
    from pipeline.rounds.label import read_auth

    config, _ = write_round(tmp_path, 2)
    (tmp_path / "raters.txt").write_text("ana:s3cret\n\nben:pa:ss\n")
    assert read_auth(str(tmp_path / "raters.txt")) == [("ana", "s3cret"), ("ben", "pa:ss")]
    (tmp_path / "bad.txt").write_text("ana\n")
    with pytest.raises(UserError, match="line 1 is not 'user:password'"):
        read_auth(str(tmp_path / "bad.txt"))
    server = Server(config, free_port(), "--auth_file", str(tmp_path / "raters.txt"))
    try:
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

        def status(path: str, form: dict | None = None) -> int:
            data = urllib.parse.urlencode(form).encode() if form else None
            try:
                return opener.open(server.url + path, data=data, timeout=10).status
            except urllib.error.HTTPError as err:
                return err.code

        assert status("/config") == 401  # the page's data: not before a login
        assert status("/login", {"username": "ana", "password": "wrong"}) == 400
        assert status("/login", {"username": "ana", "password": "s3cret"}) == 200
        assert status("/config") == 200
    finally:
        server.kill()
