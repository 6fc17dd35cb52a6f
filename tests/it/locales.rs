//! Locales (SPEC 10) against the real binary: a user's `locale` (or the
//! event's) picks `templates/<type>/<locale>/`, falling back `fr-BE` ->
//! `fr` -> the default per file; each email is stored once per event and
//! locale and every retry sends the same bytes; `herald check` renders
//! every locale and names the locale and file at fault; a bad tag is a 422
//! that changes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use herald::args;
use serde_json::{json, Value};

use crate::delivery_engine::role_changed;
use crate::escalation::settle;
use crate::policy_catalog::Catalog;
use crate::support::{wait_until, FakeResend, TestServer};

const WAIT: Duration = Duration::from_secs(20);

/// Creates user `id` at `<id>@acme.test` with `locale` (left out if None);
/// the user as answered.
fn user(server: &TestServer, id: &str, locale: Option<&str>) -> Value {
    let mut body = json!({"email": format!("{id}@acme.test"), "name": id});
    if let Some(locale) = locale {
        body["locale"] = json!(locale);
    }
    let (status, user) = server.put(
        &format!("/v1/users/{id}"),
        Some(server.service_key()),
        &body,
    );
    assert_eq!(status, 201, "{user}");
    user
}

fn post(server: &TestServer, event: Value) -> Value {
    let (status, body) = server.post_event(event);
    assert_eq!(status, 202, "{body}");
    server.wait_event_done(body["eventId"].as_str().unwrap(), WAIT)
}

