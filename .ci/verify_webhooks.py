"""CI step: the official Standard Webhooks library verifies herald's
signatures. Subscribes an endpoint served here to a running herald, makes
an email get sent and an inbox row get read, and checks every message
received with standardwebhooks.Webhook(secret).verify, and that a tampered
body is refused. The endpoint is deleted at the end.

Usage: verify_webhooks.py BASE_URL SERVICE_KEY (run inside the venv; the
server started with --demo, so users alice, bob and carol exist).
"""

import http.server
import json
import sys
import threading
import time
import urllib.error
import urllib.request

from standardwebhooks import Webhook, WebhookVerificationError

RECEIVED = []


class Endpoint(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        RECEIVED.append((headers, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def call(base, method, path, token, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def must(result, *ok):
    status, body = result
    if status not in ok:
        sys.exit(f"request failed: {status} {body}")
    return body


def main(base, key):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    events = ["delivery.sent", "inbox.seen", "inbox.read"]
    hook = must(call(base, "POST", "/v1/webhooks", key, {"url": url, "events": events}), 201)
    try:
        token = must(call(base, "POST", "/v1/users/alice/tokens", key), 201)["token"]
        event = {
            "type": "org.member.role_changed",
            "recipients": ["alice"],
            "subjectId": "mem_ci_webhooks",
            "payload": {"newRole": "admin", "before": "member", "orgName": "Acme",
                        "actorName": "CI"},
        }
        event_id = must(call(base, "POST", "/v1/events", key, event), 202)["eventId"]
        row = None
        deadline = time.monotonic() + 20
        while row is None and time.monotonic() < deadline:
            items = must(call(base, "GET", "/v1/inbox", token), 200)["items"]
            row = next((i["id"] for i in items if i["type"] == "org.member.role_changed"), None)
            time.sleep(0.1)
        if row is None:
            sys.exit(f"event {event_id} never reached alice's inbox")
        must(call(base, "POST", f"/v1/inbox/{row}/read", token, {}), 204)
        while len(RECEIVED) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        kinds = sorted(json.loads(body)["type"] for _, body in RECEIVED)
        if kinds != sorted(events):
            sys.exit(f"expected one message of each of {events}, got {kinds}")
        verifier = Webhook(hook["secret"])
        for headers, body in RECEIVED:
            verified = verifier.verify(body, headers)
            if verified["data"].get("eventId") != event_id:
                sys.exit(f"a message about another event: {verified}")
            try:
                verifier.verify(body.replace(b'"data"', b'"dat4"', 1), headers)
                sys.exit("a tampered body verified")
            except WebhookVerificationError:
                pass
        print(f"standardwebhooks verified {len(RECEIVED)} messages: {', '.join(kinds)}")
    finally:
        call(base, "DELETE", f"/v1/webhooks/{hook['id']}", key)
        server.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
