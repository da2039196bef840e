"""
A real headless Chromium for a test: Debian's ``chromium`` driven through Debian's
``chromium-driver`` by selenium (from the lock). Nothing is downloaded at run time;
a fresh profile in a temp dir; the driver and browser stopped at the end. Skips
(naming the packages) where either binary is missing.
"""

import contextlib
import os
import shutil

import pytest

from harness.wait import wait_for

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Without the background-networking flags Chromium keeps dialling Google's hosts on a closed network.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000")


def missing():
    gone = [p for p in (CHROMIUM, DRIVER) if not os.access(p, os.X_OK)]
    return f"{', '.join(gone)} missing (Debian packages chromium, chromium-driver)" if gone else None


@contextlib.contextmanager
def chromium(tmp_path):
    """A selenium WebDriver on a headless Chromium with its own profile under ``tmp_path``."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver  # pylint: disable=import-outside-toplevel
    from selenium.webdriver.chrome.service import Service  # pylint: disable=import-outside-toplevel

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tmp_path / "chromium-profile"
    options.add_argument(f"--user-data-dir={profile}")
    service = Service(DRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_text(driver, css, text, timeout=120):
    """Wait until the element at ``css`` shows ``text``; return the element's text."""
    from selenium.common.exceptions import WebDriverException  # pylint: disable=import-outside-toplevel
    from selenium.webdriver.common.by import By  # pylint: disable=import-outside-toplevel

    def shown():
        try:
            found = driver.find_elements(By.CSS_SELECTOR, css)
            return next((e.text for e in found if text in e.text), None)
        except WebDriverException:  # the page re-rendered under us
            return None

    return wait_for(shown, timeout, 0.5, what=f"{text!r} in {css}")


def login(driver, url, user, password, eauth):
    from selenium.webdriver.common.by import By  # pylint: disable=import-outside-toplevel

    driver.get(url)
    for field, value in (("username", user), ("password", password), ("eauth", eauth)):
        box = driver.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    driver.find_element(By.ID, "login-button").click()
