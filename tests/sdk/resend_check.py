"""Drives mailgate through the official Resend Python SDK (pinned in
tests/support/requirements.txt), as a user migrating from Resend would: only
RESEND_API_URL and the key change. Prints one JSON object of what the SDK answered;
tests/api/provider_sdks.rs checks it and the MIME Postfix delivered."""

import base64
import datetime
import json
import os

import resend

run = os.environ["MAILGATE_RUN"]
to = os.environ["MAILGATE_TO"]
sender = "Acme <no-reply@acme.test>"
# As a user migrating sets it: RESEND_API_URL and RESEND_API_KEY in the environment
# (read when the SDK is imported), nothing in the code.
assert resend.api_url == os.environ["RESEND_API_URL"]
assert resend.api_key == os.environ["RESEND_API_KEY"]

out = {}
out["one"] = resend.Emails.send({
    "from": sender,
    "to": [to],
    "subject": f"resend-python one {run}",
    "html": "<p>Hello from <b>resend-python</b></p>",
    "text": "Hello from resend-python",
    "headers": {"X-Entity-Ref-ID": run},
    "tags": [{"name": "category", "value": "welcome"}],
    "reply_to": "support@acme.test",
})["id"]

batch = resend.Batch.send([
    {"from": sender, "to": to, "subject": f"resend-python batch 0 {run}", "text": "first of the batch"},
    {"from": sender, "to": to, "subject": f"resend-python batch 1 {run}", "html": "<p>second of the batch</p>"},
])
out["batch"] = [item["id"] for item in batch["data"]]

out["attachments"] = resend.Emails.send({
    "from": sender,
    "to": to,
    "subject": f"resend-python attachments {run}",
    "html": '<p>logo: <img src="cid:logo"></p>',
    "attachments": [
        # The SDK's documented form: the file's bytes as a list of integers.
        {"filename": "notes.txt", "content": list(f"notes for {run}\n".encode())},
        {"filename": "logo.png", "content": base64.b64encode(b"\x89PNG").decode(),
         "inline_content_id": "logo", "content_type": "image/png"},
    ],
})["id"]

out["template"] = resend.Emails.send({
    "from": sender,
    "to": to,
    "template": {"id": os.environ["MAILGATE_TEMPLATE"], "variables": {"name": "Ana", "run": run}},
})["id"]

later = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=3)).isoformat()
out["scheduled"] = resend.Emails.send({
    "from": sender, "to": to, "subject": f"resend-python scheduled {run}", "text": "later", "scheduled_at": later,
})["id"]
out["scheduled_event"] = resend.Emails.get(out["scheduled"])["last_event"]

doomed = resend.Emails.send({
    "from": sender, "to": to, "subject": f"resend-python cancelled {run}", "text": "never", "scheduled_at": "in 1 hour",
})["id"]
out["cancelled"] = resend.Emails.cancel(doomed)["id"]

retry = {"from": sender, "to": to, "subject": f"resend-python idempotent {run}", "text": "exactly once"}
options = {"idempotency_key": f"resend-python-{run}"}
out["idempotent"] = [resend.Emails.send(retry, options)["id"], resend.Emails.send(retry, options)["id"]]

try:
    resend.Emails.send({"from": sender, "to": "not-an-address", "subject": "x", "text": "x"})
    out["invalid"] = None
except resend.exceptions.ResendError as err:
    out["invalid"] = {"class": type(err).__name__, "code": err.code, "message": err.message}

try:
    resend.Emails.send({"from": sender, "to": to, "text": "no subject"})
    out["missing"] = None
except resend.exceptions.ResendError as err:
    out["missing"] = type(err).__name__

fetched = resend.Emails.get(out["one"])
out["get"] = {key: fetched[key] for key in ("subject", "html", "text", "to", "tags")}

print(json.dumps(out))
