//! The inbox page in a real browser (headless Chromium via chromedriver):
//! sign in on /login, see the inbox, an event sent over the API appears
//! without a reload, mark-as-read drops the badge, and XSS payloads stay
//! inert. Needs Debian's `chromium` and `chromium-driver`, so it is ignored
//! by a plain `cargo test`; `.ci/run` installs them and runs
//! `cargo test --test it browser -- --ignored`. Screenshots land in
//! `target/test-artifacts/`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::webdriver::Browser;
use crate::support::TestServer;

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
