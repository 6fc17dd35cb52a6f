//! The one rule for what may become a link in anything herald shows or
//! sends: an absolute `http://` or `https://` url, or a path on this site
//! (`/orders/1`). Urls come from payloads, which the embedding application
//! may fill with user input, so the rule refuses rather than repairs:
//! anything a browser would read differently from how it looks (a leading
//! space before `javascript:`, a tab in `/\t/evil.test` that the url parser
//! drops to leave `//evil.test`, a backslash it reads as a slash) is not a
//! link at all. Inbox actions, the inbox page and its script, the login
//! page's return path and email HTML all go through here.

use std::borrow::Cow;

/// `url` itself if it may be a link, else None.
pub fn web_link(url: &str) -> Option<&str> {
    if !plain(url) {
        return None;
    }
    let scheme_end = url.find("://").filter(|&i| i <= "https".len());
    let web_scheme = scheme_end.is_some_and(|i| {
        let scheme = &url[..i];
        scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")
    });
    if web_scheme {
        return Some(url);
    }
    site_path(url)
}

/// `url` if it is a path on this site: it starts with one `/`, so neither a
/// scheme nor another host (`//host`) can follow.
pub fn site_path(url: &str) -> Option<&str> {
    (plain(url) && url.starts_with('/') && !url.starts_with("//")).then_some(url)
}

/// No control character anywhere (tab, CR, LF, NUL ...), no backslash, no
/// whitespace at either end: the characters browsers strip or reinterpret
/// before they resolve a url.
fn plain(url: &str) -> bool {
    !url.is_empty()
        && !url.chars().any(|c| c.is_control() || c == '\\')
        && !url.starts_with(char::is_whitespace)
        && !url.ends_with(char::is_whitespace)
}

/// The attributes whose value a browser or mail client follows when
/// clicked or submitted.
const LINK_ATTRIBUTES: &[&str] = &["href", "action", "formaction", "xlink:href"];

/// Rendered email HTML with every link attribute that fails `web_link`
/// removed, so the element stays (its text shows) but goes nowhere. The
/// markup comes from the operator's template and the values from payloads,
/// auto-escaped: a value cannot open a tag or close an attribute's quotes,
/// so the tags and attributes seen here are the template's own.
pub fn guard_html(html: String) -> String {
    without_unsafe_links(&html).unwrap_or(html)
}

/// None if every link attribute of `html` passes.
fn without_unsafe_links(html: &str) -> Option<String> {
    let mut out = String::new();
    // Up to here `html` is copied into `out` (only once something changed).
    let mut copied = 0;
    let bytes = html.as_bytes();
    let mut i = 0;
    while let Some(open) = html[i..].find('<').map(|o| i + o) {
        i = open + 1;
        if html[open..].starts_with("<!--") {
            i = html[open..]
                .find("-->")
                .map_or(html.len(), |c| open + c + 3);
            continue;
        }
        if !bytes.get(i).is_some_and(u8::is_ascii_alphabetic) {
            continue;
        }
        while i < bytes.len() && !is_space(bytes[i]) && bytes[i] != b'>' && bytes[i] != b'/' {
            i += 1;
        }
        loop {
            while i < bytes.len() && (is_space(bytes[i]) || bytes[i] == b'/') {
                i += 1;
            }
            if i >= bytes.len() || bytes[i] == b'>' {
                break;
            }
            let Some(attr) = attribute(html, i) else {
                break;
            };
            let is_link = LINK_ATTRIBUTES
                .iter()
                .any(|name| name.eq_ignore_ascii_case(attr.name));
            if is_link && web_link(&decode_entities(attr.value)).is_none() {
                out.push_str(&html[copied..attr.start]);
                copied = attr.end;
            }
            i = attr.end;
        }
    }
    if copied == 0 {
        return None;
    }
    out.push_str(&html[copied..]);
    Some(out)
}

struct Attribute<'a> {
    name: &'a str,
    /// As written, entities and all (empty for an attribute without one).
    value: &'a str,
    start: usize,
    end: usize,
}

