//! Translations: the embedded French, fallback per file, and problems named
//! by locale and file.

use serde_json::json;

use super::*;
use crate::notify::translations::Translations;

fn registry(json: &str) -> Registry {
    Registry::parse("test.json", json).unwrap()
}

#[test]
fn every_embedded_type_has_a_french_translation_of_every_file() {
    let r = Registry::embedded().unwrap();
    let t = Templates::load(&r, None).unwrap();
    assert_eq!(t.locales(), ["fr"]);
    for (ty, def) in r.types() {
        let names = &t.locales[ty]["fr"];
        let files = [
            &names.inbox_title,
            &names.inbox_body,
            &names.email_subject,
            &names.email_html,
            &names.email_text,
        ];
        let needed = files
            .iter()
            .filter(|n| t.env.get_template(&format!("{ty}/{}", file_of(n))).is_ok());
        for name in needed {
            assert!(name.starts_with(&format!("{ty}/fr/")), "{ty}: {name}");
        }
        let tag = t.translation(ty, "fr-BE").unwrap();
        t.render_translated(ty, def, &def.sample, tag).unwrap();
    }
    let def = r.get("org.invitation.sent").unwrap();
    let fr = t
        .render_translated("org.invitation.sent", def, &def.sample, "fr")
        .unwrap();
    let email = fr.email.unwrap();
    assert!(
        email.subject.starts_with("Invitation à rejoindre"),
        "{}",
        email.subject
    );
    assert!(email.html.contains("<html lang=\"fr\">"));
    assert_eq!(t.translation("org.invitation.sent", "es"), None);
}

fn file_of(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// A type `t` with both channels: default files, and locale
/// directories written by `locales` as (dir, file, source).
fn with_locales(locales: &[(&str, &str, &str)]) -> Result<Templates, NotifyError> {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t");
    std::fs::create_dir(&t).unwrap();
    for (file, source) in [
        ("inbox_title.txt", "Hello {{ who }}"),
        ("inbox_body.txt", "Body"),
        ("email_subject.txt", "Subject {{ who }}"),
        ("email.html", "<p>Hi {{ who }}</p>"),
        ("email.txt", "Hi {{ who }}"),
    ] {
        std::fs::write(t.join(file), source).unwrap();
    }
    for (locale, file, source) in locales {
        std::fs::create_dir_all(t.join(locale)).unwrap();
        std::fs::write(t.join(locale).join(file), source).unwrap();
    }
    let r = registry(
        r#"{"types": {"t": {"channels": ["inbox", "email"], "required": ["who"], "sample": {"who": "x"}}}}"#,
    );
    Templates::load(&r, Some(dir.path()))
}

#[test]
fn each_file_falls_back_from_region_to_language_to_default() {
    let t = with_locales(&[
        ("fr", "inbox_title.txt", "Bonjour {{ who }}"),
        ("fr", "email_subject.txt", "Sujet {{ who }}"),
        ("fr-be", "email_subject.txt", "Objet {{ who }}"),
    ])
    .unwrap();
    let r = registry(
        r#"{"types": {"t": {"channels": ["inbox", "email"], "required": ["who"], "sample": {"who": "x"}}}}"#,
    );
    let def = r.get("t").unwrap();
    let payload = json!({"who": "Ana"});
    assert_eq!(t.translation("t", "fr-BE"), Some("fr-BE"));
    assert_eq!(t.translation("t", "fr-CA"), Some("fr"));
    assert_eq!(t.translation("t", "de"), None);
    let be = t.render_translated("t", def, &payload, "fr-BE").unwrap();
    let (inbox, email) = (be.inbox.unwrap(), be.email.unwrap());
    assert_eq!(inbox.title, "Bonjour Ana");
    assert_eq!(inbox.body, "Body");
    assert_eq!(email.subject, "Objet Ana");
    assert_eq!(email.text, "Hi Ana");
    let fr = t.render_translated("t", def, &payload, "fr").unwrap();
    assert_eq!(fr.email.unwrap().subject, "Sujet Ana");
    let mut translations = Translations::default();
    let picked = translations.pick(&t, "t", def, &payload, Some("fr-CA"));
    assert_eq!(translations.get(picked).map(|(tag, _)| tag), Some("fr"));
    assert_eq!(translations.pick(&t, "t", def, &payload, None), None);
    assert_eq!(translations.pick(&t, "t", def, &payload, Some("es")), None);
    assert_eq!(
        translations.pick(&t, "t", def, &payload, Some("fr")),
        picked
    );
    assert!(
        translations.get(Some(1)).is_none(),
        "one translation rendered"
    );
}

#[test]
fn a_broken_translation_is_named_by_locale_and_file() {
    let err = with_locales(&[("fr", "email.txt", "Bonjour\n{{ whom }}")])
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("locale fr") && err.contains("t/fr/email.txt") && err.contains("line 2"),
        "{err}"
    );
    let err = with_locales(&[("french", "email.txt", "Bonjour")])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("t/french") && err.contains("BCP 47"), "{err}");
    let err = with_locales(&[("fr", "email.txt", "a"), ("FR", "inbox_body.txt", "b")])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("the same locale fr"), "{err}");
}
