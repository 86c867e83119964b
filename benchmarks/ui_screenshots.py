"""The README's web UI screenshots, from a real model and real runs: serves MODEL with the UI, creates a knowledge base
in the page by uploading DOC, asks QUESTION of it and opens the first citation (docs/ui-chat.png), then opens RUN
under RUNS_ROOT with its data view (docs/ui-run.png). Needs Debian's chromium and playwright (scripts/setup.sh).

    .venv/bin/python benchmarks/ui_screenshots.py runs/quickstart --runs-root runs --run quickstart \\
        --doc README.md --question "How do I turn the web UI off?"
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from common import ROOT, camelid_serve


def main() -> None:
    from playwright.sync_api import sync_playwright

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--runs-root", required=True)
    p.add_argument("--run", required=True, help="the run's path under --runs-root")
    p.add_argument("--doc", required=True)
    p.add_argument("--question", required=True)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--out", default=str(ROOT / "docs"))  # the README's images
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory() as tmp,
        camelid_serve(
            a.model, f"serve.runs_root={a.runs_root}", f"serve.sessions_db={tmp}/s.sqlite", f"rag.root={tmp}/kb"
        ) as url,
        sync_playwright() as pw,
    ):
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url + "/ui/#kb")
        page.wait_for_selector("#served:not(:empty)")
        page.click("button[data-view=kb]")
        page.fill("#kb-name", "docs")
        page.click("#kb-create button[type=submit]")
        page.wait_for_selector("#drop")
        page.set_input_files("#kb-files", a.doc)
        page.wait_for_selector("#uploads .ok, #uploads .err", timeout=600_000)
        page.click("text=Chat with it")
        page.click("#settings summary")
        page.fill("#max-tokens", str(a.max_tokens))
        page.fill("#temperature", "0")
        page.click("#settings summary")
        page.fill("#prompt", a.question)
        page.keyboard.press("Enter")
        page.wait_for_selector(".msg.assistant")
        page.wait_for_selector("#send:not(.hidden)", timeout=600_000)
        page.locator(".sources .cite").first.click()
        page.screenshot(path=str(out / "ui-chat.png"))
        page.click("button[data-view=runs]")
        page.locator("#runs li", has_text=a.run).first.click()
        page.wait_for_selector("svg.chart polyline.series")
        page.click("#data-details summary")
        page.wait_for_selector(".example .sup", timeout=120_000)
        page.screenshot(path=str(out / "ui-run.png"))
        browser.close()
    print(f"wrote {out / 'ui-chat.png'} and {out / 'ui-run.png'}")


if __name__ == "__main__":
    main()
