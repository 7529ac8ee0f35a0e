"""Verifies every DKIM signature of a delivered message with dkimpy, an independent
verifier, against the keys given on the command line (no DNS).

    dkim_verify.py MESSAGE_FILE RECORDS_JSON

RECORDS_JSON maps "<selector>._domainkey.<domain>" to the TXT value. Prints one line
per signature, "<selector> <algorithm> pass|fail", and exits 0 when every signature
passes, 1 when one fails, 2 when there is none.
"""

import json
import re
import sys

import dkim

# A maildir stores lines with LF; on the wire (what a receiver verifies) they are CRLF.
message = re.sub(rb"(?<!\r)\n", b"\r\n", open(sys.argv[1], "rb").read())
records = json.loads(sys.argv[2])


def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    value = records.get(name.rstrip("."))
    return value.encode() if value else None


headers = message.split(b"\r\n\r\n", 1)[0]
count = len(re.findall(rb"(?im)^dkim-signature:", headers))
if count == 0:
    print("no DKIM-Signature")
    sys.exit(2)
verifier = dkim.DKIM(message)
ok = True
for idx in range(count):
    passed = verifier.verify(idx=idx, dnsfunc=dnsfunc)
    tags = dict(verifier.signature_fields) if verifier.signature_fields else {}
    print(tags.get(b"s", b"?").decode(), tags.get(b"a", b"?").decode(), "pass" if passed else "fail")
    ok = ok and passed
sys.exit(0 if ok else 1)
