"""Issue 18 end to end: the recordings page in a real browser (headless Chromium through
chromedriver and selenium) against `b2bua run` with real recorded calls: it asks for the
token, lists newest first, searches, shows the paused span of a *1 call, plays a recording
(the <audio> element streams the WAV) and offers both downloads. Saves a screenshot to
test-artifacts/recordings-page.png (or $B2BUA_SCREENSHOT_DIR)."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.peers import REPO_ROOT, Baresip
from tests.e2e.recordings_setup import DDI, READ_TOKEN, start_pbx, wait_indexed

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def screenshot_path() -> Path:
    folder = Path(os.environ.get("B2BUA_SCREENSHOT_DIR", REPO_ROOT / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "recordings-page.png"


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}",
                 "--autoplay-policy=no-user-gesture-required", "--mute-audio", "--window-size=1400,900",
                 "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})  # network events
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_page_signs_in_searches_plays_and_downloads(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    pbx = start_pbx(tmp_path)
    alice = Baresip("alice", "alice-secret", pbx.proc.sip_address, tmp_path, tone_hz=1000).start()
    try:
        pbx.sipp_call(2.5)
        alice.wait_for("closed", 5)
        pbx.paused_call(alice)
        listed = wait_indexed(pbx, 2)
        assert len(listed) == 2
        paused_id = listed[0]["call_id"]  # the *1 call is the newer one

        find = browser.find_element
        rows = lambda: browser.find_elements(By.CSS_SELECTOR, "tr.recording")  # noqa: E731
        status = lambda: find(By.ID, "status").text  # noqa: E731

        # A wrong token is refused and the page asks again.
        browser.get(pbx.base + "/")
        wait(lambda: "token" in status(), what="the page asking for a token")
        assert not find(By.ID, "search-form").is_displayed()
        find(By.ID, "token").send_keys("not-the-token")
        find(By.ID, "signin").click()
        wait(lambda: "not accepted" in status(), what="the refusal")
        assert rows() == []

        # The right token: the list, newest first.
        find(By.ID, "token").send_keys(READ_TOKEN)
        find(By.ID, "signin").click()
        wait(lambda: len(rows()) == 2, what="two rows")
        assert [r.get_attribute("data-call-id") for r in rows()] == [r["call_id"] for r in listed]

        # Search: by number and direction, then a user with no calls, then a date range.
        find(By.ID, "number").send_keys(DDI)
        Select(find(By.ID, "direction")).select_by_value("inbound")
        find(By.ID, "search").click()
        wait(lambda: "2 recordings" in status(), what="the number search")
        find(By.ID, "user").send_keys("bob")
        find(By.ID, "search").click()
        wait(lambda: "no recordings found" in status() and not rows(), what="an empty search")
        find(By.ID, "user").clear()
        find(By.ID, "user").send_keys("alice")
        day = listed[0]["started"][:10]
        browser.execute_script("document.getElementById('from').value = arguments[0];"
                               "document.getElementById('to').value = arguments[0];", day)
        find(By.ID, "search").click()
        wait(lambda: len(rows()) == 2, what="the date search")

        # The *1 call's timeline marks its paused span; the other is recorded throughout.
        paused_row = next(r for r in rows() if r.get_attribute("data-call-id") == paused_id)
        spans = json.loads(paused_row.find_element(By.CSS_SELECTOR, ".timeline").get_attribute("data-paused"))
        (seg1_end, seg2_start) = listed[0]["segments"][0][1], listed[0]["segments"][1][0]
        assert len(spans) == 1 and abs(spans[0][0] - seg1_end) < 0.05 and abs(spans[0][1] - seg2_start) < 0.05
        assert len(paused_row.find_elements(By.CSS_SELECTOR, ".timeline .event")) == 2
        other = next(r for r in rows() if r.get_attribute("data-call-id") != paused_id)
        assert json.loads(other.find_element(By.CSS_SELECTOR, ".timeline").get_attribute("data-paused")) == []

        # Play: the audio element streams the WAV and its clock advances.
        paused_row.find_element(By.CSS_SELECTOR, "button.play").click()
        audio = wait(lambda: browser.find_elements(By.CSS_SELECTOR, "tr.player audio"), what="the player")[0]
        wait(lambda: browser.execute_script("return arguments[0].readyState", audio) >= 2, what="audio data")
        duration = browser.execute_script("return arguments[0].duration", audio)
        assert abs(duration - (len(listed[0]["segments"]) and listed[0]["segments"][-1][1])) < 0.5
        wait(lambda: browser.execute_script("return arguments[0].currentTime", audio) > 0.3, timeout=15,
             what="playback to advance")
        assert browser.execute_script("return arguments[0].error", audio) is None
        # The browser streamed it with Range requests (206), and seeks within it.
        statuses = [m["params"]["response"]["status"] for m in
                    (json.loads(e["message"])["message"] for e in browser.get_log("performance"))
                    if m.get("method") == "Network.responseReceived" and ".wav" in m["params"]["response"]["url"]]
        assert 206 in statuses, statuses
        assert browser.execute_script("const r = arguments[0].seekable; return r.length && r.end(0)", audio) > 3
        browser.execute_script("arguments[0].currentTime = arguments[0].duration - 0.5", audio)
        wait(lambda: browser.execute_script("return !arguments[0].seeking && arguments[0].currentTime", audio)
             > duration - 1.0, what="the seek")

        # Downloads: the WAV and the sidecar links work as they are (signed, no header).
        wav_href = paused_row.find_element(By.CSS_SELECTOR, "a.download-wav").get_attribute("href")
        json_href = paused_row.find_element(By.CSS_SELECTOR, "a.download-json").get_attribute("href")
        wav_file = next(p for p in pbx.proc.recordings() if p.stem == paused_id)
        with urllib.request.urlopen(wav_href, timeout=10) as response:
            assert response.read() == wav_file.read_bytes()
        with urllib.request.urlopen(json_href, timeout=10) as response:
            assert json.loads(response.read()) == listed[0]
            assert "attachment" in response.headers["Content-Disposition"]

        shot = screenshot_path()
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
        # Nothing the page did broke its own policy (it fetches nothing from elsewhere).
        assert not [e for e in browser.get_log("browser") if "Content Security Policy" in e.get("message", "")]
    finally:
        alice.stop()
        pbx.proc.stop()
        pbx.trunk.close()
        print(f"--- b2bua log ---\n{pbx.proc.logs()[-20000:]}")
