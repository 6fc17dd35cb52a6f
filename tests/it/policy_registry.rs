//! The registry as an operator sees it: a new type added to a registry file
//! and a templates directory is live without a rebuild; `herald check` (and
//! `serve`) refuse a broken catalog naming file, type and template line; and
//! templates are a sandbox: payloads are data, html is escaped, and a
//! template cannot read files or the environment.

use std::time::Duration;

use serde_json::json;

use crate::policy_catalog::Catalog;
use crate::support::{FakeResend, TestServer};

const WAIT: Duration = Duration::from_secs(10);

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn add_shipped(catalog: &mut Catalog) {
    catalog.add_type(
        "order.shipped",
        json!({
            "channels": ["inbox", "email"],
            "required": ["orderId", "carrier"],
            "dedupWindowSecs": 0,
            "actions": [{"label": "Track parcel", "url": "https://track.test/{{ orderId }}"}],
            "sample": {"orderId": "ord_1", "carrier": "DHL"},
            "description": "An order left the warehouse."
        }),
    );
    catalog
        .template(
            "order.shipped",
            "inbox_title.txt",
            "Order {{ orderId }} shipped",
        )
        .template(
            "order.shipped",
            "inbox_body.txt",
            "On its way with {{ carrier }}.",
        )
        .template(
            "order.shipped",
            "email_subject.txt",
            "Your order {{ orderId }} shipped",
        )
        .template(
            "order.shipped",
            "email.html",
            "<p>{{ carrier }} has order {{ orderId }}.</p>",
        )
        .template(
            "order.shipped",
            "email.txt",
            "{{ carrier }} has order {{ orderId }}.",
        );
}

#[test]
fn a_new_type_from_a_registry_file_and_templates_dir_is_triggerable_without_rebuilding() {
    let mut catalog = Catalog::builtin();
    add_shipped(&mut catalog);
    let out = catalog.check();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("10 notification types"));

    let mail = FakeResend::start();
    let server = catalog.serve(TestServer::builder().mail(&mail)).start();
    let token = server.create_user("carol", "carol@acme.test", "Carol");
    let (status, body) = server.post_event(json!({
        "type": "order.shipped", "recipients": ["carol"],
        "payload": {"orderId": "ord_9", "carrier": "UPS"}
    }));
    assert_eq!(status, 202, "{body}");
    let event = server.wait_event_done(body["eventId"].as_str().unwrap(), WAIT);
    assert_eq!(
        event["result"],
        crate::support::result([1, 0, 0], [1, 0, 0], [1, 0, 0]),
        "{event}"
    );
    let (_, inbox) = server.get("/v1/inbox", Some(&token));
    let item = &inbox["items"][0];
    assert_eq!(item["title"], "Order ord_9 shipped");
    assert_eq!(item["body"], "On its way with UPS.");
    assert_eq!(
        item["actions"],
        json!([{"label": "Track parcel", "url": "https://track.test/ord_9"}])
    );
    assert!(mail.wait_for_accepted(1, WAIT), "{}", server.logs());
    assert_eq!(mail.accepted()[0].subject, "Your order ord_9 shipped");
    // The new type is also in the user's preferences.
    let (_, prefs) = server.get("/v1/preferences", Some(&token));
    assert!(prefs["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["type"] == "order.shipped"));

    // The embedded catalog does not know it: it really came from the files.
    let plain = TestServer::start();
    let (status, body) = plain.post_event(json!({
        "type": "order.shipped", "recipients": [], "payload": {"orderId": "o", "carrier": "c"}
    }));
    assert_eq!(status, 422, "{body}");
}

#[test]
fn herald_check_exits_non_zero_naming_file_type_and_line() {
    // A missing template.
    let mut catalog = Catalog::builtin();
    add_shipped(&mut catalog);
    catalog.remove_template("order.shipped", "email.html");
    let out = catalog.check();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("type order.shipped"), "{err}");
    assert!(
        err.contains("missing template order.shipped/email.html"),
        "{err}"
    );
    assert!(
        err.contains(catalog.templates_dir().to_str().unwrap()),
        "{err}"
    );

    // A template using a variable the sample does not have, on line 2.
    let mut catalog = Catalog::builtin();
    add_shipped(&mut catalog);
    catalog.template(
        "order.shipped",
        "email.txt",
        "{{ carrier }} has it.\nETA {{ eta }}.",
    );
    let out = catalog.check();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("type order.shipped"), "{err}");
    assert!(
        err.contains("order.shipped/email.txt") && err.contains("line 2"),
        "{err}"
    );

    // A field the sample has but `required` does not promise.
    let mut catalog = Catalog::builtin();
    add_shipped(&mut catalog);
    catalog.set(
        "order.shipped",
        "sample",
        json!({"orderId": "o", "carrier": "c", "eta": "2d"}),
    );
    catalog.template(
        "order.shipped",
        "email.txt",
        "{{ carrier }}\n\nETA {{ eta }}",
    );
    let out = catalog.check();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("not in \"required\" (eta)"), "{err}");
    assert!(
        err.contains("order.shipped/email.txt") && err.contains("line 3"),
        "{err}"
    );

    // A required field the sample lacks, and a batch type that does not exist.
    let mut catalog = Catalog::builtin();
    catalog.set("order.invalid", "channels", json!(["inbox"]));
    catalog.set("order.invalid", "required", json!(["total"]));
    catalog.set(
        "document_uploaded",
        "digest",
        json!({"key": "{{ orderId }}", "windowSecs": 60, "batchType": "no_such_batch"}),
    );
    let out = catalog.check();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(catalog.registry_path().to_str().unwrap()),
        "{err}"
    );
    assert!(
        err.contains("type order.invalid: sample is missing required field \"total\""),
        "{err}"
    );
    assert!(
        err.contains("type document_uploaded: digest batch type \"no_such_batch\""),
        "{err}"
    );

    // `serve` refuses the same broken catalog instead of starting.
    let out = catalog
        .serve_refused(Duration::from_secs(15))
        .expect("serve started with a broken registry");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no_such_batch"), "{}", stderr(&out));
}

