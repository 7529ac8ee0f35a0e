"""Drives the generated Python client against a live mailgate (run by scripts/clients.sh).

What a user does first: create a template, send with it, poll until Postfix accepted it,
find it in the list, and read a refused request as a typed problem. Exits non-zero on the
first thing that does not hold.
"""

import os
import sys
import time
import uuid

from mailgate_client import AuthenticatedClient
from mailgate_client.api.messages import get_message, list_messages, send_message
from mailgate_client.api.templates import create_template
from mailgate_client.models import (
    CreateTemplateRequest,
    MessageList,
    MessageStatus,
    MessageView,
    Problem,
    SendMessageRequest,
    SendMessageResponse,
    TemplateRequest,
    TemplateRequestData,
    TemplateView,
)


def main() -> None:
    client = AuthenticatedClient(base_url=os.environ["MAILGATE_URL"], token=os.environ["MAILGATE_TOKEN"])
    name = f"py-{uuid.uuid4().hex[:8]}"

    template = create_template.sync(
        client=client,
        body=CreateTemplateRequest(
            name=name,
            subject="Order {{order.id}} shipped",
            text="Hi {{first_name}}, order {{order.id}} is on its way.",
        ),
    )
    assert isinstance(template, TemplateView), template
    assert template.version == 1, template

    data = TemplateRequestData.from_dict({"first_name": "Ana", "order": {"id": "A-17"}})
    accepted = send_message.sync(
        client=client,
        body=SendMessageRequest(
            from_="Shop <shop@example.test>",
            to="ana@example.test",
            template=TemplateRequest(name=name, data=data),
            tags=["python-client"],
        ),
    )
    assert isinstance(accepted, SendMessageResponse), accepted

    deadline = time.monotonic() + 30
    while True:
        message = get_message.sync(id=accepted.id, client=client)
        assert isinstance(message, MessageView), message
        if message.status == MessageStatus.SENT:
            break
        assert message.status not in (MessageStatus.FAILED, MessageStatus.CANCELLED), message
        assert time.monotonic() < deadline, f"still {message.status} after 30 s"
        time.sleep(0.2)
    assert message.subject == "Order A-17 shipped", message.subject

    listed = list_messages.sync(client=client, tag="python-client", limit=10)
    assert isinstance(listed, MessageList), listed
    assert accepted.id in [m.id for m in listed.data], listed

    refused = send_message.sync_detailed(
        client=client,
        body=SendMessageRequest(from_="Shop <shop@example.test>", to="bob", subject="x", text="x"),
    )
    assert refused.status_code == 422, refused.status_code
    problem = refused.parsed
    assert isinstance(problem, Problem), problem
    assert problem.code == "invalid_address", problem.code
    assert problem.errors[0].field == "/to", problem.errors
    print(f"python client: template {template.id}, message {accepted.id} sent, typed problem {problem.code}")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as failure:
        print(f"python client check failed: {failure!r}", file=sys.stderr)
        raise
