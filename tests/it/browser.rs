//! The pages in a real browser (headless Chromium via chromedriver): sign
//! in on /login, see the inbox, an event sent over the API appears without
//! a reload, mark-as-read drops the badge, and XSS payloads stay inert; and
//! the invitation email's accept link, clicked in the email itself, leads
//! through signing in to the accept page and on to the inbox. Needs Debian's `chromium` and `chromium-driver`, so it is ignored
//! by a plain `cargo test`; `.ci/run` installs them and runs
//! `cargo test --test it browser -- --ignored`. Screenshots land in
//! `target/test-artifacts/`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::app::{demo_builder, start_demo, ORG};
use crate::support::webdriver::Browser;
use crate::support::{FakeResend, TestServer};

const WAIT: Duration = Duration::from_secs(15);
/// Sets a flag if any injected markup ever runs.
const XSS_NAME: &str = "<img src=x onerror=\"window.__xss='name'\">Ada";
const XSS_TITLE: &str =
    "<img src=x onerror=\"window.__xss='title'\"><script>window.__xss='script'</script>";

fn artifacts() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp: artifacts go beside it.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir
}

fn send(server: &TestServer, event: Value) {
    let (status, body) = server.post_event(event);
    assert_eq!(status, 202, "{body}");
    server.wait_event_done(body["eventId"].as_str().unwrap(), WAIT);
}

fn badge(browser: &Browser) -> i64 {
    browser
        .script("return Number(document.getElementById('unseen').dataset.count)")
        .as_i64()
        .unwrap_or(-1)
}

#[test]
#[ignore = "needs Debian's chromium and chromium-driver; .ci/run installs them and runs it"]
fn sign_in_see_a_live_item_arrive_and_mark_it_read() {
    let server = TestServer::builder().arg("--dev").start();
    let token = server.create_user("ada", "ada@acme.test", XSS_NAME);
    send(
        &server,
        json!({"type": "system.announcement", "recipients": ["ada"],
               "payload": {"title": XSS_TITLE, "body": "<b onmouseover=\"window.__xss='body'\">bold?</b>"}}),
    );
    send(
        &server,
        json!({"type": "org.invitation.sent", "recipients": ["ada"],
               "payload": {"invitedEmail": "ada@acme.test", "role": "admin",
                           "orgName": "Acme <script>window.__xss='org'</script>",
                           "inviterName": "Grace", "acceptUrl": "javascript:window.__xss='action'"}}),
    );
    send(
        &server,
        json!({"type": "org.member.role_changed", "recipients": ["ada"],
               "payload": {"newRole": "admin", "before": "member", "orgName": "Acme",
                           "actorName": "Grace Hopper"}}),
    );

    let browser = Browser::start(1100, 900);
    browser.goto(&server.url("/inbox"));
    assert!(
        browser.wait_for(WAIT, "return location.pathname === '/login'"),
        "signed-out /inbox goes to /login"
    );
    let input = browser.find("#token");
    browser.type_into(&input, &token);
    browser.click(&browser.find("#sign-in"));
    assert!(
        browser.wait_for(
            WAIT,
            "return location.pathname === '/inbox' && !!document.getElementById('items')"
        ),
        "signed in; at {}",
        browser.current_url()
    );
    assert_eq!(
        browser.script("return document.querySelectorAll('#items .item').length"),
        json!(3)
    );
    assert_eq!(badge(&browser), 3, "three unseen");
    assert!(
        browser
            .text(&browser.find("#user-name"))
            .contains("<img src=x"),
        "the user name shows as text"
    );
    assert!(
        browser.wait_for(
            WAIT,
            "return document.getElementById('live').dataset.state === 'on'"
        ),
        "the stream connected"
    );

    // A reload would clear this marker.
    browser.script("window.__marker = 'still here'; return null");
    send(
        &server,
        json!({"type": "system.announcement", "recipients": ["ada"],
               "payload": {"title": "Fresh from the API", "body": "Deploy finished in 42 s."}}),
    );
    assert!(
        browser.wait_for(
            WAIT,
            "const first = document.querySelector('#items .item .item-title');
             return !!first && first.textContent === 'Fresh from the API'"
        ),
        "the new item appears at the top without a reload"
    );
    assert_eq!(
        browser.script("return window.__marker"),
        json!("still here")
    );
    assert_eq!(badge(&browser), 4, "the badge counts the new item");
    browser.screenshot(&artifacts().join("inbox-live.png"));

    let new_id = browser.script("return document.querySelector('#items .item').id");
    let button = browser.find(&format!(
        "#{} form.mark-read button",
        new_id.as_str().unwrap()
    ));
    browser.click(&button);
    assert!(
        browser.wait_for(
            WAIT,
            "return document.getElementById('unseen').dataset.count === '3'"
        ),
        "mark-as-read drops the badge; badge is {}",
        badge(&browser)
    );
    let (status, count) = server.get("/v1/inbox/unseen-count", Some(&token));
    assert_eq!(
        (status, count["count"].as_i64()),
        (200, Some(3)),
        "and the server agrees"
    );
    assert_eq!(
        browser.script(&format!(
            "return document.getElementById('{}').classList.contains('unread')",
            new_id.as_str().unwrap()
        )),
        json!(false)
    );

    // Every payload above tried to run script; none did, and the
    // javascript: action never became a link.
    assert_eq!(
        browser.script("return window.__xss === undefined"),
        json!(true)
    );
    assert_eq!(
        browser.script(
            "return document.querySelectorAll('#items img, a[href^=\"javascript\" i]').length"
        ),
        json!(0)
    );
    browser.screenshot(&artifacts().join("inbox.png"));

    // The same page on a phone.
    let phone = Browser::phone(375, 812);
    phone.goto(&server.url("/login"));
    phone.type_into(&phone.find("#token"), &token);
    phone.click(&phone.find("#sign-in"));
    assert!(phone.wait_for(WAIT, "return !!document.getElementById('items')"));
    phone.screenshot(&artifacts().join("inbox-375.png"));
    let widths = phone.script("return [window.innerWidth, document.documentElement.scrollWidth]");
    assert_eq!(widths[0], json!(375), "a phone-sized viewport");
    assert!(
        widths[1].as_i64() <= widths[0].as_i64(),
        "no sideways scrolling on a phone: {widths}"
    );

    // The dev mailbox shows the emails, their html inert in a sandbox.
    browser.goto(&server.url("/dev/mail"));
    assert!(browser.wait_for(
        WAIT,
        "return document.querySelectorAll('.mail').length === 2"
    ));
    assert_eq!(
        browser.script("return window.__xss === undefined"),
        json!(true)
    );
    browser.screenshot(&artifacts().join("dev-mail.png"));
}

