"""Independent SM4 / SM4-GCM / HMAC-SM3 for tests/sm4_interop.rs, on
pyca/cryptography (OpenSSL's SM4 and SM3).

Reads a JSON list of operations on stdin, writes a JSON list of results
(hex strings, or null when a decryption does not authenticate). Byte
strings are hex in both directions.

  {"op": "ecb_enc" | "ecb_dec", "key", "data"}
  {"op": "gcm_enc", "key", "nonce", "aad", "data"}        -> ciphertext || tag
  {"op": "gcm_dec", "key", "nonce", "aad", "data"}        (ciphertext || tag) -> plaintext | null
  {"op": "hmac_sm3", "key", "data"}
"""
import json
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def run(op):
    h = {k: bytes.fromhex(v) for k, v in op.items() if k != "op"}
    kind = op["op"]
    if kind in ("ecb_enc", "ecb_dec"):
        c = Cipher(algorithms.SM4(h["key"]), modes.ECB())
        ctx = c.encryptor() if kind == "ecb_enc" else c.decryptor()
        return (ctx.update(h["data"]) + ctx.finalize()).hex()
    if kind == "gcm_enc":
        e = Cipher(algorithms.SM4(h["key"]), modes.GCM(h["nonce"])).encryptor()
        e.authenticate_additional_data(h["aad"])
        body = e.update(h["data"]) + e.finalize()
        return (body + e.tag).hex()
    if kind == "gcm_dec":
        body, tag = h["data"][:-16], h["data"][-16:]
        d = Cipher(algorithms.SM4(h["key"]), modes.GCM(h["nonce"], tag)).decryptor()
        d.authenticate_additional_data(h["aad"])
        try:
            return (d.update(body) + d.finalize()).hex()
        except InvalidTag:
            return None
    if kind == "hmac_sm3":
        m = hmac.HMAC(h["key"], hashes.SM3())
        m.update(h["data"])
        return m.finalize().hex()
    raise ValueError(kind)


if __name__ == "__main__":
    json.dump([run(op) for op in json.load(sys.stdin)], sys.stdout)
