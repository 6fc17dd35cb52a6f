"""CI step: fuzz a running herald with schemathesis against its own
/openapi.json, once with the service key and once with a user token, then
parse /metrics with prometheus_client's text parser.

Usage: fuzz_api.py BASE_URL SERVICE_KEY MAX_EXAMPLES (run inside the venv).
The server must have been started with `--demo` (org_acme, users alice, bob,
carol) and STRIPE_WEBHOOK_SECRET set, so the webhook answers random bodies
with 400 (bad signature) rather than 503 (not configured).
Exits non-zero on any failure, and when a run's number of test cases
cannot be read or is 0; prints the number of test cases run.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)


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
        sys.exit(f"setup request failed: {status} {body}")
    return body


def setup(base, key):
    """A user token issued with the service key, and ids that exist, so the
    fuzzer reaches handlers' logic instead of stopping at 404."""
    token = must(call(base, "POST", "/v1/users/alice/tokens", key), 201)["token"]
    event = {
        "type": "system.announcement",
        "recipients": ["alice"],
        "payload": {"title": "fuzz", "body": "seed row"},
    }
    event_id = must(call(base, "POST", "/v1/events", key, event), 202)["eventId"]
    inbox = []
    deadline = time.monotonic() + 10
    while not inbox and time.monotonic() < deadline:
        inbox = must(call(base, "GET", "/v1/inbox", token), 200)["items"]
        time.sleep(0.1)
    if not inbox:
        sys.exit("setup: the seed notification never reached alice's inbox")
    ids = [event_id, "alice", "carol"] + [item["id"] for item in inbox]
    return token, ids


def config(ids):
    """Known ids are used most of the time; the rest stay random (404s)."""
    values = ", ".join(json.dumps(v) for v in ids)
    return f"""
[dictionaries.orgs]
values = ["org_acme"]
[dictionaries.members]
values = ["mem_alice", "mem_bob", "mem_carol"]
[dictionaries.ids]
values = [{values}]

[parameters]
"path.org" = {{ dictionary = "orgs", probability = 0.8 }}
"path.member" = {{ dictionary = "members", probability = 0.8 }}
"path.id" = {{ dictionary = "ids", probability = 0.6 }}
"""


def fuzz(base, label, credential, conf_path, max_examples):
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "schemathesis"),
        "--config-file",
        conf_path,
        "run",
        f"{base}/openapi.json",
        "--header",
        f"Authorization: Bearer {credential}",
        "--checks",
        CHECKS,
        "--max-examples",
        str(max_examples),
        # One worker: hypothesis on CPython 3.11 has crashed drawing in
        # several threads at once ("AST constructor recursion depth").
        "--workers",
        "1",
        "--seed",
        os.environ.get("FUZZ_SEED", "8025"),
        "--no-color",
        # A stream never ends: it is tested in tests/it/inbox_stream.rs.
        "--exclude-path",
        "/v1/inbox/stream",
    ]
    print(f"--- schemathesis with the {label}", flush=True)
    run = subprocess.run(cmd, capture_output=True, text=True)
    # The credential must not reach CI logs.
    out = (run.stdout + run.stderr).replace(credential, "<redacted>")
    print(out, flush=True)
    if run.returncode != 0:
        sys.exit(f"schemathesis with the {label} failed (exit {run.returncode})")
    return generated_cases(label, out)


def generated_cases(label, out):
    """The number of test cases from schemathesis's summary ("Test cases:"
    then "  N generated, N passed"). A run that generated nothing tested
    nothing, and a summary this script cannot read could hide that: both
    fail the step instead of counting as 0."""
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)
    if re.search(r"^\s*No test cases were generated", out, re.MULTILINE):
        sys.exit(f"schemathesis with the {label} generated 0 test cases: nothing was tested")
    cases = re.search(r"^Test cases:\s*\n\s*(\d+) generated\b", out, re.MULTILINE)
    if cases is None:
        sys.exit(
            f"schemathesis with the {label}: cannot find the number of generated test "
            "cases ('Test cases:' followed by 'N generated') in its output above; "
            "its summary format may have changed"
        )
    count = int(cases.group(1))
    if count == 0:
        sys.exit(f"schemathesis with the {label} generated 0 test cases: nothing was tested")
    return count


def check_metrics(base):
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        ctype = resp.headers.get("Content-Type", "")
        text = resp.read().decode()
    if not ctype.startswith("text/plain"):
        sys.exit(f"/metrics Content-Type is {ctype!r}")
    totals = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            totals[s.name] = totals.get(s.name, 0.0) + s.value
    for name in [
        "herald_events_accepted_total",
        "herald_http_requests_total",
        "herald_notifications_sent_total",
    ]:
        if totals.get(name, 0) <= 0:
            sys.exit(f"/metrics: {name} did not move during the fuzz run")
    print(f"/metrics parses with prometheus_client: {len(totals)} sample names")


def main():
    base, key, max_examples = sys.argv[1], sys.argv[2], int(sys.argv[3])
    token, ids = setup(base, key)
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(config(ids))
        conf_path = f.name
    try:
        total = fuzz(base, "service key", key, conf_path, max_examples)
        total += fuzz(base, "user token", token, conf_path, max_examples)
    finally:
        os.unlink(conf_path)
    check_metrics(base)
    print(f"schemathesis: {total} test cases, 0 server errors, 0 schema violations")


if __name__ == "__main__":
    main()