/// Opens `html` (an email's HTML part) from a file, as a mail client on
/// this machine would show it.
fn open_email(browser: &Browser, dir: &std::path::Path, name: &str, html: &str) {
    let file = dir.join(name);
    std::fs::write(&file, html).expect("write the email to a file");
    browser.goto(&format!("file://{}", file.display()));
    assert!(browser.wait_for(
        WAIT,
        "return !!document.querySelector('a[href*=\"/invitations/accept?token=\"]')"
    ));
}

/// The HTML of the one invitation email sent to `to`.
fn invitation_email(mail: &FakeResend, to: &str) -> String {
    assert!(
        crate::support::wait_until(WAIT, || mail
            .accepted()
            .iter()
            .any(|e| e.to.iter().any(|t| t == to))),
        "no email to {to}"
    );
    let email = mail
        .accepted()
        .into_iter()
        .find(|e| e.to.iter().any(|t| t == to))
        .unwrap();
    assert!(email.subject.contains("Acme"), "{}", email.subject);
    email.html.expect("an HTML part")
}

#[test]
#[ignore = "needs Debian's chromium and chromium-driver; .ci/run installs them and runs it"]
fn the_invitation_emails_link_signs_in_accepts_and_lands_on_the_inbox() {
    let mail = FakeResend::start();
    let (server, demo) = start_demo(demo_builder(&mail));
    let dave = server.create_user("dave", "dave@example.com", "Dave");
    let (status, body) = server.post(
        &format!("/v1/orgs/{ORG}/invitations"),
        Some(&demo.alice),
        json!({"email": "dave@example.com", "role": "admin"}),
    );
    assert_eq!(status, 201, "{body}");
    let html = invitation_email(&mail, "dave@example.com");
    let emails = tempfile::tempdir().expect("a directory for the email");

    // Dave reads the email and clicks its button; he is not signed in.
    let browser = Browser::start(1100, 900);
    open_email(&browser, emails.path(), "invitation.html", &html);
    browser.click(&browser.find("a[href*=\"/invitations/accept?token=\"]"));
    assert!(
        browser.wait_for(WAIT, "return location.pathname === '/login'"),
        "signed out, the link asks to sign in; at {}",
        browser.current_url()
    );
    browser.type_into(&browser.find("#token"), &dave);
    browser.click(&browser.find("#sign-in"));
    assert!(
        browser.wait_for(
            WAIT,
            "return location.pathname === '/invitations/accept' && !!document.getElementById('accept')"
        ),
        "signed in, back at the invitation; at {}",
        browser.current_url()
    );
    assert_eq!(
        browser.text(&browser.find("#invitation-title")),
        "Join Acme"
    );
    browser.screenshot(&artifacts().join("invitation.png"));
    browser.click(&browser.find("#accept"));
    assert!(
        browser.wait_for(
            WAIT,
            "return location.pathname === '/inbox' && !!document.getElementById('joined')"
        ),
        "accepting lands on the inbox; at {}",
        browser.current_url()
    );
    assert!(browser
        .text(&browser.find("#joined"))
        .contains("You joined Acme"));
    browser.screenshot(&artifacts().join("invitation-accepted.png"));
    let (status, members) = server.get(&format!("/v1/orgs/{ORG}/members"), Some(&dave));
    assert_eq!(status, 200, "dave is a member now: {members}");
    assert!(
        members["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["userId"] == "dave" && m["role"] == "admin"),
        "{members}"
    );

    // Erin is already signed in when she clicks her invitation's link, from
    // another site (the email), which leaves her SameSite=Strict session
    // cookie behind: herald moves on from its own origin, where the cookie
    // comes along, and she sees the invitation without signing in again.
    let erin = server.create_user("erin", "erin@example.com", "Erin");
    let (status, body) = server.post(
        &format!("/v1/orgs/{ORG}/invitations"),
        Some(&demo.alice),
        json!({"email": "erin@example.com", "role": "member"}),
    );
    assert_eq!(status, 201, "{body}");
    let html = invitation_email(&mail, "erin@example.com");
    let browser = Browser::start(1100, 900);
    browser.goto(&server.url("/login"));
    browser.type_into(&browser.find("#token"), &erin);
    browser.click(&browser.find("#sign-in"));
    assert!(browser.wait_for(WAIT, "return location.pathname === '/inbox'"));
    open_email(&browser, emails.path(), "erin.html", &html);
    browser.click(&browser.find("a[href*=\"/invitations/accept?token=\"]"));
    assert!(
        browser.wait_for(
            WAIT,
            "return location.pathname === '/invitations/accept' && !!document.getElementById('accept')"
        ),
        "the invitation, with the session she has; at {}",
        browser.current_url()
    );
    browser.click(&browser.find("#accept"));
    assert!(browser.wait_for(
        WAIT,
        "return location.pathname === '/inbox' && !!document.getElementById('joined')"
    ));
}

/// RFC 3339 for `ms` from now.
fn in_ms(ms: u64) -> String {
    let at = std::time::SystemTime::now() + Duration::from_millis(ms);
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    jiff::Timestamp::from_millisecond(ms).unwrap().to_string()
}

fn item_count(browser: &Browser) -> i64 {
    browser
        .script("return document.querySelectorAll('#items .item').length")
        .as_i64()
        .unwrap_or(-1)
}

#[test]
#[ignore = "needs Debian's chromium and chromium-driver; .ci/run installs them and runs it"]
fn archive_and_snooze_buttons_take_items_off_the_page_and_a_snooze_ends_live() {
    let server = TestServer::builder().start();
    let token = server.create_user("ada", "ada@acme.test", "Ada");
    for title in ["keep", "archive me", "snooze me"] {
        send(
            &server,
            json!({"type": "system.announcement", "recipients": ["ada"],
                   "payload": {"title": title, "body": "b"}}),
        );
    }
    let (_, page) = server.get("/v1/inbox", Some(&token));
    let id_of = |title: &str| -> String {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["title"] == title)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (archived, snoozed) = (id_of("archive me"), id_of("snooze me"));

    let browser = Browser::start(1100, 900);
    browser.goto(&server.url("/login"));
    browser.type_into(&browser.find("#token"), &token);
    browser.click(&browser.find("#sign-in"));
    assert!(browser.wait_for(WAIT, "return !!document.getElementById('items')"));
    assert!(browser.wait_for(
        WAIT,
        "return document.getElementById('live').dataset.state === 'on'"
    ));
    assert_eq!(item_count(&browser), 3);
    assert_eq!(badge(&browser), 3);

    browser.click(&browser.find(&format!("#{archived} button.archive")));
    assert!(
        browser.wait_for(
            WAIT,
            &format!("return !document.getElementById('{archived}')")
        ),
        "the archived item leaves the page"
    );
    assert!(browser.wait_for(
        WAIT,
        "return document.getElementById('unseen').dataset.count === '2'"
    ));
    let (_, only) = server.get("/v1/inbox?archived=only", Some(&token));
    assert_eq!(only["items"][0]["id"], archived.as_str(), "{only}");

    browser.click(&browser.find(&format!("#{snoozed} button.snooze-hour")));
    assert!(
        browser.wait_for(
            WAIT,
            &format!("return !document.getElementById('{snoozed}')")
        ),
        "the snoozed item leaves the page"
    );
    assert!(browser.wait_for(
        WAIT,
        "return document.getElementById('unseen').dataset.count === '1'"
    ));
    assert_eq!(item_count(&browser), 1);
    let (_, listed) = server.get("/v1/inbox", Some(&token));
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
    browser.screenshot(&artifacts().join("inbox-archive-snooze.png"));

    // A shorter snooze through the API: the item comes back live, unseen.
    let (status, body) = server.post(
        &format!("/v1/inbox/{snoozed}/snooze"),
        Some(&token),
        json!({"until": in_ms(1500)}),
    );
    assert_eq!(status, 204, "{body}");
    assert!(
        browser.wait_for(
            WAIT,
            &format!("return !!document.getElementById('{snoozed}')")
        ),
        "the snoozed item returns without a reload"
    );
    assert_eq!(badge(&browser), 2, "and counts as new again");
    assert_eq!(item_count(&browser), 2);
}
