//! Template rendering for every notification type: inbox title/body, email
//! subject/html/text, action urls and dedup/digest keys, all minijinja with
//! undefined variables as errors and `.html` auto-escaped. Loading checks that
//! each type has the templates its channels need and that its sample renders,
//! in every locale: `<type>/<locale>/<file>` translates a file, and a file a
//! locale lacks falls back along `fr-BE` -> `fr` -> the type's own file.

use std::collections::HashMap;
use std::path::Path;

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;
use serde_json::Value;

use super::error::NotifyError;
use super::links;
use super::locale;
use super::registry::{Channel, Registry, TypeDef};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_templates.rs"));
}

/// What an event renders to, once, before any row is written.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub inbox: Option<InboxContent>,
    pub email: Option<EmailContent>,
    /// The rendered `dedupKey`, if the type declares one.
    pub dedup_key: Option<String>,
    /// The rendered digest key, if the type is digested.
    pub digest_key: Option<String>,
    /// The rendered throttle key: "" for a throttle without one, None for a
    /// type without a throttle.
    pub throttle_key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct InboxContent {
    pub title: String,
    pub body: String,
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Action {
    pub label: String,
    pub url: String,
}

#[derive(Debug, Clone)]
pub struct EmailContent {
    pub subject: String,
    pub html: String,
    pub text: String,
}

pub struct Templates {
    env: Environment<'static>,
    /// Each registry type's template names, spelled once at load rather
    /// than formatted for every event.
    names: HashMap<String, Names>,
    /// Per type that has translations: its locale directories by canonical
    /// tag, each with the names its files resolve to after fallback. Types
    /// without any are absent, so the default path looks up nothing more.
    locales: HashMap<String, HashMap<String, Names>>,
}

/// A type's translated inbox and email content, as one locale renders it.
#[derive(Debug, Clone)]
pub struct Translated {
    pub inbox: Option<InboxContent>,
    pub email: Option<EmailContent>,
}

/// The files a translation may hold, by their name in a type's directory.
const FILES: [&str; 5] = [
    "inbox_title.txt",
    "inbox_body.txt",
    "email_subject.txt",
    "email.html",
    "email.txt",
];

/// The names of one type's templates in the environment.
struct Names {
    inbox_title: String,
    inbox_body: String,
    email_subject: String,
    email_html: String,
    email_text: String,
    actions: Vec<String>,
    dedup_key: String,
    digest_key: String,
    throttle_key: String,
}

impl Names {
    fn of(ty: &str, def: &TypeDef) -> Names {
        Names {
            inbox_title: format!("{ty}/inbox_title.txt"),
            inbox_body: format!("{ty}/inbox_body.txt"),
            email_subject: format!("{ty}/email_subject.txt"),
            email_html: format!("{ty}/email.html"),
            email_text: format!("{ty}/email.txt"),
            actions: (0..def.actions.len())
                .map(|i| inline_name(ty, &format!("action{i}")))
                .collect(),
            dedup_key: inline_name(ty, "dedupKey"),
            digest_key: inline_name(ty, "digestKey"),
            throttle_key: inline_name(ty, "throttleKey"),
        }
    }

    /// The files a type with the inbox channel must have.
    fn inbox_files(&self) -> [&str; 2] {
        [&self.inbox_title, &self.inbox_body]
    }

    /// The files a type with the email channel must have.
    fn email_files(&self) -> [&str; 3] {
        [&self.email_subject, &self.email_html, &self.email_text]
    }
}

impl Templates {
    /// Compiles the templates for `registry` from `dir` (or the embedded
    /// set) and renders every type's sample; any problem refuses the whole
    /// set with every message, naming the type, file and line.
    pub fn load(registry: &Registry, dir: Option<&Path>) -> Result<Templates, NotifyError> {
        let files = match dir {
            Some(dir) => read_dir_templates(dir)?,
            None => embedded::TEMPLATES
                .iter()
                .map(|(n, s)| (n.to_string(), s.to_string()))
                .collect(),
        };
        let origin = dir.map_or("templates (embedded)".to_string(), |d| {
            d.display().to_string()
        });
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        let mut problems = Vec::new();
        let dirs = locale::directories(&origin, &files, &mut problems);
        for (name, source) in files {
            if let Err(e) = env.add_template_owned(name, source) {
                problems.push(describe(&origin, &e));
            }
        }
        let names: HashMap<String, Names> = registry
            .types()
            .map(|(ty, def)| (ty.to_string(), Names::of(ty, def)))
            .collect();
        for (ty, def) in registry.types() {
            for (field, source) in inline_templates(def) {
                if let Err(e) = env.add_template_owned(inline_name(ty, &field), source) {
                    problems.push(describe(&registry.source, &e));
                }
            }
            let names = &names[ty];
            for (channel, files) in [
                (Channel::Inbox, &names.inbox_files()[..]),
                (Channel::Email, &names.email_files()[..]),
            ] {
                for file in files.iter().filter(|_| def.has(channel)) {
                    if env.get_template(file).is_err() {
                        problems.push(format!("{origin}: type {ty}: missing template {file}"));
                    }
                }
            }
        }
        let locales = resolve_locales(&env, &names, dirs);
        let templates = Templates {
            env,
            names,
            locales,
        };
        if problems.is_empty() {
            for (ty, def) in registry.types() {
                if let Err(e) = templates.render(ty, def, &def.sample) {
                    problems.push(format!("type {ty}: sample does not render: {e}"));
                } else if let Err(e) = templates.render(ty, def, &only_required(def)) {
                    problems.push(templates.unrequired_problem(ty, def, &e));
                }
                problems.extend(templates.check_translations(ty, def));
            }
        }
        if problems.is_empty() {
            Ok(templates)
        } else {
            Err(NotifyError::Config(problems.join("\n")))
        }
    }

    /// Renders everything one event needs: its channels' content and its
    /// dedup and digest keys. The payload is converted to a template value
    /// once, and that one value serves every template of the event.
    pub fn render(
        &self,
        ty: &str,
        def: &TypeDef,
        payload: &Value,
    ) -> Result<Rendered, NotifyError> {
        // A type the templates were not loaded for has none in `env` either.
        let names = self
            .names
            .get(ty)
            .ok_or_else(|| NotifyError::Render(format!("no templates loaded for type {ty:?}")))?;
        let ctx = minijinja::Value::from_serialize(payload);
        let Translated { inbox, email } = self.content(ty, def, names, &ctx)?;
        let key =
            |declared: bool, name: &str| declared.then(|| self.one_line(name, &ctx)).transpose();
        Ok(Rendered {
            inbox,
            email,
            dedup_key: key(def.dedup_key.is_some(), &names.dedup_key)?,
            digest_key: key(def.digest.is_some(), &names.digest_key)?,
            throttle_key: match &def.throttle {
                Some(throttle) => {
                    Some(key(throttle.key.is_some(), &names.throttle_key)?.unwrap_or_default())
                }
                None => None,
            },
        })
    }

    /// Every locale some type is translated into, sorted.
    pub fn locales(&self) -> Vec<String> {
        let mut tags: Vec<String> = self
            .locales
            .values()
            .flat_map(|t| t.keys().cloned())
            .collect();
        tags.sort();
        tags.dedup();
        tags
    }

    /// The translation of type `ty` that serves `tag` (a canonical tag),
    /// the most specific first (`fr-BE`, else `fr`); None when the type's
    /// own files serve it.
    pub fn translation<'t>(&'t self, ty: &str, tag: &str) -> Option<&'t str> {
        let translations = self.locales.get(ty)?;
        locale::chain(tag).find_map(|t| translations.get_key_value(t).map(|(k, _)| k.as_str()))
    }

    /// Renders the inbox and email content of one event in translation
    /// `tag` (as `translation` named it). Keys and action urls are not
    /// translated: they come from `render`.
    pub fn render_translated(
        &self,
        ty: &str,
        def: &TypeDef,
        payload: &Value,
        tag: &str,
    ) -> Result<Translated, NotifyError> {
        let names = self
            .locales
            .get(ty)
            .and_then(|t| t.get(tag))
            .ok_or_else(|| NotifyError::Render(format!("no {tag} templates for type {ty:?}")))?;
        self.content(ty, def, names, &minijinja::Value::from_serialize(payload))
    }

    /// Every translation of `ty` rendered with the sample, and with only
    /// its required fields: each failure names the locale and the file.
    fn check_translations(&self, ty: &str, def: &TypeDef) -> Vec<String> {
        let Some(translations) = self.locales.get(ty) else {
            return Vec::new();
        };
        let mut tags: Vec<&String> = translations.keys().collect();
        tags.sort();
        let mut problems = Vec::new();
        for tag in tags {
            for (payload, what) in [
                (def.sample.clone(), "sample does not render"),
                (
                    only_required(def),
                    "templates use fields that are not in \"required\"",
                ),
            ] {
                if let Err(e) = self.render_translated(ty, def, &payload, tag) {
                    problems.push(format!("type {ty}, locale {tag}: {what}: {e}"));
                    break;
                }
            }
        }
        problems
    }

    /// The inbox and email content of an event, from the files `names`
    /// gives.
    fn content(
        &self,
        ty: &str,
        def: &TypeDef,
        names: &Names,
        ctx: &minijinja::Value,
    ) -> Result<Translated, NotifyError> {
        let inbox = if def.has(Channel::Inbox) {
            let mut actions = Vec::with_capacity(def.actions.len());
            for (a, name) in def.actions.iter().zip(&names.actions) {
                let url = self.one_line(name, ctx)?;
                match links::web_link(&url) {
                    Some(_) => actions.push(Action {
                        label: a.label.clone(),
                        url,
                    }),
                    // The url is left out of the log: it may hold a token.
                    None => log::warn!(
                        "type {ty}: action {:?} is not an http(s) url or a path on this \
                         site; the notification goes out without it",
                        a.label
                    ),
                }
            }
            Some(InboxContent {
                title: single_line(&self.one_line(&names.inbox_title, ctx)?),
                body: self.one_line(&names.inbox_body, ctx)?,
                actions,
            })
        } else {
            None
        };
        let email = if def.has(Channel::Email) {
            Some(EmailContent {
                subject: single_line(&self.one_line(&names.email_subject, ctx)?),
                html: links::guard_html(self.file(&names.email_html, ctx)?),
                text: self.file(&names.email_text, ctx)?,
            })
        } else {
            None
        };
        Ok(Translated { inbox, email })
    }

    /// Names the fields a type's templates use without guarding them that
    /// `required` does not promise: an event may omit them and would then
    /// fail to render at dispatch.
    fn unrequired_problem(&self, ty: &str, def: &TypeDef, e: &NotifyError) -> String {
        let globals: Vec<&str> = self.env.globals().map(|(name, _)| name).collect();
        let mut names: Vec<String> = self
            .env
            .templates()
            .filter(|(name, _)| name.starts_with(&format!("{ty}/")))
            .flat_map(|(_, t)| t.undeclared_variables(false))
            .filter(|v| !def.required.contains(v) && !globals.contains(&v.as_str()))
            .collect();
        names.sort();
        names.dedup();
        format!(
            "type {ty}: templates use fields that are not in \"required\" ({}): {e}",
            names.join(", ")
        )
    }

    fn file(&self, name: &str, ctx: &minijinja::Value) -> Result<String, NotifyError> {
        let template = self
            .env
            .get_template(name)
            .map_err(|e| NotifyError::Render(describe("templates", &e)))?;
        template
            .render(ctx)
            .map_err(|e| NotifyError::Render(describe("templates", &e)))
    }

    /// Titles, subjects, urls and keys are single lines: surrounding
    /// whitespace (a trailing newline in the file) is not part of them.
    fn one_line(&self, name: &str, ctx: &minijinja::Value) -> Result<String, NotifyError> {
        Ok(self.file(name, ctx)?.trim().to_string())
    }
}

