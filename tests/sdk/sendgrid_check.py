"""Drives mailgate through the official SendGrid Python SDK (pinned in
tests/support/requirements.txt), as a user migrating from SendGrid would: only the host
and the key change. Prints one JSON object of what the SDK answered;
tests/api/provider_sdks.rs checks it and the MIME Postfix delivered."""

import base64
import json
import os
import time

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import (
    Attachment, Category, ContentId, CustomArg, Disposition, FileContent, FileName, FileType, Header, Mail,
    Personalization, ReplyTo, SendAt, To, TrackingSettings, OpenTracking,
)

run = os.environ["MAILGATE_RUN"]
to = os.environ["MAILGATE_TO"]
sender = ("no-reply@acme.test", "Acme")
sg = SendGridAPIClient(api_key=os.environ["MAILGATE_TOKEN"], host=os.environ["MAILGATE_URL"])


def ids(response):
    assert response.status_code == 202, response.status_code
    return response.headers["X-Mailgate-Message-Ids"].split(",")


def refusal(mail):
    try:
        sg.send(mail)
        return None
    except HTTPError as err:
        return {"class": type(err).__name__, "code": err.status_code, "body": json.loads(err.body)}


out = {}
one = Mail(from_email=sender, to_emails=To(to, "Ana Example"), subject=f"sendgrid-python one {run}",
           plain_text_content="Hello from sendgrid-python", html_content="<p>Hello from <b>sendgrid-python</b></p>")
one.header = Header("X-Entity-Ref-ID", run)
one.category = Category("welcome")
one.custom_arg = CustomArg("user_id", "42")
one.reply_to = ReplyTo("support@acme.test")
out["one"] = ids(sg.send(one))[0]

batch = Mail(from_email=sender, subject=f"sendgrid-python batch {run}", plain_text_content="one per personalization")
for n in (1, 0):  # add_personalization prepends: added in reverse, sent 0 then 1
    p = Personalization()
    p.add_to(To(to))
    p.subject = f"sendgrid-python batch {n} {run}"
    batch.add_personalization(p)
out["batch"] = ids(sg.send(batch))

attached = Mail(from_email=sender, to_emails=to, subject=f"sendgrid-python attachments {run}",
                html_content='<p>logo: <img src="cid:logo"></p>')
attached.attachment = [
    Attachment(FileContent(base64.b64encode(f"notes for {run}\n".encode()).decode()), FileName("notes.txt"),
               FileType("text/plain"), Disposition("attachment")),
    Attachment(FileContent(base64.b64encode(b"\x89PNG").decode()), FileName("logo.png"), FileType("image/png"),
               Disposition("inline"), ContentId("logo")),
]
out["attachments"] = ids(sg.send(attached))[0]

templated = Mail(from_email=sender, to_emails=to)
templated.template_id = os.environ["MAILGATE_TEMPLATE"]
templated.dynamic_template_data = {"name": "Ana", "run": run}
out["template"] = ids(sg.send(templated))[0]

scheduled = Mail(from_email=sender, to_emails=to, subject=f"sendgrid-python scheduled {run}",
                 plain_text_content="later")
scheduled.send_at = SendAt(int(time.time()) + 3)
out["scheduled"] = ids(sg.send(scheduled))[0]

tracked = Mail(from_email=sender, to_emails=to, subject="x", plain_text_content="x")
tracked.tracking_settings = TrackingSettings(open_tracking=OpenTracking(enable=True))
out["unsupported"] = refusal(tracked)
# The Mail helper refuses this address itself; a dict goes out as it is.
out["invalid"] = refusal({
    "personalizations": [{"to": [{"email": "not-an-address"}]}],
    "from": {"email": sender[0]}, "subject": "x", "content": [{"type": "text/plain", "value": "x"}],
})

retry = Mail(from_email=sender, to_emails=to, subject=f"sendgrid-python idempotent {run}",
             plain_text_content="exactly once").get()
headers = {"Idempotency-Key": f"sendgrid-python-{run}"}
out["idempotent"] = [
    ids(sg.client.mail.send.post(request_body=retry, request_headers=headers))[0],
    ids(sg.client.mail.send.post(request_body=retry, request_headers=headers))[0],
]
sg.reset_request_headers()

print(json.dumps(out))
