//! The pages a person sees: `/login`, `/logout`, `/inbox`, the invitation
//! accept page that invitation emails link to and, with `--dev`,
//! `/dev/mail`. Server-rendered minijinja templates and one script, all
//! embedded from this folder (not `templates/`, whose subfolders are
//! notification types). Every value is auto-escaped; links pass
//! `notify::links` (http(s) or same-site urls only); pages forbid inline
//! script by CSP.

use std::sync::OnceLock;

use minijinja::{context, Environment, UndefinedBehavior};
use serde::Serialize;
use serde_json::{json, Value};

use super::auth;
use super::ctx::Ctx;
use super::error::ApiError;
use super::request::Req;
use super::response::Reply;
use super::stream::EndStreams;
use crate::app::{invitations, tenant, Access, Role};
use crate::notify::service;
use crate::notify::{inbox, links};
use crate::store::sessions;
use crate::store::users::User;

/// Newest rows on one page of the inbox.
const PAGE_SIZE: usize = 50;
/// Emails shown by `/dev/mail`.
const DEV_MAIL_LIMIT: usize = 100;

const PAGES: &[(&str, &str)] = &[
    ("layout.html", include_str!("layout.html")),
    ("login.html", include_str!("login.html")),
    ("inbox.html", include_str!("inbox.html")),
    ("dev_mail.html", include_str!("dev_mail.html")),
    ("error.html", include_str!("error.html")),
    ("invitation.html", include_str!("invitation.html")),
    ("continue.html", include_str!("continue.html")),
];

/// Where the invitation emails' accept link leads (`{HERALD_PUBLIC_URL}`
/// + this + `?token=...`).
const ACCEPT_PATH: &str = "/invitations/accept";

/// The dev mailbox shows email HTML, which styles itself inline, inside a
/// sandboxed frame: inline styles and remote images allowed, scripts not.
const DEV_MAIL_CSP: &str = "default-src 'none'; script-src 'none'; \
     style-src 'self' 'unsafe-inline'; img-src * data:; frame-src 'self'; \
     form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        for (name, source) in PAGES {
            // The sources are part of the binary; the unit test below renders
            // every page, so a broken one fails the build's tests.
            if let Err(e) = env.add_template(name, source) {
                log::error!("page template {name} does not compile: {e}");
            }
        }
        env
    })
}

fn render(name: &str, ctx: minijinja::Value) -> Result<String, ApiError> {
    env()
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .map_err(|e| ApiError::internal(format!("page {name}: {e}")))
}

/// A page handler's error as a page rather than JSON.
pub fn error_page(e: ApiError) -> Reply {
    let heading = match e.status {
        404 => "Page not found",
        403 => "Not allowed",
        410 => "No longer valid",
        421 => "Wrong address",
        500..=599 => "Something went wrong",
        _ => "That did not work",
    };
    let ctx = context! { status => e.status, heading => heading, message => e.message };
    match render("error.html", ctx) {
        Ok(body) => Reply::html(e.status, body),
        Err(e) => Reply::error(e),
    }
}

pub fn asset(name: &str) -> Result<Reply, ApiError> {
    let (content_type, body) = match name {
        "herald.css" => ("text/css; charset=utf-8", include_str!("herald.css")),
        "inbox.js" => ("text/javascript; charset=utf-8", include_str!("inbox.js")),
        _ => return Err(ApiError::not_found(format!("no such asset: {name}"))),
    };
    Ok(Reply::text(200, content_type, body)
        .header("X-Content-Type-Options", "nosniff")
        .header("Cache-Control", "no-cache"))
}

pub fn home(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    Ok(match auth::session_user(ctx, req)? {
        Some(_) => Reply::redirect("/inbox"),
        None => Reply::redirect("/login"),
    })
}

/// `GET /login[?next=/path]`: `next` is where signing in leads (the
/// invitation accept page sends people here and back).
pub fn login_form(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    let next = return_path(req.query("next"));
    if auth::session_user(ctx, req)?.is_some() {
        return Ok(Reply::redirect(next.unwrap_or("/inbox")));
    }
    login_page(200, None, next)
}

