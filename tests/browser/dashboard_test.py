"""The /ui dashboard in headless Chromium against a running `deprovisiond demo`.

Loads the pages, checks their content, creates a job for a whole group through the form (preview, then
confirm), watches the job page update itself until the job has finished, and saves screenshots. Run by
scripts/browser-test.sh, which starts the demo and passes its URL.
"""

import argparse
import json
import os
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

GROUP = "fleet-x509"  # 200 devices on two hubs: long enough to watch the page refresh itself


def api(base, path, token):
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def driver(chromium, chromedriver):
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)


def text(d):
    return d.find_element(By.TAG_NAME, "main").text


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True)
    p.add_argument("--screenshots", required=True)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    p.add_argument("--token", default=os.environ.get("DEPROVISIOND_UI_TOKEN", "demo-token"))
    a = p.parse_args()
    os.makedirs(a.screenshots, exist_ok=True)
    shot = lambda d, name: d.save_screenshot(os.path.join(a.screenshots, name))  # noqa: E731
    base = a.base.rstrip("/")
    before = len(api(base, "/v1/deprovisions?limit=200", a.token)["items"])

    d = driver(a.chromium, a.chromedriver)
    wait = WebDriverWait(d, 30)
    try:
        # Log in: the token goes into an HttpOnly, SameSite=Strict cookie scoped to /ui.
        d.get(base + "/ui/login")
        check("Log in" in d.title, "the login page renders")
        d.find_element(By.ID, "token").send_keys(a.token)
        d.find_element(By.CSS_SELECTOR, "form.card button[type=submit]").click()
        wait.until(ec.url_to_be(base + "/ui"))
        cookie = d.get_cookie("deprovisiond_session")
        check(cookie is not None and cookie["value"] == a.token, "login sets the session cookie")
        check(cookie["httpOnly"] and cookie.get("sameSite") == "Strict" and cookie["path"] == "/ui",
              "the cookie is HttpOnly, SameSite=Strict, Path=/ui")

        # The jobs list.
        check(d.find_element(By.TAG_NAME, "h1").text == "Jobs", "the jobs list renders")

        # The form: the script shows only the fields of the chosen kind.
        d.get(base + "/ui/new")
        check("New deprovisioning job" in text(d), "the form renders")
        Select(d.find_element(By.ID, "kind")).select_by_value("enrollment_group")
        check(not d.find_element(By.ID, "registration_id").is_displayed(),
              "a whole group hides the registration id field")
        d.find_element(By.ID, "group_id").send_keys(GROUP)
        Select(d.find_element(By.ID, "reason_code")).select_by_value("compromised")
        d.find_element(By.ID, "reason_text").send_keys("Intermediate CA key leaked")
        d.find_element(By.ID, "ticket_system").send_keys("jira")
        d.find_element(By.ID, "ticket_key").send_keys("SEC-42")
        shot(d, "form.png")
        d.find_element(By.CSS_SELECTOR, "#job-form button[type=submit]").click()

        # The preview: nothing created yet, the page says what the job will do.
        wait.until(ec.presence_of_element_located((By.ID, "confirm-form")))
        page = text(d)
        check("act on every device of group" in page, "the confirmation warns that every device is affected")
        check("200" in page and "demo-hub-1.azure-devices.net" in page, "the preview shows devices and hubs")
        check(len(api(base, "/v1/deprovisions?limit=200", a.token)["items"]) == before, "the preview created no job")
        shot(d, "preview.png")

        # Confirm: the group id must be typed.
        d.find_element(By.ID, "confirm_target").send_keys(GROUP)
        d.find_element(By.CSS_SELECTOR, "button[value=create]").click()
        wait.until(ec.url_contains("/ui/jobs/"))
        job_id = d.current_url.rsplit("/", 1)[1].split("?")[0]
        check(api(base, "/v1/deprovisions/" + job_id, a.token)["target"]["group_id"] == GROUP, "the job was created")
        shot(d, "job-running.png")

        # The page refreshes itself while the job runs: no reload here.
        WebDriverWait(d, 180, poll_frequency=1).until(
            lambda d: "succeeded" in d.find_element(By.CSS_SELECTOR, "main .head .badge").text)
        check(api(base, "/v1/deprovisions/" + job_id, a.token)["status"] == "succeeded", "the job succeeded")
        check(d.current_url.endswith(job_id), "the page updated in place")
        page = text(d)
        check("Progress per hub" in page and "demo-hub-2.azure-devices.net" in page, "per-hub progress shows")
        check("x509-dev-0000" in page, "the devices table shows")
        check("job_succeeded" in page or "created" in page, "the timeline shows")
        bar = d.find_element(By.CSS_SELECTOR, "main > .progress progress")
        check(bar.get_attribute("value") == bar.get_attribute("max") == "200", "the progress bar is full")
        shot(d, "job.png")

        # Filter the devices by state (the select applies itself).
        Select(d.find_element(By.ID, "state")).select_by_value("succeeded")
        wait.until(ec.url_contains("state=succeeded"))
        check("x509-dev-0000" in text(d), "the state filter keeps succeeded devices")

        # The list with its status filter.
        d.get(base + "/ui")
        Select(d.find_element(By.ID, "status")).select_by_value("succeeded")
        wait.until(ec.url_contains("status=succeeded"))
        check(job_id[:8] in text(d), "the list shows the job under its status")
        shot(d, "jobs.png")

        severe = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
        check(not severe, "no script or content-security-policy errors: %s" % severe)
    except Exception:
        shot(d, "failure.png")
        print("page at failure:", d.current_url, file=sys.stderr)
        print(d.page_source[:4000], file=sys.stderr)
        raise
    finally:
        d.quit()
    print("browser test passed; screenshots in", a.screenshots)


if __name__ == "__main__":
    main()
