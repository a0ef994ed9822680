"""The web page at ``/`` in headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
driven by selenium), against the served functions and a real worker: sign in, upload, follow
the job, read the transcript along the audio, download a result, and the error messages."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from shared.core.redis_client import from_url
from shared.ops import model_ads
from tests import budget
from tests.e2e.test_service import SRT

pytestmark = pytest.mark.e2e

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
_BY_CSS = "css selector"  # selenium's By.CSS_SELECTOR, without importing selenium at collection
#: Set to a path to keep the reading view's screenshot (docs/reading-view.png is made so).
SCREENSHOT_ENV = "WHISPER_API_SCREENSHOT"
#: A click seeks and plays: by the time the test reads the position, this much may have played.
PLAYED = 0.3


def chromium(downloads: Path, *extra: str) -> object:
    """Headless Chromium under selenium (``extra``: more command-line switches)."""
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for drivers online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--mute-audio",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1280,900",
        *extra,
    ):
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=DriverService(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    driver.downloads = downloads  # type: ignore[attr-defined]
    return driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    driver = chromium(tmp_path_factory.mktemp("downloads"))
    try:
        yield driver
    finally:
        driver.quit()  # type: ignore[attr-defined]


def _wait(driver, condition, budget: float = 60, what: str = "the page"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, budget, poll_frequency=0.1).until(condition, f"{what} within {budget} s")


def _position(driver) -> float:
    return float(driver.execute_script("return document.getElementById('player').currentTime"))


def _word_at(driver, t: float) -> str:
    for word in driver.find_elements(_BY_CSS, "#transcript .word"):
        if float(word.get_attribute("data-start")) <= t < float(word.get_attribute("data-end")):
            return str(word.text)
    return ""


def _visible(driver, element_id: str) -> bool:
    return bool(driver.execute_script(f"return !document.getElementById('{element_id}').hidden"))


def _audio_file(folder: Path, name: str, audio: bytes) -> Path:
    """``audio`` saved as ``name``, for the page's file picker (the page shows the name)."""
    path = folder / name
    path.write_bytes(audio)
    return path


def _open_app(driver, base_url: str, key: str) -> None:
    """Signed in with ``key``, the app shown with its models listed."""
    from selenium.webdriver.common.by import By

    _sign_in(driver, base_url, key)
    _wait(driver, lambda d: _visible(d, "app") and d.find_elements(By.CSS_SELECTOR, "#model option"))


def _sign_in(driver, base_url: str, key: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base_url}/")
    driver.execute_script("sessionStorage.clear()")
    driver.get(f"{base_url}/")
    field = driver.find_element(By.ID, "api-key")
    field.send_keys(key)
    field.submit()


def test_sign_in_upload_read_along_and_download(service, browser, tmp_path, speech_wav):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    driver = browser
    key = service.key("web")
    audio = _audio_file(tmp_path, "greeting.wav", speech_wav)

    _open_app(driver, service.base_url, key)
    assert driver.execute_script("return sessionStorage.length") == 1 and key not in driver.current_url
    options = Select(driver.find_element(By.ID, "model")).options
    choices = [(o.get_attribute("value"), o.text) for o in options]
    # the server's default first; OpenAI's other names are aliases of models listed anyway
    assert choices[0] == ("whisper-1", "server default") and ("demo", "demo") in choices
    assert not {"gpt-4o-transcribe", "gpt-4o-mini-transcribe"} & {value for value, _ in choices}
    Select(driver.find_element(By.ID, "model")).select_by_value("demo")
    driver.find_element(By.ID, "words").send_keys(Keys.SPACE)  # word timings, by keyboard
    driver.find_element(By.ID, "file").send_keys(str(audio))
    assert driver.find_element(By.ID, "file-name").text.startswith("greeting.wav (")
    driver.find_element(By.ID, "start").click()

    # Completed: the reading view opens with the transcript beside the tab's own audio.
    _wait(
        driver, lambda d: _visible(d, "reader") and d.find_elements(By.CSS_SELECTOR, "#transcript .segment")
    )
    assert driver.find_element(By.ID, "job-text").text == "completed"
    assert driver.find_element(By.ID, "upload-text").text == "uploaded"
    segments = driver.find_elements(By.CSS_SELECTOR, "#transcript .segment")
    assert [s.text for s in segments] == ["0:00.0 Hello from whisper api.", "0:01.2 The quick brown fox."]
    _wait(driver, lambda d: d.execute_script("return document.getElementById('player').readyState >= 1"))

    segments[1].click()
    assert 1.2 <= _position(driver) < 1.2 + PLAYED
    _wait(driver, lambda d: "playing" in segments[1].get_attribute("class"), what="the highlight")
    driver.execute_script("document.getElementById('player').pause()")
    # With word timings, the word being spoken is highlighted inside the segment being played.
    spoken = driver.find_elements(By.CSS_SELECTOR, "#transcript .word.spoken")
    assert [w.text for w in spoken] == [_word_at(driver, _position(driver))]
    assert segments[1].find_elements(By.CSS_SELECTOR, ".word.spoken") == spoken
    # By keyboard: focus the first segment and press Enter.
    segments[0].send_keys(Keys.ENTER)
    assert 0.0 <= _position(driver) < PLAYED
    segments[1].click()
    driver.execute_script("document.getElementById('player').pause()")
    shot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "reading-view.png")
    driver.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The jobs list, newest first, and a download that is exactly the API's SRT.
    rows = driver.find_elements(By.CSS_SELECTOR, "#job-rows tr")
    assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows] == ["completed"]
    Select(rows[0].find_element(By.TAG_NAME, "select")).select_by_value("srt")
    rows[0].find_element(By.XPATH, ".//button[text()='Download']").click()
    target = driver.downloads / "greeting.srt"
    _wait(driver, lambda _: target.exists() and target.stat().st_size > 0, what="the download")
    token = {"Authorization": f"Bearer {service.token_for(key)}"}
    job_id = rows[0].get_attribute("data-job")
    api = requests.get(f"{service.base_url}/transcribe/{job_id}/result?format=srt", headers=token, timeout=10)
    # word timings end the last cue where the 1.68 s recording ends (the job without them: SRT)
    assert target.read_text() == api.text == SRT.replace("00:00:02,400", "00:00:01,680")

    # Readable at 360 px: nothing wider than the screen.
    driver.set_window_size(360, 800)
    time.sleep(0.3)
    assert driver.execute_script("return document.documentElement.scrollWidth") <= 360
    driver.set_window_size(1280, 900)


