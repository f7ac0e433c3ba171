"""The pages in a real headless Chromium (Selenium + the system chromium/chromedriver):
opened from disk without console errors, thumbnails decoded, label issues in
label_issues.csv's order, filters, the confusion-matrix click, and `folderfit review --serve`
as a real process: a Relabel click lands in data/corrections.csv, a bad token is refused.
Skipped, with the reason, where Chromium, chromedriver or selenium is missing (CI installs
them: .ci/steps/browser.sh)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import ENV, make_repo, repo_params, run
from test_pages import CLASSES, ODD, make_project

from folderfit.artifacts import corrections
from folderfit.results.pages import results_page, review_page

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
CHROMEDRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
    SELENIUM = None
except ImportError:
    SELENIUM = "selenium is not installed (pip install selenium)"
REASON = SELENIUM or (None if CHROMIUM else "no chromium on PATH (apt-get install chromium)") \
    or (None if CHROMEDRIVER else "no chromedriver on PATH (apt-get install chromium-driver)")
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"browser tests: {REASON}")
WAIT = 20


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                "--window-size=1280,900",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    downloads = tmp_path_factory.mktemp("downloads")
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(WAIT)
    driver.downloads = downloads
    yield driver
    driver.quit()


def open_page(driver, url: str):
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # drop what earlier tests left
    driver.get(url)
    WebDriverWait(driver, WAIT).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    return driver


def errors(driver) -> list:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def visible(driver, css: str) -> list:
    return [e for e in driver.find_elements("css selector", css) if e.is_displayed()]


def wait_for(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(condition, message=what)


def card_paths(driver, css: str) -> list:
    """data-path of every matching card, in one round trip."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(c => c.dataset.path)", css)


def thumbnails_loaded(driver, css: str) -> bool:
    return driver.execute_script(
        "const i=[...document.querySelectorAll(arguments[0])];"
        "return i.length>0 && i.every(x=>x.complete && x.naturalWidth>0)", css)


# ------------------------------------------------------------------ from disk
def test_review_page_from_disk(browser, tmp_path):
    p = make_project(tmp_path)
    out = review_page.write(p["review"], p["prepared"], p["review"] / "index.html")
    d = open_page(browser, out.as_uri())
    assert errors(d) == []
    cards = d.find_elements("css selector", "#issues .card")
    assert [c.get_attribute("data-path") for c in cards] == [i[0] for i in p["issues"]]
    wait_for(d, lambda d: thumbnails_loaded(d, "#issues .card img"), "issue thumbnails decoded")
    # the test image: no one-click suggested relabel, a note instead
    first = cards[0]
    assert first.find_elements("css selector", "button.relabel") == []
    assert "test image: decide by looking" in first.text
    assert cards[1].find_element("css selector", "button.relabel").text.endswith("dogs")
    # filters
    from selenium.webdriver.support.ui import Select

    Select(d.find_element("id", "f-class")).select_by_value("birds")
    assert {c.get_attribute("data-cls") for c in visible(d, "#issues .card")} == {"birds"}
    assert len(visible(d, "#issues .card")) == 2 and len(visible(d, "#pairs .pair")) == 1
    Select(d.find_element("id", "f-class")).select_by_value("")
    Select(d.find_element("id", "f-split")).select_by_value("test")
    assert [c.get_attribute("data-path") for c in visible(d, "#issues .card")] == ["dogs/004.png"]
    Select(d.find_element("id", "f-split")).select_by_value("")
    d.find_element("id", "k-pair").click()
    assert visible(d, "#pairs .pair") == [] and len(visible(d, "#issues .card")) == 5
    d.find_element("id", "k-pair").click()
    assert len(visible(d, "#pairs .pair")) == 2
    # decisions -> CSV rows that prepare accepts (quoting of a name with a comma and quotes)
    cards = d.find_elements("css selector", "#issues .card")  # rebuilt by the filters
    cards[1].find_element("css selector", "button.relabel").click()
    cards[2].find_element("css selector", "button.drop").click()
    cards[3].find_element("css selector", "button.keep").click()
    d.find_element("id", "show-csv").click()
    text = d.find_element("id", "csv").get_attribute("value")
    (tmp_path / "corrections.csv").write_text(text, encoding="utf-8")
    fixes = corrections.read(p["source"], tmp_path / "corrections.csv")
    assert {k: f.describe() for k, f in fixes.items()} == {ODD: "relabel:dogs", "birds/001.png": "drop"}
    # the Export button downloads the same rows (the page's CSP allows it: no console error)
    saved = d.downloads / "corrections.csv"
    saved.unlink(missing_ok=True)
    d.find_element("id", "export").click()
    wait_for(d, lambda d: saved.is_file() and saved.read_text(encoding="utf-8") == text, "download")
    assert errors(d) == []