/// The workflow fields are checked like the rest: an escalation of a
/// channel the type lacks (or one herald does not have), and a throttle key
/// that does not render, each fail `herald check` naming the type.
#[test]
fn herald_check_refuses_a_broken_escalation_or_throttle_key() {
    let mut catalog = Catalog::builtin();
    catalog.set(
        "org.invitation.accepted",
        "escalate",
        json!({"channel": "email", "afterSecs": 60, "unless": "seen"}),
    );
    let out = catalog.check();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(
            "type org.invitation.accepted: escalate names channel \"email\" the type does not use"
        ),
        "{err}"
    );

    let mut catalog = Catalog::builtin();
    catalog.set(
        "org.invitation.sent",
        "escalate",
        json!({"channel": "sms", "afterSecs": 60, "unless": "seen"}),
    );
    let out = catalog.check();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(catalog.registry_path().to_str().unwrap()) && err.contains("sms"),
        "{err}"
    );

    let mut catalog = Catalog::builtin();
    catalog.set(
        "org.member.role_changed",
        "throttle",
        json!({"limit": 3, "windowSecs": 60, "key": "{{ orgName "}),
    );
    let out = catalog.check();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("org.member.role_changed") && err.contains("throttleKey"),
        "{err}"
    );

    let mut catalog = Catalog::builtin();
    catalog.set(
        "org.member.role_changed",
        "throttle",
        json!({"limit": 3, "windowSecs": 60, "key": "{{ orgName }}"}),
    );
    let out = catalog.check();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn script_in_a_payload_is_escaped_in_email_html_and_payloads_are_never_templates() {
    let mail = FakeResend::start();
    let server = TestServer::builder().mail(&mail).start();
    let token = server.create_user("carol", "carol@acme.test", "Carol");
    let (status, body) = server.post_event(json!({
        "type": "org.member.role_changed", "recipients": ["carol"], "subjectId": "m",
        "payload": {"newRole": "admin", "before": "member",
                    "orgName": "<script>alert(1)</script>", "actorName": "{{ 7 * 7 }}"}
    }));
    assert_eq!(status, 202, "{body}");
    server.wait_event_done(body["eventId"].as_str().unwrap(), WAIT);
    assert!(mail.wait_for_accepted(1, WAIT), "{}", server.logs());
    let email = &mail.accepted()[0];
    let html = email.html.as_deref().unwrap();
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
        "{html}"
    );
    assert!(!html.contains("<script"), "{html}");
    assert!(
        !html.contains("49"),
        "a payload is data, never evaluated: {html}"
    );
    assert!(html.contains("{{ 7 * 7 }}"), "{html}");
    // Plain text stays text; the inbox stores it verbatim for its renderer to
    // escape (the API answers JSON, which cannot execute it).
    assert!(email
        .text
        .as_deref()
        .unwrap()
        .contains("<script>alert(1)</script>"));
    let (_, inbox) = server.get("/v1/inbox", Some(&token));
    assert_eq!(
        inbox["items"][0]["title"],
        "Your role in <script>alert(1)</script> is now admin"
    );
}

#[test]
fn templates_cannot_reach_the_file_system_or_the_environment() {
    for (n, source) in [
        r#"{% include "/etc/passwd" %}"#,
        r#"{% include "../../../../../../etc/passwd" %}"#,
        r#"{% import "/etc/passwd" as p %}{{ p }}"#,
        r#"{% extends "/etc/hostname" %}"#,
        "{{ env.PATH }}",
        r#"{{ env("PATH") }}"#,
        r#"{{ environ["PATH"] }}"#,
        r#"{{ open("/etc/passwd") }}"#,
        "{{ self.__init__ }}",
    ]
    .into_iter()
    .enumerate()
    {
        let mut catalog = Catalog::builtin();
        add_shipped(&mut catalog);
        catalog.template("order.shipped", "email.txt", source);
        let out = catalog.check();
        let err = stderr(&out);
        assert!(!out.status.success(), "case {n} {source} was accepted");
        assert!(err.contains("order.shipped/email.txt"), "case {n}: {err}");
        assert!(!err.contains("root:"), "case {n} leaked /etc/passwd: {err}");
        let path = std::env::var("PATH").unwrap_or_default();
        assert!(
            path.is_empty() || !err.contains(&path),
            "case {n} leaked PATH"
        );
    }
}
