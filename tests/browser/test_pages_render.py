"""Every main page renders in Chromium without console errors (CSP violations show up there).

With VALETKEY_SCREENSHOTS_DIR set, the pages are also saved as PNGs (docs/screenshots/ is made so).
"""
from __future__ import annotations

import os
from pathlib import Path

from playwright.sync_api import expect

from tests.browser.conftest import sign_in


def shoot(page, name: str, tmp_path: Path) -> None:
    out = Path(os.environ.get("VALETKEY_SCREENSHOTS_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out / f"{name}.png"), full_page=True)


def test_main_pages_render_cleanly(live, page, make_user, rt, tmp_path):
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    make_user("adm@acme.test", ("*", "admin"))
    page.goto(f"{live}/login")
    shoot(page, "sign-in", tmp_path)
    sign_in(page, live, "adm@acme.test")
    shoot(page, "environments", tmp_path)
    page.get_by_role("link", name="staging").click()
    expect(page.get_by_role("row").filter(has_text="orders-api")).to_be_visible()
    shoot(page, "environment", tmp_path)
    page.get_by_role("row").filter(has_text="orders-api").get_by_role("button", name="Restart orders-api").click()
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=30_000)
    shoot(page, "job", tmp_path)
    page.goto(f"{live}/environments/staging/services/orders-api/logs")
    shoot(page, "logs", tmp_path)
    page.goto(f"{live}/audit")
    expect(page.get_by_role("link", name="Download CSV")).to_be_visible()
    shoot(page, "audit", tmp_path)
    page.goto(f"{live}/admin/")
    expect(page.get_by_role("heading", name="Grants", exact=True)).to_be_visible()
    shoot(page, "admin", tmp_path)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{live}/environments/staging")
    shoot(page, "environment-phone", tmp_path)
    assert errors == []
