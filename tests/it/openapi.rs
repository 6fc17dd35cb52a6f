//! `GET /openapi.json` against the real binary: the served document lists
//! exactly the routes of the routing table, every documented operation is
//! served (no 404 "no such endpoint", no 405), and the error answers the
//! fuzzer sees most (401 without a token, 400 from the webhook for a bad
//! signature) are the ones the document declares. schemathesis runs over the
//! whole document in `.ci/run` (.ci/fuzz_api.py).

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::TestServer;

fn document(server: &TestServer) -> Value {
    let response = server.request_raw("GET", "/openapi.json", &[], None);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    let doc = response.json();
    assert_eq!(doc["openapi"], "3.1.0");
    doc
}

/// (METHOD, path pattern, operation) for every operation of the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths").iter() {
        for (method, op) in item.as_object().expect("path item") {
            ops.push((method.to_ascii_uppercase(), path.clone(), op.clone()));
        }
    }
    ops
}

fn declares(op: &Value, status: u16) -> bool {
    op["responses"].get(status.to_string()).is_some()
}

/// Path parameters filled with a value no resource has.
fn concrete(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|s| if s.starts_with('{') { "zz_none" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn the_served_document_lists_exactly_the_routing_table() {
    let server = TestServer::start();
    let doc = document(&server);
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    // The HTML pages are routes too, deliberately outside the API document.
    let routed: BTreeSet<(String, String)> = herald::http::ROUTES
        .iter()
        .filter(|r| r.is_documented())
        .map(|r| (r.method.to_string(), r.pattern.to_string()))
        .collect();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "served but not documented: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "documented but not routed: {unserved:?}"
    );
    for path in [
        "/healthz",
        "/metrics",
        "/openapi.json",
        "/webhooks/stripe",
        "/v1/events",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["serviceKey"]["scheme"], "bearer");
    assert_eq!(schemes["userToken"]["scheme"], "bearer");
    assert_eq!(schemes["stripeSignature"]["name"], "Stripe-Signature");
}

#[test]
fn every_documented_operation_is_served() {
    let server = TestServer::start();
    let doc = document(&server);
    for (method, pattern, op) in operations(&doc) {
        let path = concrete(&pattern);
        let (status, body) = server.request(&method, &path, &[], None);
        assert_ne!(
            status, 405,
            "{method} {path} is documented but not allowed: {body}"
        );
        let no_route = status == 404
            && body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("no such endpoint"));
        assert!(!no_route, "{method} {path} is documented but not routed");
        assert!(
            declares(&op, status),
            "{method} {pattern} answered {status} without a token, undeclared: {body}"
        );
        if status == 401 {
            let response = server.request_raw(&method, &path, &[], None);
            assert_eq!(response.header("www-authenticate"), Some("Bearer"));
            assert_eq!(
                op["security"].as_array().map(Vec::len),
                Some(1),
                "{pattern}"
            );
        }
    }
}

#[test]
fn authenticated_operations_declare_401_403_and_the_error_shape() {
    let server = TestServer::start();
    let doc = document(&server);
    let mut checked = 0;
    for (method, pattern, op) in operations(&doc) {
        let bearer = op["security"][0]
            .as_object()
            .is_some_and(|s| s.contains_key("serviceKey") || s.contains_key("userToken"));
        if !bearer {
            continue;
        }
        assert!(
            declares(&op, 401) && declares(&op, 403),
            "{method} {pattern}"
        );
        let error = &op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(error, "#/components/schemas/Error", "{method} {pattern}");
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} authenticated operations");
    let error = &doc["components"]["schemas"]["Error"];
    assert_eq!(
        error["properties"]["error"]["required"],
        serde_json::json!(["code", "message"])
    );
}

#[test]
fn the_stripe_webhook_answers_random_bodies_with_a_declared_400() {
    let server = TestServer::builder()
        .env("STRIPE_WEBHOOK_SECRET", "whsec_openapi_test")
        .start();
    let doc = document(&server);
    let op = &doc["paths"]["/webhooks/stripe"]["post"];
    assert!(declares(op, 400) && declares(op, 503) && declares(op, 200));
    assert_eq!(op["security"][0]["stripeSignature"], serde_json::json!([]));
    let bodies: [&[u8]; 4] = [b"{}", b"not json", b"[1,2,3]", b"\x00\xff\xfe"];
    for body in bodies {
        for signature in [None, Some("t=1,v1=00"), Some("garbage")] {
            let mut headers = vec![("content-type", "application/json")];
            if let Some(sig) = signature {
                headers.push(("stripe-signature", sig));
            }
            let (status, answer) =
                server.request("POST", "/webhooks/stripe", &headers, Some(body.to_vec()));
            assert_eq!(status, 400, "{signature:?} {answer}");
            assert_eq!(answer["error"]["code"], "invalid_signature");
        }
    }
}