/// The inbox titles of the event `subject`, by user.
fn titles(server: &TestServer, event_id: &str) -> BTreeMap<String, String> {
    server
        .rows(
            "SELECT n.user_id, n.title FROM notifications n JOIN outbox o ON o.seq = n.event_seq
             WHERE o.id = ?1",
            args![event_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .into_iter()
        .collect()
}

/// The subjects of the emails the fake accepted, by address, each once.
fn subjects(mail: &FakeResend) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for email in mail.accepted() {
        out.entry(email.to.join(","))
            .or_default()
            .push(email.subject.clone());
    }
    out
}

const FR_TITLE: &str = "Votre rôle dans Acme est désormais admin";
const EN_TITLE: &str = "Your role in Acme is now admin";
const FR_SUBJECT: &str = "Votre rôle dans Acme est passé à admin";
const EN_SUBJECT: &str = "Your role in Acme changed to admin";

#[test]
fn a_users_locale_picks_its_translation_and_an_events_locale_overrides_it() {
    let mail = FakeResend::start();
    let server = TestServer::builder().mail(&mail).start();
    assert_eq!(user(&server, "bea", Some("fr-be"))["locale"], "fr-BE");
    assert_eq!(user(&server, "eva", Some("es"))["locale"], "es");
    assert_eq!(user(&server, "noa", None)["locale"], Value::Null);

    let event = post(&server, role_changed(json!(["bea", "eva", "noa"]), "m1"));
    let id = event["id"].as_str().unwrap();
    let expected: BTreeMap<String, String> =
        [("bea", FR_TITLE), ("eva", EN_TITLE), ("noa", EN_TITLE)]
            .into_iter()
            .map(|(u, t)| (u.to_string(), t.to_string()))
            .collect();
    assert_eq!(titles(&server, id), expected);
    settle(&server);
    let sent = subjects(&mail);
    assert_eq!(sent["bea@acme.test"], [FR_SUBJECT]);
    assert_eq!(sent["eva@acme.test"], [EN_SUBJECT]);
    assert_eq!(sent["noa@acme.test"], [EN_SUBJECT]);
    let french = mail
        .accepted()
        .into_iter()
        .find(|e| e.to == ["bea@acme.test"])
        .unwrap();
    let text = french.text.unwrap_or_default();
    assert!(
        text.contains("Alice a changé votre rôle dans Acme"),
        "{text}"
    );
    assert!(french
        .html
        .unwrap_or_default()
        .contains("<html lang=\"fr\">"));

    // The event's locale, over each user's: French for all, then the
    // default for the French reader (no `en` translation exists).
    let mut forced = role_changed(json!(["eva", "noa"]), "m2");
    forced["locale"] = json!("FR");
    let event = post(&server, forced);
    let titles_fr = titles(&server, event["id"].as_str().unwrap());
    assert!(titles_fr.values().all(|t| t == FR_TITLE), "{titles_fr:?}");
    assert_eq!(titles_fr.len(), 2);
    let mut english = role_changed(json!(["bea"]), "m3");
    english["locale"] = json!("en-GB");
    let event = post(&server, english);
    assert_eq!(
        titles(&server, event["id"].as_str().unwrap())["bea"],
        EN_TITLE
    );
    settle(&server);
    let sent = subjects(&mail);
    assert_eq!(sent["eva@acme.test"], [EN_SUBJECT, FR_SUBJECT]);
    assert_eq!(sent["bea@acme.test"], [FR_SUBJECT, EN_SUBJECT]);
    // One body per event and locale: the translated ones of the first
    // two events, whatever the number of their French readers.
    assert_eq!(
        server.count("SELECT COUNT(*) FROM email_bodies_localized WHERE locale = 'fr'"),
        2
    );
    assert_eq!(server.count("SELECT COUNT(*) FROM email_bodies"), 3);
}

#[test]
fn two_locales_in_one_event_each_get_their_own_body_sent_identically_on_retry() {
    let mail = FakeResend::start();
    let server = TestServer::builder()
        .mail(&mail)
        .env("HERALD_RETRY_BASE_MS", "50")
        .start();
    user(&server, "bea", Some("fr"));
    user(&server, "noa", None);
    user(&server, "zoe", Some("fr-CA"));
    mail.fail_next(1, 500);
    post(&server, role_changed(json!(["bea", "noa", "zoe"]), "m1"));
    settle(&server);

    let sent = subjects(&mail);
    assert_eq!(sent["bea@acme.test"], [FR_SUBJECT]);
    assert_eq!(sent["zoe@acme.test"], [FR_SUBJECT]);
    assert_eq!(sent["noa@acme.test"], [EN_SUBJECT]);
    // Every key was sent at least twice (the first attempt failed), each
    // time the same bytes.
    let keys = mail.accepted_keys();
    assert!(!keys.is_empty());
    let mut retried = 0;
    for key in &keys {
        let requests = mail.requests_with_key(key);
        retried += usize::from(requests.len() > 1);
        let first = &requests[0].raw_body;
        assert!(requests.iter().all(|r| &r.raw_body == first), "{key}");
    }
    assert!(retried > 0, "the failure forced a retry");
    assert_eq!(
        server.count("SELECT COUNT(*) FROM deliveries WHERE locale = 'fr'"),
        2
    );
    assert_eq!(
        server.count("SELECT COUNT(*) FROM email_bodies_localized"),
        1
    );
}

#[test]
fn a_released_digest_is_rendered_in_each_recipients_locale() {
    let catalog = crate::policy_digest::catalog(1);
    let server = catalog.serve(TestServer::builder()).start();
    user(&server, "bea", Some("fr-BE"));
    user(&server, "noa", None);
    for (n, to) in [(1, "bea"), (2, "bea"), (3, "noa"), (4, "noa")] {
        let (status, body) = server.post_event(json!({
            "type": "document_uploaded", "recipients": [to],
            "payload": {"orderId": format!("o-{to}"), "eventName": format!("Concert {n}"),
                        "ticketCount": n}
        }));
        assert_eq!(status, 202, "{body}");
    }
    let batches = || {
        server.count("SELECT COUNT(*) FROM notifications WHERE type = 'document_uploaded_batch'")
    };
    assert!(wait_until(WAIT, || batches() == 2), "{}", server.logs());
    let titles: BTreeMap<String, String> = server
        .rows(
            "SELECT user_id, title FROM notifications WHERE type = 'document_uploaded_batch'",
            args![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .into_iter()
        .collect();
    assert_eq!(titles["bea"], "2 documents mis en ligne");
    assert_eq!(titles["noa"], "2 documents uploaded");
}

#[test]
fn herald_check_renders_every_locale_and_names_the_locale_and_file_at_fault() {
    let mut catalog = Catalog::builtin();
    let out = catalog.check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("translations: fr"), "{stdout}");

    // A complete custom locale passes.
    for (file, text) in [
        (
            "inbox_title.txt",
            "{{ actorName }} cambió tu rol en {{ orgName }}",
        ),
        (
            "inbox_body.txt",
            "Ahora eres {{ newRole }} (antes {{ before }}).",
        ),
        (
            "email_subject.txt",
            "Tu rol en {{ orgName }} es ahora {{ newRole }}",
        ),
        (
            "email.html",
            "<p>{{ actorName }}: {{ before }} -> {{ newRole }}</p>",
        ),
        (
            "email.txt",
            "{{ actorName }}: {{ before }} -> {{ newRole }}",
        ),
    ] {
        catalog.template("org.member.role_changed", &format!("es/{file}"), text);
    }
    let out = catalog.check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("translations: es, fr"), "{stdout}");

    // A variable the sample lacks, in one locale's file.
    catalog.template(
        "org.invitation.sent",
        "fr/email.txt",
        "Bonjour,\n{{ inviteeName }}\n",
    );
    let out = catalog.check();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("locale fr")
            && stderr.contains("org.invitation.sent/fr/email.txt")
            && stderr.contains("line 2"),
        "{stderr}"
    );
    catalog.template(
        "org.invitation.sent",
        "fr/email.txt",
        "Bonjour {{ orgName }}\n",
    );
    assert!(catalog.check().status.success());

    // A directory whose name is not a BCP 47 tag.
    catalog.template("org.invitation.sent", "french/email.txt", "Bonjour\n");
    let out = catalog.check();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("org.invitation.sent/french") && stderr.contains("BCP 47"),
        "{stderr}"
    );
}

