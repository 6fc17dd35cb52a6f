//! Locales (SPEC 10): BCP 47 tags as users and events carry them, read
//! case-insensitively and kept canonical (`fr-be` is stored `fr-BE`), and
//! the lookup chain `fr-BE` -> `fr` -> the default templates. Pure: the
//! templates decide which tags they have, the dispatcher whose tag applies.

use std::collections::HashMap;

use serde_json::Value;

use super::error::{invalid, NotifyError};

/// A tag longer than this is a mistake, not a locale (RFC 5646 advises
/// implementations to take at least 35 characters).
const MAX_LEN: usize = 35;

/// The canonical spelling of a well-formed BCP 47 tag made of a language
/// (2-3 letters), an optional script (4 letters), an optional region (2
/// letters or 3 digits) and variants (5-8 letters or digits, or a digit
/// and 3 more); None for anything else. Extensions and private use are
/// refused: no template directory would be looked up by them.
pub fn canonical(tag: &str) -> Option<String> {
    if tag.is_empty() || tag.len() > MAX_LEN {
        return None;
    }
    let mut parts = tag.split('-');
    let language = parts.next()?;
    if !(2..=3).contains(&language.len()) || !language.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    let mut out = language.to_ascii_lowercase();
    // Which subtag may come next: 0 script, 1 region, 2 variants.
    let mut stage = 0;
    for part in parts {
        let alpha = part.bytes().all(|b| b.is_ascii_alphabetic());
        let digits = part.bytes().all(|b| b.is_ascii_digit());
        let alnum = part.bytes().all(|b| b.is_ascii_alphanumeric());
        out.push('-');
        if stage == 0 && part.len() == 4 && alpha {
            let mut chars = part.chars();
            out.extend(chars.next().map(|c| c.to_ascii_uppercase()));
            out.push_str(&chars.as_str().to_ascii_lowercase());
            stage = 1;
        } else if stage <= 1 && ((part.len() == 2 && alpha) || (part.len() == 3 && digits)) {
            out.push_str(&part.to_ascii_uppercase());
            stage = 2;
        } else if alnum
            && ((5..=8).contains(&part.len())
                || (part.len() == 4 && part.as_bytes()[0].is_ascii_digit()))
        {
            out.push_str(&part.to_ascii_lowercase());
            stage = 2;
        } else {
            return None;
        }
    }
    Some(out)
}

/// Reads a `locale` field: a tag (made canonical), or None for null; an
/// error naming `field` for anything else.
pub fn parse_field(field: &str, value: &Value) -> Result<Option<String>, NotifyError> {
    match value {
        Value::Null => Ok(None),
        Value::String(tag) => canonical(tag).map(Some).ok_or_else(|| {
            invalid(
                field,
                &format!("{tag:?} is not a BCP 47 language tag (e.g. \"fr\" or \"fr-BE\")"),
            )
        }),
        _ => Err(invalid(
            field,
            "expected a BCP 47 language tag (e.g. \"fr-BE\") or null",
        )),
    }
}

/// The tags to try for `tag`, most specific first: `zh-Hant-TW`, then
/// `zh-Hant`, then `zh` (RFC 4647 lookup). The default comes after them.
pub fn chain(tag: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(tag);
    std::iter::from_fn(move || {
        let current = next?;
        next = current.rfind('-').map(|i| &current[..i]);
        Some(current)
    })
}

/// The locale directories among `files` (`<type>/<dir>/<file>`): per type,
/// each canonical tag with the directory that spells it. A directory whose
/// name is not a BCP 47 tag, or a second spelling of one tag, is a problem.
pub fn directories(
    origin: &str,
    files: &[(String, String)],
    problems: &mut Vec<String>,
) -> HashMap<String, HashMap<String, String>> {
    let mut dirs: HashMap<String, HashMap<String, String>> = HashMap::new();
    for (name, _) in files {
        let mut parts = name.splitn(3, '/');
        let (Some(ty), Some(dir), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Some(tag) = canonical(dir) else {
            let problem = format!(
                "{origin}/{ty}/{dir}: {dir:?} is not a BCP 47 locale tag (e.g. \"fr\" or \"fr-BE\")"
            );
            if !problems.contains(&problem) {
                problems.push(problem);
            }
            continue;
        };
        let spelled = dirs.entry(ty.to_string()).or_default();
        match spelled.get(&tag) {
            Some(other) if other != dir => {
                let problem =
                    format!("{origin}/{ty}: {other:?} and {dir:?} are the same locale {tag}");
                if !problems.contains(&problem) {
                    problems.push(problem);
                }
            }
            _ => {
                spelled.insert(tag, dir.to_string());
            }
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tags_are_read_case_insensitively_and_kept_canonical() {
        for (input, expected) in [
            ("fr", "fr"),
            ("FR-be", "fr-BE"),
            ("zh-hant-tw", "zh-Hant-TW"),
            ("es-419", "es-419"),
            ("de-CH-1996", "de-CH-1996"),
            ("sl-rozaj", "sl-rozaj"),
            ("ast", "ast"),
        ] {
            assert_eq!(canonical(input).as_deref(), Some(expected), "{input}");
        }
        for bad in [
            "",
            "f",
            "french",
            "fr_BE",
            "fr-",
            "-fr",
            "fr--BE",
            "fr-BE-FR",
            "fr-x-private",
            "en-US-u-ca-gregory",
            "../fr",
            "fr/BE",
            "é",
            "fr-Latn-Latn",
        ] {
            assert_eq!(canonical(bad), None, "{bad:?}");
        }
        assert_eq!(canonical(&"a".repeat(40)), None);
    }

    #[test]
    fn fields_are_parsed_or_named() {
        assert_eq!(
            parse_field("locale", &json!("fr-be")).unwrap().as_deref(),
            Some("fr-BE")
        );
        assert_eq!(parse_field("locale", &Value::Null).unwrap(), None);
        for bad in [json!("français"), json!(3), json!(["fr"])] {
            match parse_field("locale", &bad) {
                Err(NotifyError::Invalid { field, .. }) => assert_eq!(field, "locale"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_chain_drops_one_subtag_at_a_time() {
        assert_eq!(chain("fr-BE").collect::<Vec<_>>(), ["fr-BE", "fr"]);
        assert_eq!(
            chain("zh-Hant-TW").collect::<Vec<_>>(),
            ["zh-Hant-TW", "zh-Hant", "zh"]
        );
        assert_eq!(chain("es").collect::<Vec<_>>(), ["es"]);
    }
}
