"""The web UI as a person uses it: `camelid serve` on a tiny model (API keys on), a real knowledge base encoder and a
real training run folder, driven in Debian's headless Chromium by Playwright. Screenshots of each view are saved
(CAMELID_ARTIFACTS, else the test's temporary folder) and were looked at when these tests were written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from http.client import HTTPConnection
from pathlib import Path

import pytest
from test_rag import PLANTED_EN, build_encoder
from test_serve import KEYS, errors, http, metrics, server, wait_idle

XSS = '<script>window.__xss = 1</script><img src="x" onerror="window.__xss = 2">'
IMG_XSS = "<img src=x onerror=window.__xss=3>"  # short enough to stay in one chunk of the tiny encoder


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("CAMELID_ARTIFACTS") or tmp_path_factory.mktemp("shots")) / "ui"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def runs_root(tiny_model, chat_file, text_file, tmp_path_factory) -> Path:
    """A real run: `camelid sft` (LoRA, 12 steps, eval loss every 4) with perplexity before and after, as a user
    runs it; plus a link planted in the root that points outside it."""
    root = tmp_path_factory.mktemp("runs")
    over = {
        "model.name": tiny_model,
        "data.train": f"[{chat_file}]",
        "data.max_length": 64,
        "data.eval_split": 0.2,
        "train.output_dir": root / "sft-lora",
        "train.max_steps": 12,
        "train.batch_size": 4,
        "train.lr": 1e-2,
        "train.eval_every": 4,
        "train.tensorboard": "false",
        "eval.after_training": "true",
        "eval.perplexity": f"[{text_file}]",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "camelid", "sft", *[f"{k}={v}" for k, v in over.items()]],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    outside = tmp_path_factory.mktemp("outside")
    (outside / "config.yaml").write_text("secret: 1\n")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def ui(tiny_model, runs_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui")
    encoder = build_encoder(tmp / "encoder")
    with server(
        tiny_model,
        tmp / "sessions.sqlite",
        f"serve.runs_root={runs_root}",
        f"rag.root={tmp / 'kbs'}",
        f"rag.embedding_model={encoder}",
        "rag.chunk_tokens=48",
        "rag.chunk_overlap=8",
        "serve.max_upload_bytes=200000",
        "serve.max_tokens=480",
    ) as (url, proc):
        yield url


@pytest.fixture(scope="module")
def browser(chromium):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # scripts/setup.sh installs it (camelid[test])
        if os.environ.get("CAMELID_REQUIRE_BROWSER"):
            pytest.fail("playwright is not installed (bash scripts/setup.sh installs camelid[test])")
        pytest.skip("playwright is not installed")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def open_page(browser, url: str, key: str | None = KEYS[0], hash: str = ""):
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.errors = []  # script errors in the page: each test ends with done(page), which requires none
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(url + "/ui/" + hash)
    if key:
        page.fill("#key-input", key)
        page.click("#key-save")
        page.wait_for_selector("#served:not(:empty)")
    return page


def done(page) -> None:
    errors = page.errors
    page.close()
    assert not errors, errors


def assistant_text(page) -> str:
    return page.locator(".msg.assistant .md").last.inner_text()


# ------------------------------------------------------------------ chat


def test_chat_streams_continues_after_reload_and_sessions_can_be_renamed_and_deleted(ui, browser, shots):
    page = open_page(browser, ui)
    page.click("#settings summary")
    page.fill("#system-prompt", "You are terse.")
    page.fill("#max-tokens", "200")
    page.fill("#temperature", "0")
    # record every length the answer had on screen: streamed text grows in several steps, not all at once
    page.evaluate(
        """() => { window.__lengths = new Set(); new MutationObserver(() => {
            const m = document.querySelectorAll('.msg.assistant .md'); if (m.length)
            window.__lengths.add(m[m.length - 1].textContent.length); })
            .observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true}); }"""
    )
    # Enter while an IME is composing picks a pinyin candidate: it must not send the half-typed text
    page.fill("#prompt", "ni")
    page.dispatch_event("#prompt", "keydown", {"key": "Enter", "isComposing": True})
    page.wait_for_timeout(300)
    assert page.locator(".msg").count() == 0 and page.input_value("#prompt") == "ni"
    page.fill("#prompt", "你好，请介绍一下北京。")  # Chinese in, as committed by the IME
    page.keyboard.press("Enter")
    page.wait_for_selector(".msg.assistant")  # from here until the reply ends, Send is hidden
    page.wait_for_selector("#send:not(.hidden)", timeout=60000)
    assert len([n for n in page.evaluate("[...window.__lengths]") if n]) >= 2
    first = assistant_text(page)
    assert first.strip()
    assert page.locator(".msg.user").last.inner_text().endswith("你好，请介绍一下北京。")
    assert page.locator(".msg.system").count() == 1
    page.screenshot(path=str(shots / "chat.png"))

    # the conversation is the server's: a reload finds it in the list and shows it again
    page.reload()  # the key stays for the tab (sessionStorage): no prompt
    page.wait_for_selector(".msg.assistant")
    assert assistant_text(page) == first
    item = page.locator("#sessions li.active")
    assert "你好，请介绍一下北京" in item.inner_text()

    # rename, then delete
    page.once("dialog", lambda d: d.accept("Beijing"))
    item.locator("button[title=Rename]").click()
    page.wait_for_function("() => document.querySelector('#sessions li.active .grow').textContent === 'Beijing'")
    page.once("dialog", lambda d: d.accept())
    page.locator("#sessions li.active button[title=Delete]").click()
    page.wait_for_function("() => !document.querySelector('#sessions li .grow') || "
                           "![...document.querySelectorAll('#sessions li .grow')].some(x => x.textContent === 'Beijing')")  # fmt: skip
    assert page.locator(".msg").count() == 0
    done(page)


def test_stop_aborts_the_generation_and_frees_its_kv(ui, browser):
    # greedy decoding of this prompt runs to max_tokens without an end token (checked first through the API)
    prompt = [{"role": "user", "content": "Count slowly."}]
    status, body = http(
        ui, "/v1/chat/completions", {"model": "tiny", "messages": prompt, "max_tokens": 480, "temperature": 0}
    )
    assert status == 200 and body["choices"][0]["finish_reason"] == "length", body
    aborted = wait_idle(ui)['camelid_requests_total{finish_reason="abort"}']
    page = open_page(browser, ui)
    page.click("#settings summary")
    page.fill("#max-tokens", "480")
    page.fill("#temperature", "0")
    page.fill("#prompt", "Count slowly.")
    page.click("#send")
    page.wait_for_function("() => document.querySelectorAll('.msg.assistant .md').length && "
                           "document.querySelector('.msg.assistant .md').textContent.length > 0")  # fmt: skip
    page.click("#stop")
    page.wait_for_selector("text=stopped — this reply is not kept")
    m = wait_idle(ui)
    assert m["camelid_kv_blocks_used"] == 0 and m["camelid_requests_running"] == 0
    assert m['camelid_requests_total{finish_reason="abort"}'] == aborted + 1
    done(page)


def test_markup_in_model_output_and_messages_is_shown_not_run(ui, browser):
    status, sess = http(
        ui,
        "/v1/sessions",
        {
            "messages": [
                {"role": "user", "content": XSS},
                {
                    "role": "assistant",
                    "content": f"**bold** {XSS} `x<y`\n\n```python\nprint('<b>hi</b>')\n```\n\n- one\n- two",
                },
            ]
        },
    )
    assert status == 200
    page = open_page(browser, ui)
    page.locator("#sessions li", has_text="<script>").click()
    page.wait_for_selector(".msg.assistant strong")
    assert page.evaluate("window.__xss") is None
    assert XSS in page.locator(".msg.user").inner_text()
    assert "<img" in assistant_text(page) and page.locator(".msg img").count() == 0
    assert page.locator(".msg.assistant pre code").inner_text() == "print('<b>hi</b>')"
    assert (
        page.locator(".msg.assistant li").count() == 2
        and page.locator(".msg.assistant :not(pre) > code").inner_text() == "x<y"
    )
    done(page)


# ------------------------------------------------------------------ knowledge bases


def test_knowledge_base_upload_errors_search_and_cited_chat(ui, browser, shots, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "lighthouse.md").write_text(f"# Coast\n\n## Harrow Point\n\n{PLANTED_EN}\n")
    (docs / "notes.txt").write_text(f"Shipping notes: {IMG_XSS}\n")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (docs / "tool.exe").write_bytes(b"MZ\x00\x00")
    (docs / "big.txt").write_text("x" * 300_000)
    page = open_page(browser, ui, hash="#kb")
    page.click("button[data-view=kb]")
    page.fill("#kb-name", "handbook")
    page.click("#kb-create button[type=submit]")
    page.wait_for_selector("#drop")
    page.set_input_files(
        "#kb-files", [str(docs / n) for n in ("lighthouse.md", "broken.pdf", "tool.exe", "notes.txt", "big.txt")]
    )
    page.wait_for_function(
        "() => document.querySelectorAll('#uploads li .ok, #uploads li .err').length === 5", timeout=60000
    )
    rows = {li.locator(".grow").inner_text(): li.inner_text() for li in page.locator("#uploads li").all()}
    assert "added" in rows["lighthouse.md"] and "added" in rows["notes.txt"]
    assert "not added" in rows["broken.pdf"]  # the reader's own reason follows
    assert "cannot read this kind of file" in rows["tool.exe"]
    assert "serve.max_upload_bytes" in rows["big.txt"]
    page.wait_for_selector("#kb-docs td:text('lighthouse.md')")
    assert page.locator("#kb-docs tr").count() == 3  # header + the two good files
    page.fill("#kb-query", "shipping notes")
    page.press("#kb-query", "Enter")
    page.wait_for_selector("#kb-hits li")
    assert IMG_XSS in page.locator("#kb-hits").inner_text() and page.evaluate("window.__xss") is None
    page.screenshot(path=str(shots / "kb.png"))

    page.click("text=Chat with it")
    page.click("#settings summary")
    page.fill("#max-tokens", "24")
    page.fill("#prompt", "When does the Harrow Point keeper buy lamp oil?")
    page.keyboard.press("Enter")
    page.wait_for_selector(".msg.assistant .sources .cite")
    page.wait_for_selector("#send:not(.hidden)", timeout=60000)
    page.locator(".sources .cite").first.click()
    assert "lighthouse.md › Coast › Harrow Point" in page.locator("#passage-label").inner_text()
    assert PLANTED_EN in page.locator("#passage-text").inner_text()
    page.screenshot(path=str(shots / "chat-citations.png"))
    done(page)


def test_upload_limits_and_names_over_http(ui):
    # a 100 MB upload is refused from its Content-Length, before the body is read
    host, port = ui.removeprefix("http://").split(":")
    conn = HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("PUT", "/v1/kb/handbook/documents/huge.txt")
    conn.putheader("Authorization", f"Bearer {KEYS[0]}")
    conn.putheader("Content-Length", str(100_000_000))
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and "serve.max_upload_bytes" in json.loads(r.read())["error"]["message"]
    conn.close()
    for name in ("..", ".hidden.txt", "a%5Cb.txt"):
        status, body = http(ui, f"/v1/kb/handbook/documents/{name}", method="PUT", raw=b"text")
        assert status in (400, 404, 405), (name, status, body)
    status, _ = http(ui, "/v1/kb/handbook/documents/ok.txt", method="PUT", raw=b"hello", key=None)
    assert status == 401


# ------------------------------------------------------------------ runs


def test_run_view_shows_curves_results_data_and_report(ui, browser, runs_root, shots):
    page = open_page(browser, ui, hash="#runs")
    page.click("button[data-view=runs]")
    page.locator("#runs li", has_text="sft-lora").click()
    page.wait_for_selector("svg.chart polyline.series")
    assert page.locator("#run-state").inner_text() == "finished"
    points = page.locator("svg.chart polyline.series").first.get_attribute("points").split()
    assert len(points) == 12  # one per training step
    table = page.locator("#results").inner_text()
    assert "before" in table and "after" in table and "perplexity" in table
    page.click("#data-details summary")
    page.wait_for_selector(".example .sup")
    page.screenshot(path=str(shots / "run.png"), full_page=True)
    page.click("#report-details summary")
    frame = page.wait_for_selector("iframe.report", timeout=120000)
    page.wait_for_function("() => document.querySelector('iframe.report').srcdoc.includes('<img')")
    assert frame.get_attribute("sandbox") == ""
    assert "escape" not in page.locator("#runs").inner_text()  # the planted link is not listed
    done(page)


def test_a_run_that_is_training_updates_live(ui, browser, runs_root):
    live = runs_root / "live"
    live.mkdir()
    (live / "config.yaml").write_text("method: lora\nmodel:\n  name: tiny\n")
    (live / "status.json").write_text(
        json.dumps({"state": "running", "pid": os.getpid(), "host": os.uname().nodename, "stage": "sft"})
    )
    (live / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 3 - s / 10}) + "\n" for s in range(1, 4))
    )
    page = open_page(browser, ui, hash="#runs")
    page.click("button[data-view=runs]")
    page.locator("#runs li", has_text="live").click()
    page.wait_for_selector("svg.chart polyline.series")
    assert page.locator("#run-state").inner_text() == "running"
    with open(live / "metrics.jsonl", "a") as f:
        f.write("".join(json.dumps({"step": s, "loss": 3 - s / 10}) + "\n" for s in range(4, 9)))
    page.wait_for_function(
        "() => document.querySelector('svg.chart polyline.series').getAttribute('points').trim().split(' ').length === 8",
        timeout=15000,
    )
    shutil.rmtree(live)
    done(page)


def test_run_paths_outside_the_root_are_refused(ui, runs_root):
    for path in ("../etc", "..%2F..%2Fetc", "escape", "escape/config.yaml", "sft-lora/../../", "/etc/passwd"):
        status, body = http(ui, f"/v1/runs/{path}")
        assert status == 404, (path, status, body)
    status, body = http(ui, "/v1/runs/sft-lora/report/..%2Fconfig.yaml")
    assert status == 404
    status, body = http(ui, "/v1/runs")
    assert [r["path"] for r in body["data"]] == ["sft-lora"]
    status, _ = http(ui, "/v1/runs", key=None)
    assert status == 401


# ------------------------------------------------------------------ keys and the model view


def test_without_a_key_the_page_gets_no_data(ui, browser, shots):
    status, _ = http(ui, "/v1/sessions", {"messages": [{"role": "user", "content": "private note"}]})
    assert status == 200
    page = open_page(browser, ui, key=None)
    page.wait_for_selector("#key-dialog[open]")
    page.screenshot(path=str(shots / "key.png"))
    assert "private note" not in page.content() and page.locator("#sessions li").count() == 0
    page.fill("#key-input", "wrong key")
    page.click("#key-save")
    page.wait_for_selector("#key-dialog[open]")
    assert "not accepted" in page.locator("#key-error").inner_text()
    page.fill("#key-input", KEYS[0])
    page.click("#key-save")
    page.wait_for_selector("#sessions li:has-text('private note')")
    done(page)


def test_model_view_shows_template_context_and_engine_stats(ui, browser, shots):
    page = open_page(browser, ui, hash="#model")
    page.click("button[data-view=model]")
    page.wait_for_selector("#engine-stats table")
    text = page.locator("#model-detail").inner_text()
    assert "tiny" in text and "512 tokens" in text and "im_start" in text and "KV blocks" in text
    page.screenshot(path=str(shots / "model.png"))
    done(page)
    m = metrics(ui)
    assert errors(m, status="500") == 0