fn login_page(status: u16, error: Option<&str>, next: Option<&str>) -> Result<Reply, ApiError> {
    Ok(Reply::html(
        status,
        render("login.html", context! { error => error, next => next })?,
    ))
}

/// A `next` that may be followed after signing in: a path on this site
/// (never another host, so never an open redirect), ASCII as herald's own
/// paths are, so it goes into a `Location` header as it is.
fn return_path(next: Option<&str>) -> Option<&str> {
    next.and_then(links::site_path).filter(|p| p.is_ascii())
}

/// `/login?next=<path>`, the path percent-encoded.
fn login_then(path: &str) -> String {
    format!("/login?next={}", query_escape(path))
}

/// Percent-encodes everything but the unreserved characters of RFC 3986.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A form field by name, trimmed ("" when absent).
fn field<'f>(form: &'f [(String, String)], name: &str) -> &'f str {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.trim())
        .unwrap_or("")
}

/// `POST /login`: the token comes in the form body (never the url, and the
/// request log has only the path). A user token starts a session; the cookie
/// carries the session's own secret, not the token, so signing out revokes
/// it and the API token never sits in the browser.
pub fn login(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    auth::same_origin(req)?;
    let form = req.form()?;
    let token = field(&form, "token");
    let next = return_path(Some(field(&form, "next")));
    if token.is_empty() {
        return login_page(422, Some("Paste your access token to sign in."), next);
    }
    if ctx
        .service_key
        .as_deref()
        .is_some_and(|key| crate::ids::secrets_equal(token, key))
    {
        return login_page(
            403,
            Some("That is the service key. Sign in with a user's access token."),
            next,
        );
    }
    let store = ctx.notifier.store();
    let Some(user) = service::user_by_token(store, token)? else {
        return login_page(
            401,
            Some("That token is not valid. Check it and try again."),
            next,
        );
    };
    let secret = service::start_session(store, &user.id)?;
    log::info!("session started for user {}", user.id);
    Ok(
        Reply::redirect(next.unwrap_or("/inbox"))
            .header("Set-Cookie", session_cookie(ctx, &secret)),
    )
}

fn session_cookie(ctx: &Ctx, secret: &str) -> String {
    let max_age = sessions::LIFETIME_MS / 1000;
    format!(
        "{}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        auth::SESSION_COOKIE,
        secure_flag(ctx)
    )
}

/// `Secure` when herald is served over https (it may run on plain http on
/// localhost, where browsers would drop a Secure cookie).
fn secure_flag(ctx: &Ctx) -> &'static str {
    if ctx.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

/// `POST /logout`: ends the session, and with it every stream it opened.
pub fn logout(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    auth::same_origin(req)?;
    let secret = auth::session_secret(req);
    if let Some(secret) = secret {
        service::end_session(ctx.notifier.store(), secret)?;
    }
    let expired = format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        auth::SESSION_COOKIE,
        secure_flag(ctx)
    );
    let mut reply = Reply::redirect("/login").header("Set-Cookie", expired);
    reply.ends_streams = secret.map(|s| EndStreams::Session(auth::session_key(s)));
    Ok(reply)
}

/// One notification as the page shows it.
#[derive(Serialize)]
struct ItemView {
    id: String,
    num: i64,
    title: String,
    body: String,
    created_at: String,
    time_text: String,
    unread: bool,
    actions: Vec<ActionView>,
}

#[derive(Serialize)]
struct ActionView {
    label: String,
    url: String,
}