def test_results_page_from_disk(browser, tmp_path):
    p = make_project(tmp_path)
    out = results_page.write(p["eval"], p["prepared"], p["eval"] / "index.html",
                             facts={"backbone": "resnet18", "strategy": "fine_tune"})
    d = open_page(browser, out.as_uri())
    assert errors(d) == []
    assert "cross-validation" in d.find_element("id", "estimate").text
    wrong = [r for r in p["preds"] if r[2] != r[3]]
    wait_for(d, lambda d: len(d.find_elements("css selector", "#mistakes .card")) == len(wrong), "mistakes")
    wait_for(d, lambda d: thumbnails_loaded(d, "#mistakes .card img"), "mistake thumbnails decoded")
    t, pr = CLASSES.index(wrong[0][2]), CLASSES.index(wrong[0][3])
    d.find_element("css selector", f'#cm td.cell[data-t="{t}"][data-p="{pr}"]').click()
    in_cell = [r[0] for r in p["preds"] if (r[2], r[3]) == (wrong[0][2], wrong[0][3])]
    wait_for(d, lambda d: len(d.find_elements("css selector", "#cell .card")) == len(in_cell), "cell photos")
    assert sorted(c.get_attribute("data-path") for c in d.find_elements("css selector", "#cell .card")) == sorted(in_cell)
    assert "resnet18" in d.find_element("id", "facts").text
    assert d.find_element("id", "reliability").is_displayed()
    assert errors(d) == []


# ------------------------------------------------------------------ --serve, a real process
def start_serve(root: Path, port: int = 0):
    proc = subprocess.Popen([sys.executable, "-m", "folderfit", "review", "--serve", "--port", str(port)],
                            cwd=root, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stdout.readline()
        if m := re.search(r"(http://127\.0\.0\.1:(\d+)/\?token=(\S+))", line):
            return proc, m.group(1), int(m.group(2)), m.group(3)
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {proc.stderr.read()}")
    proc.kill()
    raise AssertionError("serve printed no URL")


def serve_project(tmp_path) -> dict:
    p = make_project(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params({"data": {"source": "source"}})))
    (tmp_path / "data/corrections.csv").write_text("path,action\nbirds/005.png,drop\n")
    return p


