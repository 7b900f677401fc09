#!/usr/bin/env python3
"""Signs or verifies a Slack request body with Slack's own Python SDK.

The integration tests run this to check moltgate against a third-party
implementation of Slack's v0 signing scheme (slack_sdk.signature).

    SLACK_SIGNING_SECRET=... slack_sign.py sign TIMESTAMP < body
        prints the X-Slack-Signature value for TIMESTAMP and the body
    SLACK_SIGNING_SECRET=... slack_sign.py verify TIMESTAMP SIGNATURE < body
        prints "valid" and exits 0, or prints "invalid" and exits 1

The body is read from stdin as raw bytes. Exit status 2 means a usage error,
3 that slack_sdk is not installed (pip install -r tests/requirements.txt).
"""

import os
import sys

try:
    from slack_sdk.signature import SignatureVerifier
except ImportError:
    sys.stderr.write("slack_sdk is not installed: pip install -r tests/requirements.txt\n")
    sys.exit(3)


def main(argv):
    secret = os.environ.get("SLACK_SIGNING_SECRET")
    if not secret or len(argv) < 2:
        sys.stderr.write(__doc__)
        return 2
    body = sys.stdin.buffer.read()
    verifier = SignatureVerifier(signing_secret=secret)
    command, timestamp = argv[0], argv[1]
    if command == "sign" and len(argv) == 2:
        signature = verifier.generate_signature(timestamp=timestamp, body=body)
        if signature is None:
            return 1
        print(signature)
        return 0
    if command == "verify" and len(argv) == 3:
        # is_valid also checks the timestamp against the clock (5 minutes).
        ok = verifier.is_valid(body=body, timestamp=timestamp, signature=argv[2])
        print("valid" if ok else "invalid")
        return 0 if ok else 1
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
