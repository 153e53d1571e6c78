"""Load the built docs in headless Chromium and check that their figures render.

``python docs/check_site.py [docs/_build/html]`` (``make docs-check``) serves the site on
localhost, opens the home page and the first tutorial page in Debian's Chromium driven by
Debian's ChromeDriver (``/usr/bin/chromium``, ``/usr/bin/chromedriver``; ``make browser``
installs them; nothing is downloaded at run time) and checks that each page has at least one
image, that every ``<img>`` has loaded (``complete`` and ``naturalWidth > 0``), and that the
tutorial page shows a figure from the notebook's stored outputs. A screenshot of each page is
written next to the site (``docs/_build/screenshots/``). If the browser cannot start, the
check fails and says why.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,2000",
]

# Every <img>: where it is, whether it has loaded and how wide it is.
IMAGES_JS = """
return Array.from(document.images).map(img => ({
    src: img.currentSrc || img.src,
    complete: img.complete,
    width: img.naturalWidth,
    in_output: img.closest('.cell_output, .output') !== null,
}));
"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def start_browser(profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (Path(path).is_file() and os.access(path, os.X_OK)):
            raise SystemExit(
                f"browser check: {path} not found; install Debian's {package} "
                "(make browser, as root: apt-get install chromium chromium-driver)"
            )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager (which would download a driver) is not used.
    service = Service(executable_path=CHROMEDRIVER)
    try:
        return webdriver.Chrome(service=service, options=options)
    except Exception as exc:  # any failure to start is fatal, with the reason
        raise SystemExit(f"browser check: Chromium did not start: {exc}") from exc


def first_tutorial(root: Path) -> str:
    pages = sorted((root / "tutorials").glob("*.html"))
    if not pages:
        raise SystemExit(f"browser check: no tutorial pages in {root / 'tutorials'}")
    return pages[0].relative_to(root).as_posix()


def check_page(driver, base: str, page: str, shots: Path, need: str) -> list[str]:
    """Load one page; return what is wrong with its images. ``need``: "" (every image that
    is there renders), "image" (and there is one) or "output" (and one is a notebook output)."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(base + page)
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script(
            "return document.readyState === 'complete' && "
            "Array.from(document.images).every(i => i.complete);"
        )
    )
    images = driver.execute_script(IMAGES_JS)
    shots.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(shots / (page.replace("/", "_").replace(".html", "") + ".png")))
    problems = [f"{page}: image not rendered: {i['src']}" for i in images if not i["width"]]
    if need and not images:
        problems.append(f"{page}: no images")
    if need == "output" and not any(i["in_output"] and i["width"] for i in images):
        problems.append(f"{page}: no rendered figure in the notebook outputs")
    title = driver.title
    rendered = sum(1 for i in images if i["width"])
    print(f"{page}: '{title}', {rendered}/{len(images)} images rendered")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", type=Path, default=Path("docs/_build/html"))
    parser.add_argument(
        "--page", action="append", help="also check this page (relative to the root)"
    )
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if not (root / "index.html").is_file():
        raise SystemExit(f"browser check: no {root / 'index.html'}: build the docs (make docs)")
    pages = [("index.html", "image"), (first_tutorial(root), "output")]
    pages += [(p, "") for p in args.page or []]
    server, base = serve(root)
    profile = tempfile.mkdtemp(prefix="check-site-chromium-")
    problems = []
    try:
        driver = start_browser(profile)
        try:
            print(f"browser: {driver.capabilities.get('browserVersion')} at {base}")
            for page, need in pages:
                problems += check_page(driver, base, page, root.parent / "screenshots", need)
        finally:
            driver.quit()
    finally:
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)
    for problem in problems:
        print(f"FAIL {problem}")
    print("browser check:", "failed" if problems else "passed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