def test_serve_relabel_click_writes_corrections(browser, tmp_path):
    p = serve_project(tmp_path)
    proc, url, port, token = start_serve(tmp_path)
    try:
        d = open_page(browser, url)
        wait_for(d, lambda d: "serving" in d.find_element("id", "status").text, "saved decisions read")
        # the saved drop is shown on its card
        cards = {c.get_attribute("data-path"): c for c in d.find_elements("css selector", "#issues .card")}
        cards[ODD].find_element("css selector", "button.relabel").click()
        wait_for(d, lambda d: "saved" in d.find_element("id", "status").text, "relabel saved")
        fixes = corrections.read(p["source"], tmp_path / "data/corrections.csv")
        assert {k: f.describe() for k, f in fixes.items()} == {"birds/005.png": "drop", ODD: "relabel:dogs"}
        # the test image: relabel only through the picker, as the person decides
        from selenium.webdriver.support.ui import Select

        Select(cards["dogs/004.png"].find_element("css selector", "select.relabel-to")).select_by_value("birds")
        wait_for(d, lambda d: "relabel:birds" in (tmp_path / "data/corrections.csv").read_text(), "picker saved")
        cards[ODD].find_element("css selector", "button.keep").click()  # keep: the row goes
        wait_for(d, lambda d: ODD not in corrections.read(p["source"], tmp_path / "data/corrections.csv"), "keep saved")
        assert errors(d) == []
        # a bad token: 403, and the page is not served
        for bad in (url.replace(token, "x" + token[1:]), url.split("?")[0]):
            with pytest.raises(urllib.error.HTTPError) as exc:
                urllib.request.urlopen(bad, timeout=10)
            assert exc.value.code == 403
        d.get(url.replace(token, "wrong"))
        assert "forbidden" in d.page_source and "folderfit label review" not in d.page_source
        # the port is taken: a second server says so in one line
        second = subprocess.run([sys.executable, "-m", "folderfit", "review", "--serve", "--port", str(port)],
                                cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and second.stderr.strip().count("\n") == 0
        assert f"port {port} on 127.0.0.1 is already in use" in second.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ------------------------------------------------------------------ a real dvc repro
@pytest.mark.slow
def test_pages_written_by_dvc_repro(browser, tmp_path):
    """Needs the stage hooks (review writes metrics/review/index.html, evaluate
    metrics/eval/index.html)."""
    repo = make_repo(tmp_path / "repo", {"evaluate": {"bootstrap": 200}})  # the smallest allowed
    run(["dvc", "repro"], repo)
    review_html, eval_html = repo / "metrics/review/index.html", repo / "metrics/eval/index.html"
    assert review_html.is_file() and eval_html.is_file()
    d = open_page(browser, review_html.as_uri())
    assert errors(d) == []
    with open(repo / "metrics/review/label_issues.csv", newline="", encoding="utf-8") as fh:
        import csv
        issues = list(csv.DictReader(fh))
    assert card_paths(d, "#issues .card") == [r["path"] for r in issues]
    if issues:
        wait_for(d, lambda d: thumbnails_loaded(d, "#issues .card:first-child img"), "thumbnail")
    d = open_page(browser, eval_html.as_uri())
    assert errors(d) == []
    wait_for(d, lambda d: d.find_element("id", "cm").is_displayed(), "confusion matrix")
    # a review session in --serve mode, then prepare accepts the corrections
    proc, url, _, _ = start_serve(repo)
    try:
        d = open_page(browser, url)
        wait_for(d, lambda d: "serving" in d.find_element("id", "status").text, "serving")
        target = next((c for c in d.find_elements("css selector", "#issues .card, #outliers .card")
                       if c.find_elements("css selector", "button.drop")), None)
        assert target is not None
        target.find_element("css selector", "button.drop").click()
        wait_for(d, lambda d: "saved" in d.find_element("id", "status").text, "saved")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    run(["dvc", "repro", "prepare"], repo)
    data = json.loads((repo / "metrics/data.json").read_text())
    assert data["n_dropped"] + data.get("n_test_corrections", 0) == 1


def test_long_review_page_is_built_as_the_reader_scrolls(browser, tmp_path):
    """1,200 suspects: the first 500 cards at once, more on scrolling; a decision survives the
    cards being rebuilt by a filter."""
    p = make_project(tmp_path)
    rows = [[f"{CLASSES[i % 3]}/gen{i:05d}.png", CLASSES[i % 3], CLASSES[(i + 1) % 3], f"{i / 2000:.6f}"]
            for i in range(1200)]
    from test_pages import _csv

    _csv(p["review"] / "label_issues.csv", ["path", "given", "suggested", "score"], rows)
    html = review_page.render(review_page.collect(p["review"], p["prepared"], thumbnails=False))
    out = tmp_path / "long.html"
    out.write_text(html, encoding="utf-8")
    d = open_page(browser, out.as_uri())
    count = lambda: len(d.find_elements("css selector", "#issues .card"))
    assert count() == 500
    d.find_elements("css selector", "#issues .card")[3].find_element("css selector", "button.drop").click()
    d.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    wait_for(d, lambda d: count() >= 1000, "the next cards on scrolling")
    paths = card_paths(d, "#issues .card")
    assert paths == [r[0] for r in rows[:len(paths)]]
    from selenium.webdriver.support.ui import Select

    Select(d.find_element("id", "f-class")).select_by_value(CLASSES[0])
    Select(d.find_element("id", "f-class")).select_by_value("")
    assert "d-drop" in d.find_elements("css selector", "#issues .card")[3].get_attribute("class")
    assert errors(d) == []


def test_decisions_survive_a_reload_from_disk(browser, tmp_path):
    p = make_project(tmp_path)
    out = review_page.write(p["review"], p["prepared"], tmp_path / "keep.html")
    d = open_page(browser, out.as_uri())
    card = d.find_elements("css selector", "#issues .card")[2]
    path = card.get_attribute("data-path")
    card.find_element("css selector", "button.drop").click()
    # the click landed and was stored; then leave the page the way a reader does (a blank page
    # first), so the new page reads what the browser kept, not a navigation racing the write
    wait_for(d, lambda d: "d-drop" in card.get_attribute("class"), "the Drop click on the card")
    wait_for(d, lambda d: d.execute_script(
        "return Object.keys(localStorage).some(k => localStorage.getItem(k).includes(arguments[0]))",
        path), "the decision in localStorage")
    d.get("about:blank")
    d = open_page(browser, out.as_uri())
    again = [c for c in d.find_elements("css selector", "#issues .card")
             if c.get_attribute("data-path") == path]
    assert again and "d-drop" in again[0].get_attribute("class")
    assert d.find_element("id", "n-dec").text == "1 decision"
    assert errors(d) == []
