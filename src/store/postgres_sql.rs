//! herald's SQL and database URLs in PostgreSQL's terms: the statement
//! text translated once per statement (placeholders, hints), the table an
//! insert writes (whose key `RETURNING` hands back), and URLs named for
//! messages and for databases of one's own.

/// The SQL herald writes, in PostgreSQL's dialect: `?N` placeholders become
/// `$N`, and SQLite's `INDEXED BY` planner hints are dropped (PostgreSQL's
/// planner chooses from statistics). Quoted text is left alone.
pub(super) fn translate(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.char_indices().peekable();
    let mut quote: Option<char> = None;
    while let Some((i, c)) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '?') => {
                out.push('$');
                continue;
            }
            (None, 'I') if sql[i..].starts_with("INDEXED BY ") => {
                // Skip the hint and the index name after it.
                let rest = &sql[i + "INDEXED BY ".len()..];
                let name = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                let skip = "INDEXED BY ".len() + name;
                while chars.peek().is_some_and(|&(j, _)| j < i + skip) {
                    chars.next();
                }
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// The table an `INSERT INTO <table> ...` writes.
pub(super) fn inserted_table(sql: &str) -> Option<&str> {
    let rest = sql.trim_start();
    let rest = rest
        .get(..12)
        .filter(|head| head.eq_ignore_ascii_case("INSERT INTO "))
        .map(|_| rest[12..].trim_start())?;
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    Some(&rest[..end]).filter(|t| !t.is_empty())
}

/// `url` naming database `name` instead of its own, its server and options
/// kept: for tools that make databases of their own on a server (the
/// tests, herald-bench).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// `url` with any password replaced, fit for logs and messages.
pub(super) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<database url>".to_string();
    };
    match rest.split_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{scheme}://{name}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_numbered_and_hints_go() {
        assert_eq!(
            translate("SELECT a FROM t INDEXED BY t_x WHERE a = ?1 AND b = '?2' AND c = ?12"),
            "SELECT a FROM t  WHERE a = $1 AND b = '?2' AND c = $12"
        );
        assert_eq!(translate("SELECT \"q?\" FROM t"), "SELECT \"q?\" FROM t");
    }

    #[test]
    fn the_inserted_table_is_found() {
        assert_eq!(
            inserted_table("\n  INSERT INTO outbox (id) VALUES (?1)"),
            Some("outbox")
        );
        assert_eq!(inserted_table("INSERT INTO t(a) VALUES (1)"), Some("t"));
        assert_eq!(inserted_table("UPDATE t SET a = 1"), None);
    }

    #[test]
    fn a_database_url_names_another_database_on_the_same_server() {
        assert_eq!(
            with_database("postgres://u@127.0.0.1:5432/test?sslmode=disable", "x"),
            "postgres://u@127.0.0.1:5432/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgresql://u:p@db", "x"),
            "postgresql://u:p@db/x"
        );
        assert_eq!(
            with_database("postgres://127.0.0.1", "x"),
            "postgres://127.0.0.1/x"
        );
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("postgres://herald:secret@db:5432/herald"),
            "postgres://herald:***@db:5432/herald"
        );
        assert_eq!(redact("postgres://db/herald"), "postgres://db/herald");
    }
}
