"""An OAuth token endpoint and an authenticating proxy in front of fake-gcs-server (which
ignores credentials), for the service-account test of tests/gcs.rs.

    python3 gcs_auth.py PORT UPSTREAM_PORT DIR

makes two RSA keys, writes DIR/key.json (a service-account key whose token_uri is this
server's /token) and DIR/wrong-key.json (the same account, another key), then serves:

  POST /token   the JWT bearer grant (RFC 7523): the assertion's RS256 signature is checked
                with key.json's public key, and its iss, aud, scope and exp; answers a token.
  anything else forwarded to 127.0.0.1:UPSTREAM_PORT when it carries a token issued here
                (Authorization: Bearer ...), refused with 401 otherwise.

Every decision is a line of DIR/auth.log: `issued`, `refused-token REASON`, `forwarded`,
`refused-request`.
"""

import base64
import http.client
import http.server
import json
import os
import sys
import threading
import time
import urllib.parse

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

PORT, UPSTREAM, DIR = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
EMAIL = "mover@btp-test.iam.gserviceaccount.com"
TOKEN_URI = f"http://127.0.0.1:{PORT}/token"
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}

lock = threading.Lock()
issued = set()


def log(line):
    with lock, open(os.path.join(DIR, "auth.log"), "a") as f:
        f.write(line + "\n")


def key_file(name, key):
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    doc = {
        "type": "service_account",
        "project_id": "btp-test",
        "private_key_id": name,
        "private_key": pem,
        "client_email": EMAIL,
        "token_uri": TOKEN_URI,
    }
    with open(os.path.join(DIR, name), "w") as f:
        json.dump(doc, f)


good = rsa.generate_private_key(public_exponent=65537, key_size=2048)
key_file("key.json", good)
key_file("wrong-key.json", rsa.generate_private_key(public_exponent=65537, key_size=2048))
public = good.public_key()


def b64(part):
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def check_assertion(jwt):
    head, claims, sig = jwt.split(".")
    if json.loads(b64(head)).get("alg") != "RS256":
        return "alg"
    try:
        public.verify(b64(sig), f"{head}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())
    except Exception:
        return "signature"
    c = json.loads(b64(claims))
    if c.get("iss") != EMAIL:
        return "iss"
    if c.get("aud") != TOKEN_URI:
        return "aud"
    if "devstorage" not in c.get("scope", ""):
        return "scope"
    if not c.get("exp", 0) > time.time():
        return "exp"
    return None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self, status, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def token(self, body):
        form = urllib.parse.parse_qs(body.decode())
        grant = form.get("grant_type", [""])[0]
        if grant != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            log("refused-token grant_type")
            return self.answer(400, b'{"error":"unsupported_grant_type"}')
        wrong = check_assertion(form.get("assertion", [""])[0])
        if wrong:
            log(f"refused-token {wrong}")
            return self.answer(401, b'{"error":"invalid_grant"}')
        token = "ya29.btp-test-" + base64.urlsafe_b64encode(os.urandom(12)).decode()
        with lock:
            issued.add(token)
        log("issued")
        doc = {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}
        self.answer(200, json.dumps(doc).encode(), [("Content-Type", "application/json")])

    def handle_any(self):
        body = self.body()
        if self.command == "POST" and self.path == "/token":
            return self.token(body)
        auth = self.headers.get("Authorization", "")
        with lock:
            known = auth.startswith("Bearer ") and auth[7:] in issued
        if not known:
            log(f"refused-request {self.command} {self.path}")
            return self.answer(401, b'{"error":{"code":401,"message":"no valid token"}}')
        up = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        headers["Content-Length"] = str(len(body))
        up.request(self.command, self.path, body=body, headers=headers)
        resp = up.getresponse()
        data = resp.read()
        log("forwarded")
        self.answer(
            resp.status,
            data,
            [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP | {"content-length"}],
        )
        up.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = handle_any


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