def test_errors_are_explained(service, browser, tmp_path):
    from selenium.webdriver.common.by import By

    driver = browser
    _sign_in(driver, service.base_url, "wapi_not_a_key")
    _wait(driver, lambda d: _visible(d, "message"))
    assert driver.find_element(By.ID, "message").text == "That API key was not accepted."

    key = service.key("web-errors")
    _open_app(driver, service.base_url, key)
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all\n" * 10)
    driver.find_element(By.ID, "file").send_keys(str(text))
    driver.find_element(By.ID, "start").click()
    _wait(driver, lambda d: _visible(d, "message"))
    assert driver.find_element(By.ID, "message").text.startswith(
        "That file is not audio this server can read. the file is not decodable audio"
    )

    driver.find_element(By.ID, "language").send_keys("klingon")
    driver.find_element(By.ID, "start").click()
    _wait(driver, lambda d: "Please check the form" in d.find_element(By.ID, "message").text)
    assert "unknown language 'klingon'" in driver.find_element(By.ID, "message").text

    # A token that stops working signs the page out with a message that says so.
    driver.execute_script("sessionStorage.setItem('whisper-api.token', 'expired')")
    driver.find_element(By.ID, "refresh").click()
    _wait(driver, lambda d: _visible(d, "sign-in"))
    assert driver.find_element(By.ID, "message").text.startswith("You are signed out")


def test_without_an_events_stream_the_page_polls_the_job(
    service, browser, without_events, tmp_path, make_wav
):
    from selenium.webdriver.common.by import By

    driver = browser
    key = service.key("web-poll")
    audio = _audio_file(tmp_path, "polled.wav", make_wav(1.0))

    _open_app(driver, without_events, key)
    driver.find_element(By.ID, "file").send_keys(str(audio))
    driver.find_element(By.ID, "start").click()

    _wait(driver, lambda d: _visible(d, "reader") and d.find_elements(By.CSS_SELECTOR, "#transcript li"))
    assert driver.find_element(By.ID, "job-text").text == "completed"
    assert driver.find_element(By.ID, "reader-title").text == "polled.wav"