/// The attribute starting at `start` inside a tag: `name`, `name=value`,
/// `name="value"` or `name='value'`. None if the tag ends unterminated.
fn attribute(html: &str, start: usize) -> Option<Attribute<'_>> {
    let bytes = html.as_bytes();
    let mut i = start;
    while i < bytes.len() && !is_space(bytes[i]) && !matches!(bytes[i], b'=' | b'>' | b'/') {
        i += 1;
    }
    let name = &html[start..i];
    if name.is_empty() {
        // A stray `=`: step over it.
        return Some(Attribute {
            name,
            value: "",
            start,
            end: start + 1,
        });
    }
    let mut j = i;
    while j < bytes.len() && is_space(bytes[j]) {
        j += 1;
    }
    if bytes.get(j) != Some(&b'=') {
        return Some(Attribute {
            name,
            value: "",
            start,
            end: i,
        });
    }
    j += 1;
    while j < bytes.len() && is_space(bytes[j]) {
        j += 1;
    }
    let (value, end) = match bytes.get(j)? {
        quote @ (b'"' | b'\'') => {
            let close = j + 1 + html[j + 1..].find(*quote as char)?;
            (&html[j + 1..close], close + 1)
        }
        _ => {
            let mut k = j;
            while k < bytes.len() && !is_space(bytes[k]) && bytes[k] != b'>' {
                k += 1;
            }
            (&html[j..k], k)
        }
    };
    Some(Attribute {
        name,
        value,
        start,
        end,
    })
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')
}

/// An attribute value as the browser reads it. Numeric references and the
/// named ones that auto-escaping writes are decoded; any other named
/// reference turns into a control character, so a value that leans on one
/// is never taken for a link.
fn decode_entities(value: &str) -> Cow<'_, str> {
    if !value.contains('&') {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let reference = rest[1..]
            .find(';')
            .map(|semi| &rest[1..1 + semi])
            .filter(|r| !r.is_empty() && r.len() <= 32);
        let Some(reference) = reference else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let decoded = match reference {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => reference.strip_prefix('#').and_then(|n| {
                let code = match n.strip_prefix(['x', 'X']) {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => n.parse().ok(),
                };
                code.and_then(char::from_u32)
            }),
        };
        out.push(decoded.unwrap_or('\0'));
        rest = &rest[reference.len() + 2..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_links_are_http_urls_and_paths_on_this_site() {
        for ok in [
            "https://a.test/x",
            "HTTP://a.test",
            "http://a.test/?q=two words",
            "/invitations/accept?token=1",
            "/",
        ] {
            assert_eq!(web_link(ok), Some(ok), "{ok:?}");
        }
        for bad in [
            "",
            "javascript:alert(1)",
            " javascript:alert(1)",
            " JavaScript:alert(1)",
            "java\tscript:alert(1)",
            "data:text/html,<b>",
            "vbscript:x",
            "mailto:a@b.test",
            "//evil.test",
            "/\\evil.test",
            "/\t/evil.test/phish",
            "/\n/evil.test",
            "\t//evil.test",
            " /x",
            "/x ",
            "https://a.test/\nx",
            "https:\\\\evil.test",
            "http:evil.test",
            "xhttps://a.test",
            "relative/path",
            "?q=1",
            "#top",
        ] {
            assert_eq!(web_link(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_paths_are_site_paths() {
        assert_eq!(site_path("/inbox"), Some("/inbox"));
        for bad in ["https://a.test/", "//a.test", "/\\a.test", "/\tx", ""] {
            assert_eq!(site_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn unsafe_link_attributes_leave_email_html() {
        let cases = [
            // As minijinja writes payload values into quoted attributes.
            (
                r#"<a href=" javascript:alert(1)" style="x">Accept</a>"#,
                r#"<a  style="x">Accept</a>"#,
            ),
            (
                "<p><a href=\"/\t&#x2f;evil.test&#x2f;phish\">go</a></p>",
                "<p><a >go</a></p>",
            ),
            (
                "<A HREF='jav&#x61;script:x'>a</A>",
                "<A >a</A>",
            ),
            ("<a href=javascript:x>a</a>", "<a >a</a>"),
            (
                "<form action=\"data:text/html,x\"><button formaction='vbscript:y'>b</button></form>",
                "<form ><button >b</button></form>",
            ),
            ("<a href=\"&#x2f;&#x2f;evil.test\">a</a>", "<a >a</a>"),
            ("<a href=\"javascript&colon;x\">a</a>", "<a >a</a>"),
        ];
        for (html, expected) in cases {
            assert_eq!(guard_html(html.to_string()), expected, "{html}");
        }
    }

    #[test]
    fn web_links_and_everything_else_pass_unchanged() {
        let html = "<!DOCTYPE html><html><head><style>a > b { color: red }</style></head>\
            <body><a href=\"https:&#x2f;&#x2f;app.test&#x2f;accept?t=1&amp;x=2\">ok</a> \
            <a href='/inbox'>inbox</a> <img src=\"cid:logo\" alt=\"x\"> \
            text with href=javascript:x and a < b, <!-- <a href=\"javascript:x\"> --></body></html>";
        assert_eq!(without_unsafe_links(html), None);
    }
}
