"""The live map page in headless Chromium (Debian's chromium + chromium-driver, installed by `make browser`):
load it, switch the horizon, click a cell, take a screenshot; everything it loads comes from the app."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from serving.app import create_app
from tests.test_serving import KEYS, live_server, make_settings

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are missing: `make test` installs them (`make browser`)")
        pytest.skip("chromium and chromium-driver are not installed: run `make browser`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def map_url(tiny_city, tmp_path_factory):
    home = tmp_path_factory.mktemp("map_home")
    for part in ("feast", "mlflow", "model_cache"):
        if (tiny_city / part).exists():
            shutil.copytree(tiny_city / part, home / part)
    with live_server(create_app(make_settings(home, api_keys=",".join(KEYS)))) as url:
        yield url


def wait_for(driver, condition, timeout: float = 30.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def test_map_page_loads_switches_horizon_and_explains_a_cell(browser, map_url, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(f"{map_url}/")  # no key: the page asks for one
    wait_for(browser, lambda d: d.find_element(By.ID, "auth").is_displayed())

    browser.get(f"{map_url}/#key={KEYS[1]}")
    wait_for(browser, lambda d: d.execute_script("return document.body.dataset.ready") == "1")
    cells = browser.find_elements(By.CSS_SELECTOR, "#cells polygon.cell")
    assert len(cells) == 19
    assert all(c.get_attribute("fill") for c in cells), "every cell is coloured"
    assert len({c.get_attribute("fill") for c in cells}) > 3, "colours follow the forecast"
    assert "+30 min" in browser.find_element(By.ID, "status").text

    browser.find_element(By.CSS_SELECTOR, 'button[data-horizon="60"]').click()
    wait_for(browser, lambda d: "+60 min" in d.find_element(By.ID, "status").text)
    assert browser.find_element(By.CSS_SELECTOR, 'button[data-horizon="60"]').get_attribute("aria-pressed") == "true"

    browser.find_element(By.CSS_SELECTOR, 'button[data-metric="surge"]').click()
    assert "Surge" in browser.find_element(By.ID, "legend").text

    busiest = browser.execute_script(
        "return [...window.pulseMap.heat.values()].sort((a, b) => b.p50 - a.p50)[0].hex_id"
    )
    browser.find_element(By.CSS_SELECTOR, f'polygon[data-hex="{busiest}"]').click()
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#forecast-table tr")) == 4)
    assert browser.find_element(By.ID, "cell-id").text == busiest
    current = browser.find_element(By.CSS_SELECTOR, "#forecast-table tr.current").text
    assert current.startswith("+60 min")
    explanation = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#explanation li")]
    assert explanation and all(text for text in explanation)
    moves = browser.find_elements(By.CSS_SELECTOR, "#moves li")
    staying = browser.find_element(By.ID, "staying").text
    assert moves or "staying" in staying
    assert len(browser.find_elements(By.CSS_SELECTOR, "#moves-layer line")) == len(moves)

    shot = tmp_path / "map.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000
    if out := os.environ.get("PULSE_MAP_SCREENSHOT"):
        Path(out).write_bytes(shot.read_bytes())

    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(r.startswith(map_url) for r in resources), resources
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "401" not in e["message"]]
    assert not errors, errors
