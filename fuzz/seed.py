#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/seeds/<target>/ from the published
vectors in shared/vectors/platforms.json (plus a few hand-written bodies that
take the harness-signed paths into each parser).

Input layout (see fuzz_targets/common/mod.rs):
    ctl byte | field_0 NUL ... field_{n-1} NUL | body
Usage: python3 fuzz/seed.py [path/to/platforms.json]
"""
import hashlib
import json
import os
import shutil
import sys
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    HERE, "..", "..", "shared", "vectors", "platforms.json")
V = json.load(open(VECTORS))
OUT = os.path.join(HERE, "seeds")


def b(x):
    return x if isinstance(x, bytes) else x.encode()


def frame(ctl, fields, body):
    return bytes([ctl]) + b"".join(b(f) + b"\0" for f in fields) + b(body)


def j(v):
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


seeds = {}


def add(target, data):
    seeds.setdefault(target, []).append(b(data))


# ---------------------------------------------------------------- slack
s = V["slack"]["signature"]
add("slack_receive", frame(0, [s["timestamp"], s["signature"]], s["body"]))
add("slack_receive", frame(0, [s["timestamp"], "v0=00"], s["body"]))
add("slack_receive", frame(0, ["1531420000", s["signature"]], s["body"]))
SLACK_TS = s["timestamp"]
slack_bodies = [
    {"type": "url_verification", "token": "t", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"},
    {"type": "event_callback", "team_id": "T1", "event_id": "Ev1", "event": {
        "type": "message", "channel": "C1", "user": "U1", "ts": "1.2",
        "text": "<@U0BOT|bot> hi &lt;b&gt; &amp; <@U2>", "channel_type": "im"}},
    {"type": "event_callback", "event_id": "Ev2", "event": {
        "type": "app_mention", "channel": "C1", "user": "U1", "ts": "1.3", "thread_ts": "1.0",
        "team": "T2", "text": "<@U0BOT> hello", "channel_type": "mpim", "blocks": []}},
    {"type": "event_callback", "event_id": "Ev3", "event": {
        "type": "message", "bot_id": "B1", "channel": "C1", "ts": "1", "text": "x"}},
    {"type": "event_callback", "event_id": "Ev4", "event": {
        "type": "message", "subtype": "message_changed", "channel": "C1", "ts": "1"}},
    {"type": "event_callback", "event_id": "Ev5", "event": {
        "type": "message", "channel": "C1", "user": "U1", "ts": "1", "text": "<@U1>"}},
    {"type": "event_callback", "event_id": "Ev6", "event": {"type": "reaction_added"}},
    {"type": "app_rate_limited"},
]
for body in slack_bodies:
    add("slack_receive", frame(1, [SLACK_TS, ""], j(body)))
add("slack_receive", frame(1, [SLACK_TS, ""], "payload=%7B%22type%22%3A%22block_actions%22%7D"))
add("slack_receive", frame(1, [SLACK_TS, ""], "command=/x&text=y"))

# ---------------------------------------------------------------- discord
d = V["discord"]["ping_signed_with_test1_key"]
add("discord_receive", frame(0, [d["signature"], d["timestamp"]], d["body"]))
add("discord_receive", frame(0, [d["signature"].upper(), d["timestamp"]], d["body"]))
add("discord_receive", frame(0, ["00" * 64, d["timestamp"]], d["body"]))
cmd = {"id": "787053080478613555", "token": "ThisIsATokenFromDiscordThatIsVeryLong", "type": 2,
       "application_id": "123456", "guild_id": "42", "channel_id": "7",
       "channel": {"id": "7", "type": 11},
       "member": {"user": {"id": "99", "username": "bob", "global_name": "Bob"}},
       "data": {"name": "ask", "options": [
           {"type": 3, "name": "q", "value": "hello"},
           {"type": 6, "name": "who", "value": "55"},
           {"type": 4, "name": "n", "value": 3},
           {"type": 5, "name": "b", "value": True}]}}
sub = {"id": "1", "token": "tok", "type": 2, "application_id": "123456", "context": 2,
       "user": {"id": "99", "username": "bob"},
       "data": {"name": "cfg", "options": [{"type": 2, "name": "grp", "options": [
           {"type": 1, "name": "set", "options": [{"type": 9, "name": "m", "value": "77"}]}]}]}}
menu = {"id": "2", "token": "tok", "type": 2, "application_id": "123456",
        "user": {"id": "99"}, "channel_id": "8",
        "data": {"name": "Summarize", "type": 3, "target_id": "5",
                 "resolved": {"messages": {"5": {"content": "the target text"}}}}}
botcmd = {"id": "3", "token": "tok", "type": 2, "application_id": "123456",
          "user": {"id": "98", "bot": True}, "data": {"name": "x"}}
for body in [cmd, sub, menu, botcmd, {"type": 1}, {"type": 3, "id": "4"}, {"type": 4}]:
    add("discord_receive", frame(1, ["", d["timestamp"]], j(body)))

# ---------------------------------------------------------------- telegram
t = V["telegram"]["sample_update"]["body"]
SECRET = "s3cr3t_token-1"
add("telegram_receive", frame(0, [SECRET], t))
add("telegram_receive", frame(0, ["wrong"], t))
tg = [
    {"update_id": 1, "edited_message": {"message_id": 5, "from": {"id": 1, "first_name": "A"},
                                        "chat": {"id": -100, "type": "supergroup"}, "text": "edited",
                                        "message_thread_id": 9}},
    {"update_id": 2, "callback_query": {"id": "cb1", "from": {"id": 1, "username": "u"}, "data": "btn",
                                        "message": {"message_id": 6, "chat": {"id": 3, "type": "private"}}}},
    {"update_id": 3, "callback_query": {"id": "cb2", "from": {"id": 1}, "data": "inline"}},
    {"update_id": 4, "message": {"message_id": 7, "from": {"id": 2, "first_name": "\u00e9"},
                                 "chat": {"id": "@chan", "type": "channel"},
                                 "caption": "\U0001F600 @bob hi", "caption_entities": [
                                     {"type": "mention", "offset": 3, "length": 4},
                                     {"type": "text_mention", "offset": 0, "length": 2, "user": {"id": 8}}]}},
    {"update_id": 5, "message": {"message_id": 8, "from": {"id": 2, "is_bot": True},
                                 "chat": {"id": 3}, "text": "bot"}},
    {"update_id": "6", "message": {"message_id": 9, "from": {"id": 2}, "chat": {"id": 3, "type": "group"},
                                   "text": "/start@bot x", "entities": [
                                       {"type": "bot_command", "offset": 0, "length": 10},
                                       {"type": "mention", "offset": 18446744073709551615, "length": 2}]}},
    {"update_id": 7, "channel_post": {}},
]
for body in tg:
    add("telegram_receive", frame(1, [""], j(body)))

# ---------------------------------------------------------------- feishu
fd, fs = V["feishu"]["decrypt"], V["feishu"]["signature"]
# bit0 = encrypted adapter, bit1 = harness signs, bit2 = harness encrypts.
add("feishu_receive", frame(1, [fs["timestamp"], fs["nonce"], fs["signature"]], fs["body"]))
add("feishu_receive", frame(1, [fs["timestamp"], fs["nonce"], fs["signature"].upper()], fs["body"]))
add("feishu_receive", frame(1, ["1699999000", fs["nonce"], fs["signature"]], fs["body"]))
v2 = {"schema": "2.0", "header": {"event_id": "ev1", "token": "vtoken", "event_type": "im.message.receive_v1",
                                  "tenant_key": "tk"},
      "event": {"sender": {"sender_id": {"open_id": "ou_1", "user_id": "u1", "union_id": "on_1"},
                           "sender_type": "user"},
                "message": {"message_id": "om_1", "root_id": "om_0", "parent_id": "om_0", "chat_id": "oc_1",
                            "chat_type": "group", "message_type": "text",
                            "content": j({"text": "@_user_1 hello @_all world @_x"}),
                            "mentions": [{"key": "@_user_1", "id": {"open_id": "ou_bot"}}]}}}
v1 = {"uuid": "u1", "token": "vtoken", "type": "event_callback",
      "event": {"type": "message", "msg_type": "text", "open_message_id": "om_2", "open_id": "ou_2",
                "open_chat_id": "oc_2", "chat_type": "private", "text": "@_user_1 hi",
                "text_without_at_bot": "hi", "root_id": "", "tenant_key": "tk", "user_open_id": "ou_2"}}
chal = {"challenge": "ajls384kdjx98XX", "token": "vtoken", "type": "url_verification"}
bot = json.loads(j(v2)); bot["event"]["sender"]["sender_type"] = "app"
img = json.loads(j(v2)); img["event"]["message"]["message_type"] = "image"
other = {"schema": "2.0", "header": {"token": "vtoken", "event_type": "im.chat.member.bot.added_v1"}}
for body in [v2, v1, chal, bot, img, other]:
    add("feishu_receive", frame(0, ["", "", ""], j(body)))              # token-only route
    add("feishu_receive", frame(7, [fs["timestamp"], "n1", ""], j(body)))  # encrypted + signed
add("feishu_receive", frame(5, [], j(chal)))  # encrypted challenge, no signature header
add("feishu_receive", frame(3, [fs["timestamp"], "n1", ""], j(v2)))  # signed plaintext on encrypted route

add("feishu_decrypt", frame(0, [fd["encrypt_key"]], fd["encrypt"]))
add("feishu_decrypt", frame(3, [""], fd["encrypt"]))
add("feishu_decrypt", frame(1, [fd["encrypt_key"]], fd["plaintext"]))
add("feishu_decrypt", frame(2, [fd["encrypt_key"]], b"I" * 16 + b"hello world" + bytes([5] * 5)))
add("feishu_decrypt", frame(2, [fd["encrypt_key"]], b"I" * 16 + bytes([16] * 16)))

# ---------------------------------------------------------------- wecom
off, leg, rep = V["wecom"]["official_sample"], V["wecom"]["legacy_sample"], V["wecom"]["encrypt_reply"]
dt = V["dingtalk"]["event_crypto"]


def q(**kw):
    return "&".join(f"{k}={urllib.parse.quote(v, safe='')}" for k, v in kw.items())


def wrap(corp, enc):
    return f"<xml><ToUserName><![CDATA[{corp}]]></ToUserName><Encrypt><![CDATA[{enc}]]></Encrypt><AgentID><![CDATA[218]]></AgentID></xml>"


for xml in [off["message"]["body_xml"], off["message"]["plaintext"], rep["reply_xml"],
            "<?xml version=\"1.0\"?><!-- c --><xml><A>1&amp;2&#x4e2d;&#20013;</A><B><![CDATA[x]]>y<![CDATA[]]]]><![CDATA[>]]></B><C/><D><E>nested</E></D><?pi x?></xml>",
            "<xml><Content>&lt;&gt;&apos;&quot;</Content></xml>",
            "<!DOCTYPE xml [<!ENTITY e \"x\">]><xml><A>&e;</A></xml>",
            "<xml><A>1</A></xml><xml/>"]:
    add("wecom_xml", xml)
legacy_plain = ("<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>"
                "<FromUserName><![CDATA[mycreate]]></FromUserName><CreateTime>1409659813</CreateTime>"
                "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hello]]></Content>"
                "<MsgId>4561255354251345929</MsgId><AgentID>218</AgentID></xml>")
# ctl: mode | bit2 legacy | bit3 GET | bits4-5 clock
ov, om = off["verify_url"], off["message"]
lv, lm = leg["verify_url"], leg["message"]
add("wecom_receive", frame(0x18, [q(msg_signature=ov["msg_signature"], timestamp=ov["timestamp"],
                                    nonce=ov["nonce"], echostr=ov["echostr"]), "", ""], ""))
add("wecom_receive", frame(0x18, [f"msg_signature={ov['msg_signature']}&timestamp={ov['timestamp']}"
                                  f"&nonce={ov['nonce']}&echostr={ov['echostr']}", "", ""], ""))
add("wecom_receive", frame(0x00, [q(msg_signature=om["msg_signature"], timestamp=om["timestamp"],
                                    nonce=om["nonce"]), "", ""], om["body_xml"]))
add("wecom_receive", frame(0x3C, [q(msg_signature=lv["msg_signature"], timestamp=lv["timestamp"],
                                    nonce=lv["nonce"], echostr=lv["echostr"]), "", ""], ""))
add("wecom_receive", frame(0x24, [q(msg_signature=lm["msg_signature"], timestamp=lm["timestamp"],
                                    nonce=lm["nonce"]), "", ""], wrap(leg["corp_id"], lm["encrypt"])))
add("wecom_receive", frame(0x01, [om["timestamp"], om["nonce"], ""], om["body_xml"]))
add("wecom_receive", frame(0x02, [om["timestamp"], om["nonce"], ""], om["plaintext"]))
add("wecom_receive", frame(0x26, [lm["timestamp"], lm["nonce"], ""], legacy_plain))
add("wecom_receive", frame(0x02, [om["timestamp"], om["nonce"], ""],
                           om["plaintext"].replace("<MsgType>text", "<MsgType>event")))
add("wecom_receive", frame(0x1A, [ov["timestamp"], ov["nonce"], ""], ov["reply"]))
add("wecom_receive", frame(0x03, [om["timestamp"], om["nonce"], "wrong_corp"], om["plaintext"]))
add("wecom_receive", frame(0x02, ["1476400000", om["nonce"], ""], om["plaintext"]))

# ---------------------------------------------------------------- wxcrypt
# ctl: mode | bits2-3 key (0 official, 1 legacy, 2 encrypt_reply, 3 dingtalk)
add("wxcrypt_decrypt", frame(0, [off["corp_id"]], om["encrypt"]))
add("wxcrypt_decrypt", frame(0, [off["corp_id"]], ov["echostr"]))
add("wxcrypt_decrypt", frame(4, [leg["corp_id"]], lm["encrypt"]))
add("wxcrypt_decrypt", frame(8, [rep["corp_id"]], rep["encrypt"]))
add("wxcrypt_decrypt", frame(12, [dt["owner_key"]], dt["encrypt"]))
add("wxcrypt_decrypt", frame(0, ["wrong"], om["encrypt"]))
add("wxcrypt_decrypt", frame(1, [off["corp_id"]], "hello"))
add("wxcrypt_decrypt", frame(9, [rep["corp_id"]], rep["reply_xml"]))
framed = b"R" * 16 + (5).to_bytes(4, "big") + b"hello" + b"rid"
framed += bytes([32 - len(framed) % 32] * (32 - len(framed) % 32))
add("wxcrypt_decrypt", frame(2, ["rid"], framed))
add("wxcrypt_decrypt", frame(3, [""], off["encoding_aes_key"]))
add("wxcrypt_decrypt", frame(3, [""], dt["aes_key"]))

# ---------------------------------------------------------------- dingtalk
r = V["dingtalk"]["robot_sign"]
robot = {"msgId": "msgABC==", "msgtype": "text", "text": {"content": " hello bot "},
         "senderStaffId": "staff1", "senderId": "$:LWCP_v1:$abc", "senderNick": "Zhang San",
         "conversationId": "cidXYZ==", "conversationType": "2", "chatbotCorpId": "dingcorp",
         "chatbotUserId": "$:LWCP_v1:$bot",
         "sessionWebhook": "https://oapi.dingtalk.com/robot/sendBySession?session=abc",
         "sessionWebhookExpiredTime": 1577265836757, "isInAtList": True,
         "atUsers": [{"dingtalkId": "$:LWCP_v1:$bot"}, {"dingtalkId": "$:LWCP_v1:$other", "staffId": "staff2"}]}
add("dingtalk_receive", frame(0, [r["timestamp"], r["sign"], ""], j(robot)))
add("dingtalk_receive", frame(8, [r["timestamp"], r["sign"], ""], j(robot)))
add("dingtalk_receive", frame(0, [r["timestamp"], "AAAA", ""], j(robot)))
for mut in [{}, {"conversationType": "1", "senderStaffId": ""},
            {"senderStaffId": "$:LWCP_v1:$bot"}, {"msgtype": "picture"},
            {"sessionWebhook": "https://evil.example/robot"},
            {"sessionWebhook": "https://oapi.dingtalk.com:443@evil/x"}]:
    body = dict(robot); body.update(mut)
    add("dingtalk_receive", frame(1, [r["timestamp"]], j(body)))
add("dingtalk_receive", frame(1, [r["timestamp"][:-3]], j(robot)))
add("dingtalk_receive", frame(0x10, ["", "", f"signature={dt['signature']}&timestamp={dt['timestamp']}&nonce={dt['nonce']}"],
                              j({"encrypt": dt["encrypt"]})))
add("dingtalk_receive", frame(0x14, ["", "", f"msg_signature={dt['signature']}&timestamp={dt['timestamp']}&nonce={dt['nonce']}"],
                              j({"encrypt": dt["encrypt"]})))
add("dingtalk_receive", frame(0x12, [dt["timestamp"], dt["nonce"], ""], j({"encrypt": dt["encrypt"]})))
add("dingtalk_receive", frame(0x13, [dt["timestamp"], dt["nonce"]], dt["plaintext"]))
add("dingtalk_receive", frame(0x13, [dt["timestamp"], dt["nonce"]], j({"EventType": "user_add_org"})))
add("dingtalk_receive", frame(0x13, [dt["timestamp"], dt["nonce"], "other_key"], dt["plaintext"]))

# ---------------------------------------------------------------- generic
for body in [
    {"platform": "web", "sender": {"id": "u1", "name": "Alice"},
     "content": {"text": "hi", "attachments": [{"type": "image", "url": "https://x/y.png"}]},
     "timestamp": 1700000000, "context": {"room_id": "r1", "thread_id": "t1", "chat_type": "group"}},
    {"content": {"text": ""}},
    {"content": {"text": "x", "attachments": [{"kind": "file", "name": "a", "mime_type": "text/plain"}]},
     "timestamp": "2024-01-01T00:00:00Z", "context": {"chat_type": "channel"}},
    {"content": {"text": "x"}, "context": {"chat_type": "weird"}},
    {"content": {"text": "x"}, "extra": 1},
]:
    add("generic_parse", j(body))

# ---------------------------------------------------------------- policy_load
# kind byte (0 security, 1 abac, 2 permissions, 3 dlp, 4 identities,
# 5 explain request) | file text. Every shipped and fixture policy, plus
# variants that reach the key files, rate scopes and error paths.
ROOT = os.path.join(HERE, "..")


def read(rel):
    return open(os.path.join(ROOT, rel), "rb").read()


KINDS = {"security_policy.yaml": 0, "abac.yaml": 1, "permissions.yaml": 2,
         "dlp.yaml": 3, "identities.yaml": 4}
for d in ["policies", "tests/fixtures/seed"]:
    for name in sorted(os.listdir(os.path.join(ROOT, d))):
        if name in KINDS:
            add("policy_load", bytes([KINDS[name]]) + read(f"{d}/{name}"))
add("policy_load", bytes([5]) + read("examples/request.json"))
for text in [
    "jwt_validation: { algorithms: [EdDSA], public_key: ed25519.pem, leeway: 5 }\n",
    "jwt_validation: { algorithms: [EdDSA], jwks: jwks.json }\n",
    "jwt_validation: { algorithms: [RS256], public_key: jwks.json }\n",
    "jwt_validation: { algorithms: [HS256, RS256], secret: x }\n",
    "jwt_validation: { algorithms: [HS512], secret: \"${MOLTGATE_FUZZ_UNSET:-0123456789abcdef0123456789abcdef}\" }\n",
    "jwt_validation: { issuer: i, audiences: [a, b], leeway: 0, algorithms: [HS384], secret: s3cret }\n",
    "rate_limiting:\n  global: { window: 1m, max_requests: 3 }\n  per_ip: { window: 250ms, max_requests: 1 }\n"
    "  per_user: { window: 1h30m, max_requests: 2 }\n  per_tenant: { window: 10, max_requests: 100 }\n"
    "  per_route: { /v1/messages: { window: 1s, max_requests: 2 } }\n  max_tracked_keys: 0\n",
    "rate_limiting: { per_ip: { window: 0s, max_requests: 0 } }\n",
    "ip_whitelist: [10.0.0.0/8, \"::ffff:192.168.0.0/120\", 2001:db8::/32, 127.0.0.1]\n"
    "ip_blacklist: [10.66.0.0/16, \"::/0\"]\ntrusted_proxies: [127.0.0.0/8, \"::1\"]\n"
    "client_ip_headers: [forwarded, x-forwarded-for]\n",
    "ip_whitelist: [10.0.0.0/33]\nip_blacklsit: []\n",
    "jwt_validation: { issuer: i, leeway: 999999999, secret: fz-0123456789abcdef0123456789abcdef }\n",
    "",
]:
    add("policy_load", bytes([0]) + b(text))
for text in [
    "policies:\n  - id: a\n    effect: Allow\n    resources: ['/x']\n    actions: [forward]\n    conditions: { ipRnage: 10.0.0.0/8 }\n",
    "policies:\n  - id: night\n    effect: Deny\n    resources: ['**']\n    actions: ['command:*']\n"
    "    conditions: { time: '22:00-06:00', timezone: Asia/Shanghai, roles: [oncall], claims.department: [sre] }\n"
    "  - id: any\n    effect: Allow\n    resources: ['/v1/*', '/hooks/**']\n    actions: ['*']\n    confirm: true\n",
    "policies: []\n",
]:
    add("policy_load", bytes([1]) + b(text))
add("policy_load", bytes([2]) + b"roles:\n  r: ['command:*', 'file:*:read']\nsubjects:\n  bob: [r]\n  'telegram:acme:12345678': [r, missing]\n")
add("policy_load", bytes([3]) + b"patterns:\n  iban:\n    regex: '[A-Z]{2}\\d{2}[A-Z0-9]{11,30}'\n    validate: iban\n    action: mask\n"
    b"    direction: egress\n    mask: { char: '#', keep_prefix: 2, keep_suffix: 2 }\n"
    b"  bad:\n    regex: '(unclosed'\n    action: block\nkeywords:\n  k:\n    words: ['\xef\xbc\xa1\xef\xbc\xa2', secret]\n    action: mask\n")
add("policy_load", bytes([4]) + b"people:\n  p1: ['wecom:corp1:u1', 'telegram:12345678']\n  p2: ['slak:U1', 'telegram:12345678']\n")
add("policy_load", bytes([5]) + b(j({"subject": {"id": "bob", "person": "zhangsan", "roles": ["oncall"], "tenant": "acme",
                                         "claims": {"department": "sre", "n": 1.5}},
                                         "resource": "/v1/messages", "action": "forward", "command": "/deploy",
                                         "environment": {"ip": "10.1.2.3", "time": "2025-03-04T23:30:00+08:00"}})))

# ---------------------------------------------------------------- dlp_mask
# The text, as is: cards, phones, ids, e-mails, secrets, and the evasions
# folding undoes (full-width digits, zero-width and bidi characters).
for text in [
    "card 4111 1111 1111 1111, again 4111111111111111 and 5500-0000-0000-0004",
    "amex 3782 822463 10005 diners 36227206271667 unionpay 6212345678901232 jcb 3530111333300000",
    "\uff14\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11 full-width",
    "4111\u200b1111\u200b1111\u200b1111 zero-width, 4111\u20131111\u20131111\u20131111 en dash",
    "order 41111111111111111 (17 digits) and sha 9f86d081884c7d659a2feaa0c55ad0154111111111111111",
    "tel 13812345678, +86 138 1234 5678, 0086-139-8765-4321, tel13812345678\u3002",
    "\u624b\u673a\uff11\uff13\uff18\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18 \u2067138\u20691234\u20665678",
    "id 11010519491231002X blocks, 110105194912310021 does not",
    "mail Alice.B+tag@mail.example.co.uk and x@y.z and a@\uff45xample.com",
    "AKIAIOSFODNN7EXAMPLE and ghp_0123456789abcdefghijABCDEFGHIJ012345",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA 4111111111111111\n-----END RSA PRIVATE KEY-----",
    "xoxb-1234567890-4111111111111111-abcdef sk-proj-abcdefghijklmnopqrstuvwx",
    "\u673a\u5bc6 CONFIDENTIAL internal only do not distribute 13812345678",
    "1381234567813812345678 4111111111111111 13812345678",
    "tel 13812345678\uffd3x (a finding's span takes in the \uffd3)",
    "y@dd.dddd13812345674cd2f and dddd13812345674cd2q: a hex token, then not",
    "a 4111111111111110 138 b 4111111111111110 13812345678",
    "",
]:
    add("dlp_mask", text)

# ---------------------------------------------------------------- jwt_verify
# ctl = verifier (0 HS256 scoped, 1 HS256, 2 EdDSA PEM, 3 EdDSA JWKS) | mode << 2.
import base64
import hmac as _hmac

JWT_SECRET = b"fz-7Qm2vX9kL4pW8tR3nB6yH1cJ5dG0sA-moltgate-fuzz"


def b64u(x):
    return base64.urlsafe_b64encode(b(x)).rstrip(b"=").decode()


def hs256(header, claims, key=JWT_SECRET):
    si = b64u(j(header)) + "." + b64u(j(claims))
    return si + "." + b64u(_hmac.new(key, si.encode(), hashlib.sha256).digest())


good = {"sub": "alice", "iss": "auth.example.com", "aud": "moltbot.api", "exp": 4102444800,
        "roles": ["admin", "user"], "tenant": "acme", "device_type": "mobile", "department": "sre"}
H = {"alg": "HS256", "typ": "JWT"}
for case in [0, 1]:
    add("jwt_verify", bytes([case | 1 << 2]) + b(hs256(H, good)))
    add("jwt_verify", bytes([case]) + b("Bearer " + hs256(H, good)))
    add("jwt_verify", bytes([case | 1 << 2 | 0x20]) + b(hs256(H, dict(good, exp=1000))))
    add("jwt_verify", bytes([case | 1 << 2]) + b(hs256(H, good, b"wrong")))
# Issuer and audience are required where configured (once missing, or a number, they passed).
add("jwt_verify", bytes([0 | 1 << 2]) + b(hs256(H, {"sub": "alice", "exp": 4102444800})))
add("jwt_verify", bytes([0 | 1 << 2]) + b(hs256(H, {"sub": "a", "exp": 4102444800, "iss": "auth.example.com"})))
add("jwt_verify", bytes([0 | 1 << 2]) + b(hs256(H, {"sub": "a", "exp": 4102444800, "aud": "moltbot.api"})))
add("jwt_verify", bytes([0 | 1 << 2]) + b(hs256(H, {"sub": "a", "exp": 4102444800, "iss": 5, "aud": "moltbot.api"})))
add("jwt_verify", bytes([0 | 1 << 2]) + b(hs256(H, {"sub": "a", "exp": 4102444800, "iss": "auth.example.com", "aud": 5})))
add("jwt_verify", bytes([0 | 1 << 2]) + b(hs256(H, {"sub": "a", "exp": 4102444800, "iss": ["auth.example.com", "x"], "aud": ["moltbot.api"]})))
add("jwt_verify", bytes([0 | 1 << 2]) + b(hs256(H, dict(good, iss=["auth.example.com", "x"], aud=[]))))
add("jwt_verify", bytes([0 | 1 << 2]) + b(hs256(H, dict(good, nbf=4102444800))))
add("jwt_verify", bytes([1 | 1 << 2]) + b(b64u(j({"alg": "none"})) + "." + b64u(j(good)) + "."))
add("jwt_verify", bytes([0]) + b"Basic dXNlcjpwYXNz")
add("jwt_verify", bytes([1]) + b"Bearer not.a.jwt")
for case in range(4):
    add("jwt_verify", bytes([case | 2 << 2]) + b(j(good)))
    add("jwt_verify", bytes([case | 2 << 2]) + b"not json")
    add("jwt_verify", bytes([case | 3 << 2]) + b(j({"sub": "bob", "roles": "a, b,,c", "tenant": 42, "x": True, "n": None})))
    add("jwt_verify", bytes([case | 3 << 2]) + b(j({"sub": 7})))
    add("jwt_verify", bytes([case | 3 << 2]) + b"carol")
    add("jwt_verify", bytes([case | 4 << 2]) + b(j({"alg": "HS256", "kid": "k1"})) + b"\0" + b(j({"sub": "a"})))
    add("jwt_verify", bytes([case | 4 << 2]) + b(j({"alg": "EdDSA", "kid": "k2", "crit": ["exp"]})) + b"\0" + b"dave")
    add("jwt_verify", bytes([case | 5 << 2]) + b"alice")
    add("jwt_verify", bytes([case | 6 << 2]) + b"sig\0" + b(j({"sub": "a"})))
    add("jwt_verify", bytes([case | 7 << 2]) + b"alice")

# ---------------------------------------------------------------- message_path
# ctl: route (0 generic, 1 telegram, 2 slack, 3 telegram passthrough) | 4 sign
# | 8 break the credential | 0x10 message text in the platform's shape | 0x20 GET
# | 0x40 variant | 0x80 peer 10.1.2.3; fields f0 (raw credential), f1 (JWT sub /
# Slack timestamp / breakage), f2 (X-Forwarded-For).
TEXTS = ["hello there", "my card is 4111 1111 1111 1111 and tel 13812345678",
         "\uff14\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11",
         "/reboot now", "/help", "/deploy v2", "AKIAIOSFODNN7EXAMPLE", "mail a.b@example.com 4111111111111111"]
for route in range(4):
    for i, text in enumerate(TEXTS):
        add("message_path", frame(route | 4 | 0x10 | (0x40 if i % 2 else 0), ["", "", ""], text))
    for brk in ["", "x", "xx"]:
        add("message_path", frame(route | 4 | 8 | 0x10, ["", brk], "hello 4111111111111111"))
    add("message_path", frame(route | 0x10, ["wrong", "1700000000"], "hello"))
    add("message_path", frame(route | 4 | 0x10 | 0x20, ["", ""], "hello"))
    add("message_path", frame(route | 4 | 0x10 | 0x80, ["", "", "10.66.1.1"], "hello"))
    add("message_path", frame(route | 4 | 0x10, ["", "", "198.51.100.7, 10.1.2.3"], "from behind a proxy"))
add("message_path", frame(0 | 4 | 0x10 | 0x80, ["", "bob"], "acme engineer from the VPN"))
add("message_path", frame(0 | 4 | 0x10, ["", "demo-admin"], "/reboot now"))  # admin by permissions.yaml: 202
add("message_path", frame(0 | 4, ["", ""], j({"platform": "web", "sender": {"id": "u1"},
                                               "content": {"text": "hi 4111111111111111", "attachments": [{"type": "file", "url": "https://x/y"}]},
                                               "context": {"chat_type": "channel", "thread_id": "t"}})))
add("message_path", frame(0, ["Bearer " + hs256(H, good)], j({"content": {"text": "forged"}})))
add("message_path", frame(1 | 4, ["", ""], j({"update_id": 1, "edited_message": {"message_id": 1, "date": 1, "chat": {"id": 5, "type": "private"}, "from": {"id": 5}, "text": "x"}})))
add("message_path", frame(1 | 4, ["", ""], j({"update_id": 2, "callback_query": {"id": "c", "from": {"id": 5}, "data": "/reboot"}})))
add("message_path", frame(2 | 4, ["", ""], j({"type": "url_verification", "token": "t", "challenge": "abc"})))
add("message_path", frame(2 | 4, ["", ""], "command=%2Freboot&text=now&user_id=U0DEMO0001&channel_id=C1&team_id=T0DEMO&response_url=http%3A%2F%2F127.0.0.1%3A9%2Fc"))
add("message_path", frame(3 | 4, ["", ""], j({"update_id": 3, "message": {"message_id": 3, "date": 1, "chat": {"id": 5, "type": "private"}, "from": {"id": 5}, "text": "card 4111111111111111"}})))

for target, items in seeds.items():
    d = os.path.join(OUT, target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for data in items:
        name = hashlib.sha1(data).hexdigest()
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    print(f"{target}: {len(items)} seeds")