def test_a_running_job_is_canceled_then_deleted_from_the_list(service, browser, tmp_path, long_audio):
    from selenium.webdriver.common.by import By

    driver = browser
    key = service.key("web-cancel")
    audio = _audio_file(tmp_path, "long.mp3", long_audio(600))
    _open_app(driver, service.base_url, key)
    driver.find_element(By.ID, "file").send_keys(str(audio))
    driver.find_element(By.ID, "start").click()

    cancel = "//tr[td[1]='long.mp3']//button[text()='Cancel']"
    _wait(driver, lambda d: d.find_elements(By.XPATH, cancel), what="the job's Cancel button")
    driver.find_element(By.XPATH, cancel).click()
    _wait(driver, lambda d: d.find_elements(By.XPATH, "//tr[td[1]='long.mp3' and td[2]='canceled']"))
    _wait(driver, lambda d: d.find_element(By.ID, "job-text").text == "canceled", what="the job bar")

    # Delete asks first: dismissed, the job stays; accepted, it goes.
    delete = "//tr[td[1]='long.mp3']//button[text()='Delete']"
    driver.find_element(By.XPATH, delete).click()
    assert "Delete the job for long.mp3?" in driver.switch_to.alert.text
    driver.switch_to.alert.dismiss()
    assert driver.find_elements(By.XPATH, "//tr[td[1]='long.mp3']")
    driver.find_element(By.XPATH, delete).click()
    driver.switch_to.alert.accept()
    _wait(driver, lambda d: not d.find_elements(By.CSS_SELECTOR, "#job-rows tr"), what="an empty list")
    token = {"Authorization": f"Bearer {service.token_for(key)}"}
    assert requests.get(f"{service.base_url}/transcribe", headers=token, timeout=10).json()["jobs"] == []


#: Set to a folder to keep the views at 360 and 1280 px (docs/ is made so).
SCREENSHOTS_ENV = "WHISPER_API_SCREENSHOTS"


def _shoot(driver, name: str) -> None:
    folder = os.environ.get(SCREENSHOTS_ENV)
    if folder:
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def _fits(driver, width: int) -> None:
    """Nothing wider than the screen, and every control of the job list inside it."""
    assert driver.execute_script("return document.documentElement.scrollWidth") <= width
    edges = driver.execute_script(
        "return [...document.querySelectorAll('#job-rows button, #job-rows select')]"
        ".map(e => { const r = e.getBoundingClientRect(); return [r.left, r.right]; })"
    )
    assert edges and all(left >= 0 and right <= width for left, right in edges), edges


@pytest.fixture
def broken_tiny(service, broken_checkpoint) -> Iterator[None]:
    """A ``tiny.pt`` that is no checkpoint, offered by the worker (it is on disk) until the test ends."""
    checkpoint = broken_checkpoint("tiny")
    r = from_url(service.env["REDIS_URL"])
    deadline = budget.deadline(30)
    try:
        while "tiny" not in (model_ads.current(r, 15) or model_ads.Offer()).servable:
            assert time.monotonic() < deadline, "the worker never advertised tiny.pt"
            time.sleep(0.1)
        yield
    finally:
        checkpoint.unlink()
        # later tests list the offer: wait for the heartbeat that no longer sees tiny.pt
        gone_by = budget.deadline(30)
        while "tiny" in (model_ads.current(r, 15) or model_ads.Offer()).servable:
            assert time.monotonic() < gone_by, "the worker kept advertising tiny.pt"
            time.sleep(0.1)