/// A subject or title on one line whatever the payload holds: each run of
/// control characters (CR, LF, tab ...) becomes one space, so a value such
/// as `"admin\r\nBcc: victim@evil.test"` can never start a new mail header.
fn single_line(s: &str) -> String {
    if !s.contains(char::is_control) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut in_run = false;
    for c in s.chars() {
        if c.is_control() {
            if !in_run {
                out.push(' ');
            }
            in_run = true;
        } else {
            out.push(c);
            in_run = false;
        }
    }
    out
}

/// The sample cut down to the required fields: the least an accepted event
/// carries.
fn only_required(def: &TypeDef) -> Value {
    let fields = def
        .required
        .iter()
        .filter_map(|f| def.sample.get(f).map(|v| (f.clone(), v.clone())))
        .collect();
    Value::Object(fields)
}

/// Templates written inline in the registry, by their field name.
fn inline_templates(def: &TypeDef) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = def
        .actions
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("action{i}"), a.url.clone()))
        .collect();
    if let Some(key) = &def.dedup_key {
        out.push(("dedupKey".into(), key.clone()));
    }
    if let Some(digest) = &def.digest {
        out.push(("digestKey".into(), digest.key.clone()));
    }
    if let Some(key) = def.throttle.as_ref().and_then(|t| t.key.as_ref()) {
        out.push(("throttleKey".into(), key.clone()));
    }
    out
}

