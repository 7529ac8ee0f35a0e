"""Schemathesis hooks for scripts/contract.sh (loaded through SCHEMATHESIS_HOOKS).

`POST /v1/bounces/dsn` takes a raw message (`message/rfc822`), which schemathesis has no
built-in serializer for: a generated string goes on the wire as its UTF-8 bytes.
"""

import schemathesis


@schemathesis.serializer("message/rfc822")
def rfc822(ctx, value):
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")
