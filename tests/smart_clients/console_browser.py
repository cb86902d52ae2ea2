"""The audit console in a real browser, for tests/api/console.rs.

Debian's chromium, headless, driven through Debian's chromium-driver by selenium
(no browser or driver download: both paths are given, so Selenium Manager is not
asked), with JavaScript switched off: every flow is plain HTML forms and links.

A compliance user signs in, filters the search, opens an event, reads a
patient's disclosure report and the chain's state, pages, signs out; then a
clinician user tries to sign in. Prints one JSON object of what the pages
showed; the assertions are in the Rust test. Two screenshots are written to the
folder the configuration names.

Usage: console_browser.py CONFIG_JSON
"""

import json
import os
import sys

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM = os.environ.get("FHIRGATE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FHIRGATE_CHROMEDRIVER", "/usr/bin/chromedriver")


def browser():
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1500,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    # JavaScript off: the console must work without it.
    options.add_experimental_option(
        "prefs", {"profile.managed_default_content_settings.javascript": 2})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


# Generous: the test machine may be busy building.
WAIT_SECS = 60


def gone(element):
    """A wait condition: `element`'s page has been replaced. Chromium reports an element
    of a page being torn down either as stale or as "Node with given id does not belong to
    the document" (a WebDriverException that staleness_of does not expect)."""
    def check(_driver):
        try:
            element.is_enabled()
            return False
        except WebDriverException:
            return True
    return check


def navigate(driver, action):
    """Runs `action` (a click or a get) and waits until the next page stands."""
    old = driver.find_element(By.TAG_NAME, "html")
    action()
    WebDriverWait(driver, WAIT_SECS).until(gone(old))
    WebDriverWait(driver, WAIT_SECS).until(
        EC.presence_of_element_located((By.TAG_NAME, "h1")))


def texts(driver, css):
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, css)]


def table(driver, css="table.events tbody tr"):
    rows = []
    for tr in driver.find_elements(By.CSS_SELECTOR, css):
        cells = [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        links = [a.get_attribute("href") for a in tr.find_elements(By.TAG_NAME, "a")]
        rows.append({"cells": cells, "links": links})
    return rows


def facts(driver):
    dts = texts(driver, "dl.facts dt")
    dds = texts(driver, "dl.facts dd")
    return dict(zip(dts, dds))


def sign_in(driver, root, username, password):
    navigate(driver, lambda: driver.get(root + "/console/"))
    page = {"title": driver.title, "h1": texts(driver, "h1")}
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(password)
    navigate(driver, driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click)
    return page


def main():
    config = json.loads(sys.argv[1])
    root = config["root"]
    shots = config["screenshots"]
    out = {}
    driver = browser()
    try:
        compliance = config["compliance"]
        out["login_page"] = sign_in(driver, root, compliance["username"], compliance["password"])
        out["after_login"] = {"url": driver.current_url, "h1": texts(driver, "h1"),
                              "nav": texts(driver, "header nav a"),
                              "who": texts(driver, "header .who"),
                              "scripts": len(driver.find_elements(By.TAG_NAME, "script"))}

        # Filter: every input of the form by its name.
        form = driver.find_element(By.CSS_SELECTOR, "form.filters")
        for name, value in config["search"].items():
            element = form.find_element(By.NAME, name)
            if element.tag_name == "select":
                Select(element).select_by_value(value)
            else:
                element.clear()
                element.send_keys(value)
        navigate(driver, form.find_element(By.CSS_SELECTOR, "button[type=submit]").click)
        out["search"] = {"url": driver.current_url, "rows": table(driver),
                         "inputs": [e.get_attribute("name") for e in
                                    driver.find_elements(By.CSS_SELECTOR, "form.filters [name]")],
                         "error": texts(driver, ".error")}
        driver.save_screenshot(os.path.join(shots, "console-search.png"))

        # An event: the row whose entity is the wanted one.
        wanted = config["open_entity_prefix"]
        link = None
        for row in out["search"]["rows"]:
            if len(row["cells"]) > 7 and row["cells"][7].startswith(wanted) and row["links"]:
                link = row["links"][0]
                break
        out["event"] = {"link": link}
        if link:
            navigate(driver, lambda: driver.get(link))
            out["event"].update({
                "h1": texts(driver, "h1"),
                "facts": facts(driver),
                "queries": texts(driver, "pre.query"),
                "agents": table(driver, "main table.events:nth-of-type(1) tbody tr"),
                "tables": [table(driver, f"main table.events:nth-of-type({i}) tbody tr") for i in (1, 2)],
            })
            driver.save_screenshot(os.path.join(shots, "console-event.png"))

        # The disclosure report, reached through the navigation.
        navigate(driver, driver.find_element(By.LINK_TEXT, "Disclosure report").click)
        report = driver.find_element(By.CSS_SELECTOR, "form.filters")
        report.find_element(By.NAME, "patient").send_keys(config["report"]["patient"])
        report.find_element(By.NAME, "start").send_keys(config["report"]["start"])
        navigate(driver, report.find_element(By.CSS_SELECTOR, "button[type=submit]").click)
        out["disclosures"] = {"url": driver.current_url, "summary": texts(driver, ".summary"),
                              "rows": table(driver), "error": texts(driver, ".error")}

        # The chain's state.
        navigate(driver, driver.find_element(By.LINK_TEXT, "Chain").click)
        out["chain"] = {"verdict": texts(driver, "#verdict"), "facts": facts(driver)}

        # Paging through everything, newest first.
        navigate(driver, lambda: driver.get(root + "/console/"))
        pages = [len(table(driver))]
        while len(pages) < 50:
            older = driver.find_elements(By.CSS_SELECTOR, "a[rel=next]")
            if not older:
                break
            navigate(driver, older[0].click)
            pages.append(len(table(driver)))
        out["paging"] = pages

        # Signing out ends the session.
        navigate(driver, driver.find_element(By.CSS_SELECTOR, "form.signout button").click)
        out["after_logout"] = {"h1": texts(driver, "h1"),
                               "password_inputs": len(driver.find_elements(By.NAME, "password"))}

        # Another role: refused, and shown nothing else.
        clinician = config["clinician"]
        sign_in(driver, root, clinician["username"], clinician["password"])
        out["clinician"] = {"title": driver.title, "h1": texts(driver, "h1"),
                            "body": driver.find_element(By.TAG_NAME, "body").text,
                            "tables": len(driver.find_elements(By.TAG_NAME, "table")),
                            "links": len(driver.find_elements(By.TAG_NAME, "a"))}
        navigate(driver, lambda: driver.get(root + "/console/"))
        out["clinician_after"] = {"h1": texts(driver, "h1"),
                                  "password_inputs": len(driver.find_elements(By.NAME, "password"))}
    finally:
        driver.quit()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
