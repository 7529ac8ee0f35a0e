"""The web console driven in headless Chromium, as a person uses it.

Run by scripts/browser.sh against the real binary (started from a config file) that
delivers into the Postfix harness. Each step prints `ok - <what>`; a screenshot of
each page lands in MAILGATE_SCREENSHOTS_DIR.
"""

import http.server
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request

from playwright.sync_api import expect, sync_playwright

URL = os.environ["MAILGATE_URL"]
BIN = os.environ["MAILGATE_BIN"]
CONFIG = os.environ["MAILGATE_CONFIG"]
SHOTS = os.environ["MAILGATE_SCREENSHOTS_DIR"]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ALL = "messages:send messages:read templates:read templates:write webhooks:manage suppressions:manage admin"


def token(tenant, scope):
    return subprocess.run(
        [BIN, "token", "issue", "--config", CONFIG, "--tenant", tenant, "--scope", scope, "--sub", "ana@example.test"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


def api(method, path, bearer, body=None):
    request = urllib.request.Request(
        URL + path, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def wait(what, check, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class Receiver(http.server.BaseHTTPRequestHandler):
    """A webhook endpoint (and, on GET /attack, a page of another origin)."""

    received = []
    target = ""

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Receiver.received.append((self.headers.get("webhook-id"), json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def do_GET(self):
        page = f"""<!doctype html><form id=f method=post action="{Receiver.target}/console/suppressions">
<input name=email value="victim@example.test"></form><script>document.getElementById('f').submit()</script>"""
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(page.encode())

    def log_message(self, *args):
        pass


def step(name):
    print(f"ok - {name}", flush=True)


def shot(page, name):
    page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)


def sign_in(context, bearer):
    page = context.new_page()
    page.goto(URL + "/console")
    expect(page).to_have_url(URL + "/console/login")
    page.fill("#token", bearer)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Overview")
    return page


def main():
    Receiver.target = URL
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    elsewhere = f"http://127.0.0.1:{receiver.server_address[1]}"

    full = token("browser", ALL)
    status, hook = api("POST", "/v1/webhooks", full, {"url": elsewhere + "/hook", "events": ["*"]})
    assert status == 201, hook
    message = {
        "from": "Acme <no-reply@acme.mailgate.test>",
        "to": ["ana@example.test"],
        "subject": "Your password reset",
        "html": "<h1 style='color:#3559e0'>Reset your password</h1><p>Follow the link.</p>",
        "text": "Reset your password: follow the link.",
        "tags": ["password-reset"],
        "attachments": [{"filename": "note.txt", "content_type": "text/plain", "content": "aGVsbG8="}],
    }
    status, sent = api("POST", "/v1/messages", full, message)
    assert status == 202, sent
    for n in range(3):
        api("POST", "/v1/messages", full, {**message, "subject": f"Receipt {n}", "tags": ["receipt"]})
    wait("the message to be sent", lambda: api("GET", f"/v1/messages/{sent['id']}", full)[1]["status"] == "sent")
    wait("webhook deliveries", lambda: len(Receiver.received) >= 2)
    other = token("other", "messages:send messages:read")
    status, theirs = api("POST", "/v1/messages", other, {**message, "subject": "Not yours"})
    assert status == 202, theirs

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = sign_in(context, full)
        expect(page.locator(".card").first).to_be_visible()
        wait("the overview to count the sends", lambda: page.reload() or "Accepted" in page.inner_text(".cards"))
        shot(page, "overview")
        step("sign in with a pasted token and see the overview")

        page.click("nav a:has-text('Activity')")
        page.fill("#recipient", "ana@example.test")
        page.select_option("#status", "sent")
        page.fill("#tag", "password-reset")
        page.click("form.filters button[type=submit]")
        row = page.locator("table.messages tbody tr", has_text="Your password reset")
        expect(row).to_have_count(1)
        expect(page.locator("table.messages tbody tr", has_text="Receipt")).to_have_count(0)
        shot(page, "activity")
        step("find the message in Activity by recipient, status and tag")

        row.locator("a").last.click()
        expect(page.locator("h1")).to_have_text("Your password reset")
        expect(page.locator("table.events")).to_contain_text("message.sent")
        expect(page.locator("table.recipients")).to_contain_text("250")
        frame = page.frame_locator("iframe.email")
        expect(frame.locator("h1")).to_have_text("Reset your password")
        assert page.locator("iframe.email").get_attribute("sandbox") == "", "the frame is sandboxed"
        expect(page.locator("pre.text")).to_contain_text("follow the link")
        expect(page.locator("body")).to_contain_text("note.txt")
        shot(page, "message")
        step("open the message: events, SMTP reply, the HTML in a sandboxed frame, text, attachment")

        page.goto(URL + "/console/templates/new")
        page.fill("#name", "browser-welcome")
        page.fill("#subject", "Welcome, {{name}}")
        page.fill("#html", "<p>Hello {{name}}</p>")
        page.fill("#data", '{"name": "Ana"}')
        preview = page.frame_locator("#preview iframe.email")
        expect(preview.locator("p")).to_have_text("Hello Ana")
        expect(page.locator("#preview .subject")).to_have_text("Welcome, Ana")
        page.fill("#html", "<p>Hello {{name}}</p>\n<p>Your plan: {{plan}}</p>")
        errors = page.locator("#preview .errors")
        expect(errors).to_contain_text("missing_variable")
        expect(errors).to_contain_text("/data/plan line 2, column")
        shot(page, "template-preview-error")
        page.fill("#data", '{"name": "Ana", "plan": "Pro"}')
        expect(preview.locator("p").last).to_have_text("Your plan: Pro")
        page.click("#save")
        expect(page.locator("h1")).to_contain_text("v1 of 1")
        page.fill("#html", "<p>Hi {{name}}</p>\n<p>Your plan: {{plan}}</p>")
        page.click("#save")
        expect(page.locator("h1")).to_contain_text("v2 of 2")
        page.click("a:has-text('diff with v1')")
        expect(page.locator("table.diff td.del").first).to_contain_text("Hello")
        expect(page.locator("table.diff td.add").first).to_contain_text("Hi")
        shot(page, "template-diff")
        step("edit a template: live preview, a strict-render error at its line, versions and a diff")

        page.goto(URL + "/console/suppressions")
        page.fill("#add-email", "Blocked@Example.test")
        page.click("button:has-text('Add')")
        row = page.locator("table.suppressions tbody tr", has_text="blocked@example.test")
        expect(row).to_contain_text("manual")
        shot(page, "suppressions")
        assert api("GET", "/v1/suppressions/blocked@example.test", full)[0] == 200
        row.locator("button:has-text('Remove')").click()
        expect(page.locator("table.suppressions tbody tr", has_text="blocked@example.test")).to_have_count(0)
        assert api("GET", "/v1/suppressions/blocked@example.test", full)[0] == 404
        step("add and remove a suppression")

        page.goto(URL + "/console/webhooks")
        page.click(f"a:has-text('{elsewhere}/hook')")
        attempts = page.locator("table.deliveries tbody tr")
        expect(attempts.first).to_contain_text("delivered")
        before = attempts.count()
        heard = len(Receiver.received)
        replayed_event = attempts.first.locator("td").nth(1).inner_text()
        attempts.first.locator("button:has-text('Replay')").click()
        expect(page.locator(".notice")).to_contain_text("Replay queued 1 event")
        wait("the replayed delivery", lambda: len(Receiver.received) > heard)
        assert Receiver.received[-1][0] == replayed_event, "the same event id, delivered again"
        wait("the new attempt on the page", lambda: page.reload() or attempts.count() > before)
        shot(page, "webhook")
        step("replay a webhook delivery and see the new attempt")

        reader = browser.new_context(viewport={"width": 1280, "height": 900})
        read_only = sign_in(reader, token("browser", "templates:read messages:read"))
        read_only.goto(URL + "/console/templates/browser-welcome")
        expect(read_only.locator(".readonly")).to_contain_text("templates:write")
        expect(read_only.locator("#save")).to_have_count(0)
        expect(read_only.locator("#html")).to_have_attribute("readonly", "")
        status = read_only.evaluate(
            """async () => (await fetch('/console/templates/browser-welcome', {method: 'POST',
                 headers: {'Content-Type': 'application/x-www-form-urlencoded'},
                 body: 'html=changed'})).status"""
        )
        assert status == 403, status
        shot(read_only, "template-read-only")
        assert api("GET", "/v1/templates/browser-welcome", full)[1]["version"] == 2
        reader.close()
        step("a read-only token cannot save a template")

        answer = page.goto(f"{URL}/console/messages/{theirs['id']}")
        assert answer.status == 404, answer.status
        expect(page.locator("h1")).to_have_text("Not found")
        expect(page.locator("body")).not_to_contain_text("Not yours")
        shot(page, "other-tenant-404")
        step("another tenant's message id is a 404 page")

        page.goto(elsewhere + "/attack")
        expect(page.locator("h1")).to_have_text("Refused")
        shot(page, "cross-site-refused")
        assert api("GET", "/v1/suppressions/victim@example.test", full)[0] == 404
        step("a cross-site POST is refused and changes nothing")

        browser.close()
    receiver.shutdown()


if __name__ == "__main__":
    main()