def test_on_a_phone_a_failed_job_shows_why_and_is_retried_with_another_model(
    service, browser, make_wav, broken_tiny
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser
    key = service.key("web-phone")
    token = {"Authorization": f"Bearer {service.token_for(key)}"}
    # Given a job that failed: "tiny" is offered (its file is on disk) but cannot be loaded
    answer = requests.post(
        f"{service.base_url}/transcribe",
        headers=token,
        files={"audio": ("memo.wav", make_wav(1.0))},
        data={"model": "tiny"},
        timeout=30,
    )
    assert answer.status_code == 202, answer.text
    failed = answer.json()
    reason = service.wait_for(failed["id"], token)["error"]
    assert "tiny" in reason

    driver.set_window_size(360, 800)
    try:
        _sign_in(driver, service.base_url, key)
        row = "//tr[td[1]='memo.wav']"
        _wait(driver, lambda d: d.find_elements(By.XPATH, row + "//button[text()='Retry']"), what="the row")
        # The reason is in the list, and every action is on screen: the rows are cards.
        status = driver.find_element(By.XPATH, row + "/td[2]")
        assert status.text == f"failed\n{reason}"
        _fits(driver, 360)
        assert driver.find_element(By.XPATH, row + "/td[1]").location["x"] < 40  # a card, not a column
        driver.execute_script("document.getElementById('jobs').scrollIntoView()")
        _shoot(driver, "jobs-360")

        # Retry with another model: a new job of the same audio completes
        Select(driver.find_element(By.XPATH, row + "//select")).select_by_value("demo")
        driver.find_element(By.XPATH, row + "//button[text()='Retry']").click()
        done = "//tr[td[1]='memo.wav' and td[2]='completed']"
        _wait(driver, lambda d: d.find_elements(By.XPATH, done + "//button[text()='Open']"), what="the retry")
        jobs = requests.get(f"{service.base_url}/transcribe", headers=token, timeout=10).json()["jobs"]
        retried = next(j for j in jobs if j["id"] != failed["id"])
        assert (retried["status"], retried["options"]["model"]) == ("completed", "demo")
        driver.get(f"{service.base_url}/")  # a return visit: the token is kept by the tab
        _wait(driver, lambda d: d.find_elements(By.XPATH, done + "//button[text()='Open']"))
        _fits(driver, 360)
        driver.find_element(By.XPATH, done + "//button[text()='Open']").click()
        # After a reload the reading view still plays the stored audio (it follows the result)
        _wait(driver, lambda d: d.execute_script("return document.getElementById('player').readyState >= 1"))
        assert not _visible(driver, "no-audio")
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 360
        _shoot(driver, "reading-360")
        driver.set_window_size(1280, 900)
        _shoot(driver, "reading-1280")
        driver.find_element(By.ID, "close-reader").click()
        _shoot(driver, "jobs-1280")
    finally:
        driver.set_window_size(1280, 900)


def test_the_page_speaks_russian_and_takes_language_names_in_it(service, browser, tmp_path, make_wav):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser
    key = service.key("web-ru")
    audio = _audio_file(tmp_path, "zametka.wav", make_wav(1.0))
    _open_app(driver, service.base_url, key)
    try:
        Select(driver.find_element(By.ID, "ui-lang")).select_by_value("ru")
        assert driver.find_element(By.ID, "jobs-title").text == "Ваши задания"
        assert driver.find_element(By.ID, "start").text == "Начать"
        assert driver.execute_script("return document.documentElement.lang") == "ru"
        Select(driver.find_element(By.ID, "model")).select_by_value("demo")
        driver.find_element(By.ID, "language").send_keys("русский")
        driver.find_element(By.ID, "file").send_keys(str(audio))
        driver.find_element(By.ID, "start").click()
        _wait(driver, lambda d: d.find_elements(By.XPATH, "//tr[td[1]='zametka.wav' and td[2]='готово']"))
        _wait(driver, lambda d: _visible(d, "reader"))  # the page is done re-listing the jobs
        row = driver.find_element(By.XPATH, "//tr[td[1]='zametka.wav']")
        assert [b.text for b in row.find_elements(By.TAG_NAME, "button")] == ["Открыть", "Скачать", "Удалить"]
        token = {"Authorization": f"Bearer {service.token_for(key)}"}
        job = requests.get(
            f"{service.base_url}/transcribe/{row.get_attribute('data-job')}", headers=token, timeout=10
        )
        assert job.json()["options"]["language"] == "ru"
        # The choice is kept on return
        driver.get(f"{service.base_url}/")
        _wait(driver, lambda d: d.find_element(By.ID, "jobs-title").text == "Ваши задания")
        driver.set_window_size(360, 800)
        _shoot(driver, "ru-360")
    finally:
        driver.execute_script("localStorage.clear()")
        driver.set_window_size(1280, 900)


def test_speakers_are_coloured_and_renamed_for_later_downloads(service, browser, tmp_path, speech_wav):
    from selenium.webdriver.common.by import By

    driver = browser
    key = service.key("web-speakers")
    audio = _audio_file(tmp_path, "call.wav", speech_wav)
    _open_app(driver, service.base_url, key)
    driver.find_element(By.ID, "diarize").click()
    driver.find_element(By.ID, "speaker-count").send_keys("1")
    driver.find_element(By.ID, "file").send_keys(str(audio))
    driver.find_element(By.ID, "start").click()

    # Read in one script: the reading view may be drawn again while the test looks.
    read = (
        "return [...document.querySelectorAll('#transcript li')].map((li) => [li.dataset.speaker,"
        " li.className, getComputedStyle(li).borderLeftColor, li.querySelector('.speaker').textContent])"
    )
    expected = [["SPEAKER_00", "speaker-0", "rgb(31, 95, 191)", "SPEAKER_00"]] * 2
    _wait(
        driver,
        lambda d: _visible(d, "speaker-names") and d.execute_script(read) == expected,
        what="the speakers",
    )

    field = driver.find_element(By.CSS_SELECTOR, "#speaker-fields input[name=SPEAKER_00]")
    field.send_keys("Alice")
    driver.find_element(By.CSS_SELECTOR, "#speaker-names button[type=submit]").click()
    renamed = [["SPEAKER_00", "speaker-0", "rgb(31, 95, 191)", "Alice"]] * 2
    _wait(driver, lambda d: d.execute_script(read) == renamed, what="the new name")
    job_id = driver.find_element(By.ID, "reader").get_attribute("data-job")
    token = {"Authorization": f"Bearer {service.token_for(key)}"}
    text = requests.get(
        f"{service.base_url}/transcribe/{job_id}/result?format=text", headers=token, timeout=10
    )
    assert text.text == "[Alice]: Hello from whisper api.\nThe quick brown fox.\n"