fn inline_name(ty: &str, field: &str) -> String {
    format!("{ty}/#{field}")
}

/// Each translation's file names after fallback: per file, the most
/// specific locale directory that has it (`fr-BE`, then `fr`), else the
/// type's own file. Only types of the registry are kept.
fn resolve_locales(
    env: &Environment<'static>,
    names: &HashMap<String, Names>,
    dirs: HashMap<String, HashMap<String, String>>,
) -> HashMap<String, HashMap<String, Names>> {
    let mut locales = HashMap::new();
    for (ty, spelled) in dirs {
        let Some(own) = names.get(&ty) else { continue };
        let mut translations = HashMap::new();
        for tag in spelled.keys() {
            let resolve = |file: &str, default: &String| {
                locale::chain(tag)
                    .filter_map(|t| spelled.get(t))
                    .map(|dir| format!("{ty}/{dir}/{file}"))
                    .find(|name| env.get_template(name).is_ok())
                    .unwrap_or_else(|| default.clone())
            };
            let [title, body, subject, html, text] = FILES;
            let translated = Names {
                inbox_title: resolve(title, &own.inbox_title),
                inbox_body: resolve(body, &own.inbox_body),
                email_subject: resolve(subject, &own.email_subject),
                email_html: resolve(html, &own.email_html),
                email_text: resolve(text, &own.email_text),
                actions: own.actions.clone(),
                dedup_key: own.dedup_key.clone(),
                digest_key: own.digest_key.clone(),
                throttle_key: own.throttle_key.clone(),
            };
            translations.insert(tag.clone(), translated);
        }
        locales.insert(ty, translations);
    }
    locales
}

