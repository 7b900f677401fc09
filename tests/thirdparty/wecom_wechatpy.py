#!/usr/bin/env python3
"""WeCom crypto done by a third party: wechatpy's WeChatCrypto.

Driven by tests/platforms_cn.rs. Every mode prints one JSON object on stdout.

  encrypt TOKEN AES_KEY CORP_ID TIMESTAMP NONCE   < plaintext message XML
      -> {"msg_signature", "timestamp", "nonce", "body"}  (body: the POST XML)
  decrypt TOKEN AES_KEY CORP_ID                   < the gateway's passive reply XML
      -> {"plaintext", "fields"}  (signature checked and decrypted by wechatpy)
  echostr TOKEN AES_KEY CORP_ID TIMESTAMP NONCE ECHO
      -> {"msg_signature", "echostr"}  (a URL-verification challenge)

Exit status 3 when wechatpy is not importable, so the caller can tell
"not installed" from "failed".
"""

import json
import sys

try:
    import xmltodict
    from wechatpy.crypto import _get_signature
    from wechatpy.enterprise.crypto import PrpCrypto, WeChatCrypto
except ImportError as e:  # pragma: no cover - reported to the Rust test
    print(f"wechatpy is not installed: {e}", file=sys.stderr)
    sys.exit(3)


def text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def main(argv):
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    mode, token, aes_key, corp_id = argv[:4]
    crypto = WeChatCrypto(token, aes_key, corp_id)
    if mode == "encrypt":
        timestamp, nonce = argv[4], argv[5]
        message = sys.stdin.read()
        body = text(crypto.encrypt_message(message, nonce, timestamp))
        outer = xmltodict.parse(body)["xml"]
        out = {
            "msg_signature": outer["MsgSignature"],
            "timestamp": outer["TimeStamp"],
            "nonce": outer["Nonce"],
            "body": body,
        }
    elif mode == "decrypt":
        reply = sys.stdin.read()
        outer = xmltodict.parse(reply)["xml"]
        plaintext = text(
            crypto.decrypt_message(
                reply, outer["MsgSignature"], outer["TimeStamp"], outer["Nonce"]
            )
        )
        out = {"plaintext": plaintext, "fields": xmltodict.parse(plaintext)["xml"]}
    elif mode == "echostr":
        timestamp, nonce, echo = argv[4], argv[5], argv[6]
        encrypted = text(PrpCrypto(crypto.key).encrypt(echo, corp_id))
        signature = _get_signature(token, timestamp, nonce, encrypted)
        # wechatpy must accept its own challenge, or the test proves nothing.
        assert text(crypto.check_signature(signature, timestamp, nonce, encrypted)) == echo
        out = {"msg_signature": signature, "echostr": encrypted}
    else:
        print(f"unknown mode {mode!r}", file=sys.stderr)
        return 2
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