#[test]
fn a_bad_locale_is_a_422_naming_the_field_and_changes_nothing() {
    let server = TestServer::start();
    let key = server.service_key().to_string();
    let invalid = |status: u16, answer: &Value| {
        assert_eq!(status, 422, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("locale: "), "{answer}");
    };
    let (status, answer) = server.put(
        "/v1/users/ann",
        Some(&key),
        json!({"email": "ann@acme.test", "locale": "fr_BE"}),
    );
    invalid(status, &answer);
    assert_eq!(
        server.count("SELECT COUNT(*) FROM users WHERE id = 'ann'"),
        0
    );

    user(&server, "ann", Some("fr"));
    let (status, answer) = server.put(
        "/v1/users/ann",
        Some(&key),
        json!({"email": "ann@acme.test", "timezone": "Europe/Paris", "locale": 7}),
    );
    invalid(status, &answer);
    let (status, token) = server.post("/v1/users/ann/tokens", Some(&key), json!({}));
    assert_eq!(status, 201, "{token}");
    let token = token["token"].as_str().unwrap().to_string();
    let (status, answer) = server.put(
        "/v1/me/settings",
        Some(&token),
        json!({"timezone": "Europe/Paris", "locale": "français"}),
    );
    invalid(status, &answer);
    let (_, me) = server.get("/v1/me", Some(&token));
    assert_eq!(
        (&me["locale"], &me["timezone"]),
        (&json!("fr"), &Value::Null),
        "{me}"
    );

    let mut event = role_changed(json!(["ann"]), "m1");
    event["locale"] = json!("en-US-u-ca-gregory");
    let (status, answer) = server.post_event(event);
    invalid(status, &answer);
    assert_eq!(server.count("SELECT COUNT(*) FROM outbox"), 0);

    // Through /v1/me/settings: set, left out stays, null clears.
    let (status, me) = server.put("/v1/me/settings", Some(&token), json!({"locale": "de-ch"}));
    assert_eq!((status, &me["locale"]), (200, &json!("de-CH")), "{me}");
    let (_, me) = server.put("/v1/me/settings", Some(&token), json!({"timezone": "UTC"}));
    assert_eq!(me["locale"], "de-CH", "{me}");
    let (_, me) = server.put("/v1/me/settings", Some(&token), json!({"locale": null}));
    assert_eq!(me["locale"], Value::Null, "{me}");
}