fn describe(origin: &str, e: &minijinja::Error) -> String {
    let mut msg = format!("{origin}: {}", e.kind());
    if let Some(detail) = e.detail() {
        msg.push_str(&format!(": {detail}"));
    }
    match (e.name(), e.line()) {
        (Some(name), Some(line)) => msg.push_str(&format!(" (template {name}, line {line})")),
        (Some(name), None) => msg.push_str(&format!(" (template {name})")),
        _ => {}
    }
    msg
}

fn read_dir_templates(dir: &Path) -> Result<Vec<(String, String)>, NotifyError> {
    let io = |e: std::io::Error| NotifyError::Config(format!("{}: {e}", dir.display()));
    let mut out = Vec::new();
    for ty in std::fs::read_dir(dir).map_err(io)? {
        let ty = ty.map_err(io)?;
        if !ty.path().is_dir() {
            continue;
        }
        let ty_name = ty.file_name().to_string_lossy().to_string();
        for file in std::fs::read_dir(ty.path()).map_err(io)? {
            let file = file.map_err(io)?;
            let name = file.file_name().to_string_lossy().to_string();
            if !file.path().is_dir() {
                let source = std::fs::read_to_string(file.path()).map_err(io)?;
                out.push((format!("{ty_name}/{name}"), source));
                continue;
            }
            // A locale directory: its files translate the type's.
            for translated in std::fs::read_dir(file.path()).map_err(io)? {
                let translated = translated.map_err(io)?;
                if translated.path().is_dir() {
                    continue;
                }
                let source = std::fs::read_to_string(translated.path()).map_err(io)?;
                let file_name = translated.file_name().to_string_lossy().to_string();
                out.push((format!("{ty_name}/{name}/{file_name}"), source));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod locale_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn registry(json: &str) -> Registry {
        Registry::parse("test.json", json).unwrap()
    }

    #[test]
    fn embedded_templates_render_every_sample() {
        let r = Registry::embedded().unwrap();
        Templates::load(&r, None).unwrap();
    }

    #[test]
    fn html_is_escaped_and_text_is_not() {
        let r = Registry::embedded().unwrap();
        let t = Templates::load(&r, None).unwrap();
        let def = r.get("org.member.role_changed").unwrap();
        let mut payload = def.sample.clone();
        payload["orgName"] = json!("<b>Acme</b>");
        let out = t.render("org.member.role_changed", def, &payload).unwrap();
        let email = out.email.unwrap();
        assert!(email.html.contains("&lt;b&gt;Acme&lt;"), "{}", email.html);
        assert!(!email.html.contains("<b>Acme"));
        assert!(email.text.contains("<b>Acme</b>"));
    }

    #[test]
    fn subjects_stay_on_one_line_and_only_web_links_survive() {
        let r = Registry::embedded().unwrap();
        let t = Templates::load(&r, None).unwrap();
        let def = r.get("org.invitation.sent").unwrap();
        let mut payload = def.sample.clone();
        payload["orgName"] = json!("admin\r\nBcc: victim@evil.test");
        for url in [" javascript:alert(1)", "/\t/evil.test/phish", "//evil.test"] {
            payload["acceptUrl"] = json!(url);
            let out = t.render("org.invitation.sent", def, &payload).unwrap();
            let email = out.email.unwrap();
            assert_eq!(
                email.subject,
                "You're invited to join admin Bcc: victim@evil.test"
            );
            assert!(!email.html.contains("href"), "{url:?}: {}", email.html);
            assert!(email.html.contains("Accept invitation</a>"));
            let inbox = out.inbox.unwrap();
            assert!(!inbox.title.contains(['\r', '\n']), "{}", inbox.title);
            assert!(inbox.actions.is_empty(), "{url:?}");
        }
        payload["acceptUrl"] = json!("/invitations/accept?token=t");
        let out = t.render("org.invitation.sent", def, &payload).unwrap();
        assert_eq!(out.inbox.unwrap().actions.len(), 1);
        assert_eq!(out.email.unwrap().html.matches("href=").count(), 2);
    }

    #[test]
    fn missing_templates_and_undefined_variables_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("t")).unwrap();
        std::fs::write(dir.path().join("t/inbox_title.txt"), "Hi {{ who }}").unwrap();
        std::fs::write(
            dir.path().join("t/inbox_body.txt"),
            "line one\n{{ missing }}",
        )
        .unwrap();
        let r = registry(
            r#"{"types": {"t": {"channels": ["inbox", "email"], "required": ["who"], "sample": {"who": "x"}}}}"#,
        );
        let err = Templates::load(&r, Some(dir.path()))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("missing template t/email.html"), "{err}");
        let r = registry(
            r#"{"types": {"t": {"channels": ["inbox"], "required": ["who"], "sample": {"who": "x"}}}}"#,
        );
        let err = Templates::load(&r, Some(dir.path()))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("type t") && err.contains("t/inbox_body.txt") && err.contains("line 2"),
            "{err}"
        );
    }
}