pub fn inbox(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    let Some(user) = auth::session_user(ctx, req)? else {
        return Ok(Reply::redirect("/login"));
    };
    let cursor = match req.query("before").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => {
            Some(inbox::Cursor::parse(c).ok_or_else(|| ApiError::bad_request("invalid cursor"))?)
        }
    };
    let (page, unseen, newest) =
        service::inbox_overview(ctx.notifier.store(), &user.id, cursor, PAGE_SIZE)?;
    let items: Vec<ItemView> = page.items.into_iter().map(item_view).collect();
    let unread = items.iter().any(|i| i.unread);
    let joined = match req.query("joined") {
        Some(org_id) => joined_org(ctx, &user, org_id)?,
        None => None,
    };
    let body = render(
        "inbox.html",
        context! {
            user => user_view(&user),
            items => items,
            unseen => unseen,
            unread => unread,
            newest => newest,
            next_cursor => page.next_cursor,
            live => cursor.is_none(),
            joined => joined,
        },
    )?;
    Ok(Reply::html(200, body))
}

/// The name of the org the user just joined (`/inbox?joined=<org id>`,
/// where accepting an invitation lands), read as any member read is: None
/// for an org the user is not in.
fn joined_org(ctx: &Ctx, user: &User, org_id: &str) -> Result<Option<String>, ApiError> {
    let access = Access {
        user,
        org_id,
        min_role: Role::Member,
    };
    match tenant::read(ctx.notifier.store(), access, |scope, _| {
        Ok(tenant::Scope::org(scope).name.clone())
    }) {
        Ok(name) => Ok(Some(name)),
        Err(crate::app::AppError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn user_view(user: &User) -> Value {
    json!({"id": user.id, "name": user.name, "email": user.email})
}

fn item_view(item: inbox::Item) -> ItemView {
    let num = inbox::parse_id(&item.id).unwrap_or(0);
    let actions = item
        .actions
        .as_array()
        .map(|actions| {
            actions
                .iter()
                .filter_map(|a| {
                    let url = links::web_link(a.get("url")?.as_str()?)?;
                    let label = a.get("label").and_then(Value::as_str).unwrap_or("Open");
                    Some(ActionView {
                        label: label.to_string(),
                        url: url.to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    ItemView {
        id: item.id,
        num,
        title: item.title,
        body: item.body,
        time_text: display_time(&item.created_at),
        created_at: item.created_at,
        unread: item.read_at.is_none(),
        actions,
    }
}

/// `2026-11-01T10:20:00.123Z` -> `2026-11-01 10:20 UTC` (the script turns it
/// into a relative, local time).
fn display_time(rfc3339: &str) -> String {
    match (rfc3339.get(..10), rfc3339.get(11..16)) {
        (Some(date), Some(time)) => format!("{date} {time} UTC"),
        _ => rfc3339.to_string(),
    }
}

/// What one of the inbox page's forms does.
#[derive(Debug, Clone, Copy)]
pub enum PageAction<'a> {
    /// Mark one row read, or every row (None).
    Read(Option<&'a str>),
    Archive(&'a str),
    /// Snooze a row for one of the buttons' choices (`hour`, `tomorrow`).
    Snooze(&'a str, &'a str),
}

/// `POST /inbox/{id}/read`, `/inbox/read-all`, `/inbox/{id}/archive` and
/// `/inbox/{id}/snooze/{for}`: the page's forms (same-origin only). A
/// script asks for JSON (the new unseen count); without script the browser
/// follows the redirect back to the inbox.
pub fn page_action(ctx: &Ctx, req: &Req, action: PageAction<'_>) -> Result<Reply, ApiError> {
    auth::same_origin(req)?;
    let wants_json = req
        .header("accept")
        .is_some_and(|a| a.contains("application/json"));
    let Some(user) = auth::session_user(ctx, req)? else {
        return Ok(if wants_json {
            Reply::error(ApiError::unauthorized("sign in again"))
        } else {
            Reply::redirect("/login")
        });
    };
    let store = ctx.notifier.store();
    let user_id = user.id.clone();
    match action {
        PageAction::Read(Some(id)) => service::mark(store, &user_id, inbox::parse_id(id)?, true)?,
        PageAction::Read(None) => {
            service::mark_all_read(store, &user_id)?;
        }
        PageAction::Archive(id) => service::archive(store, &user_id, inbox::parse_id(id)?)?,
        PageAction::Snooze(id, choice) => {
            let id = inbox::parse_id(id)?;
            let choice = service::SnoozeFor::parse(choice)
                .ok_or_else(|| ApiError::validation("for", "must be hour or tomorrow"))?;
            let until = service::snooze_end(store, user, choice)?;
            ctx.notifier.snooze_inbox(&user_id, id, until)?;
        }
    }
    if !wants_json {
        return Ok(Reply::redirect("/inbox"));
    }
    let unseen = service::unseen_count(store, &user_id)?;
    Ok(Reply::json(200, &json!({ "unseenCount": unseen })))
}

/// `GET /invitations/accept?token=...`, where the invitation email's link
/// leads: signed out, to `/login` and back here; signed in, the invitation
/// with an Accept button, or why it can no longer be accepted. The token
/// stays out of the log (the request line is logged without its query) and
/// out of Referer headers to other sites (`Referrer-Policy: same-origin`).
pub fn invitation(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    let token = req.query("token").map(str::trim).unwrap_or("");
    if token.is_empty() {
        return Err(ApiError::bad_request(
            "This link has no invitation token. Open the link from the invitation email again.",
        ));
    }
    let Some(user) = auth::session_user(ctx, req)? else {
        // A link clicked in an email is a navigation from another site, and
        // browsers leave a SameSite=Strict cookie behind on it even for a
        // signed-in person. This page moves on from herald's own origin (a
        // meta refresh), which does carry the cookie: /login sends a
        // signed-in person straight back here and asks anyone else to sign in.
        let next = login_then(&accept_path(token));
        return Ok(Reply::html(
            200,
            render("continue.html", context! { next => next })?,
        ));
    };
    let preview = invitations::preview(ctx.notifier.store(), &user, token)
        .map_err(|e| invitation_error(e, &user))?;
    let body = render(
        "invitation.html",
        context! { invitation => preview, user => user_view(&user), token => token },
    )?;
    Ok(Reply::html(200, body))
}

/// `POST /invitations/accept` (the accept page's form, same-origin only):
/// joins the org and lands on the inbox.
pub fn accept_invitation(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    auth::same_origin(req)?;
    let form = req.form()?;
    let token = field(&form, "token");
    let Some(user) = auth::session_user(ctx, req)? else {
        return Ok(Reply::redirect(&login_then(&accept_path(token))));
    };
    let accepted =
        invitations::accept(&ctx.notifier, &user, token).map_err(|e| invitation_error(e, &user))?;
    log::info!(
        "user {} joined {} through an invitation",
        user.id,
        accepted.organization_id
    );
    Ok(Reply::redirect(&format!(
        "/inbox?joined={}",
        query_escape(&accepted.organization_id)
    )))
}

fn accept_path(token: &str) -> String {
    format!("{ACCEPT_PATH}?token={}", query_escape(token))
}

/// Why an invitation cannot be accepted, in words for the person holding
/// the link.
fn invitation_error(e: crate::app::AppError, user: &User) -> ApiError {
    let mut e = ApiError::from(e);
    match e.status {
        403 => {
            e.message = format!(
                "This invitation was sent to another email address, and you are signed in \
                 as {}. Sign out, then open the link again and sign in as the person it \
                 was sent to.",
                user.email
            )
        }
        404 | 422 => {
            e.message = "This invitation link is not valid. Check that you opened the whole \
                         link from the email, or ask for a new invitation."
                .into()
        }
        _ => {}
    }
    e
}

/// `GET /dev/mail`: what the console provider "sent". Routed only with
/// `--dev`; otherwise the path does not exist. It shows invitation tokens,
/// so it answers only requests addressed to this server by name: a page
/// on another site that rebinds its own host name to this address (DNS
/// rebinding) gets a 421 and nothing of the mail.
pub fn dev_mail(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    let public_host = host_name(authority(&ctx.public_url));
    let host = req.header("host").map(host_name);
    let allowed = ["localhost", "127.0.0.1", "[::1]", public_host.as_str()];
    if !host.is_some_and(|h| allowed.contains(&h.as_str())) {
        return Err(ApiError::new(
            421,
            "misdirected_request",
            format!(
                "The dev mailbox answers only at localhost, 127.0.0.1, [::1] or {public_host} \
                 (the host of HERALD_PUBLIC_URL), not at the host this request named."
            ),
        ));
    }
    let mails = service::console_sent(ctx.notifier.store(), DEV_MAIL_LIMIT)?;
    let body = render("dev_mail.html", context! { mails => mails })?;
    Ok(Reply::html_with_csp(200, body, DEV_MAIL_CSP))
}

/// `http://user@host:8025/path` -> `host:8025`.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority.rsplit('@').next().unwrap_or(authority)
}

/// `Host: Example.TEST:8025` -> `example.test`; `[::1]:8025` -> `[::1]`.
fn host_name(authority: &str) -> String {
    let authority = authority.trim();
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest
            .split_once(']')
            .map_or(authority, |(ip, _)| &authority[..ip.len() + 2]),
        None => authority.split(':').next().unwrap_or(authority),
    };
    host.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_renders_and_escapes() {
        let evil = "<script>alert(1)</script>\"'";
        let user = json!({"id": "u", "name": evil, "email": evil});
        let items = vec![ItemView {
            id: "ntf_1".into(),
            num: 1,
            title: evil.into(),
            body: evil.into(),
            created_at: "2026-01-01T00:00:00.000Z".into(),
            time_text: display_time("2026-01-01T00:00:00.000Z"),
            unread: true,
            actions: vec![ActionView {
                label: evil.into(),
                url: "https://x.test/?a=\"><script>".into(),
            }],
        }];
        let html = render(
            "inbox.html",
            context! { user => user, items => items, unseen => 1, unread => true,
            newest => 1, next_cursor => None::<String>, live => true, joined => evil },
        )
        .unwrap();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"));
        let login = render("login.html", context! { error => evil, next => evil }).unwrap();
        assert!(!render("continue.html", context! { next => evil })
            .unwrap()
            .contains("<script>alert"));
        assert!(login.contains("&lt;script&gt;"));
        assert!(!login.contains("<script>alert"), "{login}");
        let invitation = invitations::Preview {
            org_name: evil.into(),
            role: evil.into(),
            email: evil.into(),
            inviter_name: evil.into(),
            expires_at: "2026-01-08T00:00:00.000Z".into(),
        };
        let html = render(
            "invitation.html",
            context! { invitation => invitation, user => user_view(&User {
            id: "u".into(), email: evil.into(), name: evil.into() }), token => evil },
        )
        .unwrap();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("id=\"accept\""), "{html}");
        let mails = vec![json!({"id": "d", "to": evil, "subject": evil,
            "html": "<img src=x onerror=alert(1)>", "text": evil, "createdAt": "t"})];
        let html = render("dev_mail.html", context! { mails => mails }).unwrap();
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(render(
            "error.html",
            context! { status => 404, heading => "h", message => evil }
        )
        .unwrap()
        .contains("&lt;script&gt;"));
    }

    #[test]
    fn host_names_ignore_ports_and_case() {
        assert_eq!(host_name("LocalHost:8025"), "localhost");
        assert_eq!(host_name("[::1]:8025"), "[::1]");
        assert_eq!(host_name("[::1]"), "[::1]");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
        assert_eq!(
            host_name(authority("https://u:p@Herald.Example.com:8443/x?y")),
            "herald.example.com"
        );
        assert_eq!(host_name(authority("http://127.0.0.1:8025")), "127.0.0.1");
    }

    #[test]
    fn only_site_paths_are_followed_after_signing_in() {
        assert_eq!(
            return_path(Some("/invitations/accept?token=hinv_1")),
            Some("/invitations/accept?token=hinv_1")
        );
        for bad in [
            "//evil.test",
            "https://evil.test/",
            "/\\evil.test",
            "/é",
            "",
        ] {
            assert_eq!(return_path(Some(bad)), None, "{bad}");
        }
        assert_eq!(
            login_then("/invitations/accept?token=a b"),
            "/login?next=%2Finvitations%2Faccept%3Ftoken%3Da%20b"
        );
    }
}
