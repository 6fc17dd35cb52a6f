//! A parsed request: method, decoded path segments, query, headers and the
//! body (read whole by the server, under the 1 MiB limit). Handlers see only
//! this type.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::ApiError;

pub const MAX_BODY: usize = 1024 * 1024;

pub struct Req {
    pub method: String,
    pub path: String,
    pub segments: Vec<String>,
    pub query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    /// Decodes what a handler may need; 400 for a path or query that does
    /// not decode.
    pub fn parse(request: super::server::Request) -> Result<Req, ApiError> {
        let (path, query) = match request.target.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (request.target, String::new()),
        };
        let segments = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::bad_request("path is not valid percent-encoded UTF-8"))?;
        let query = parse_urlencoded(&query)
            .ok_or_else(|| ApiError::bad_request("query is not valid percent-encoded UTF-8"))?;
        Ok(Req {
            method: request.method.to_ascii_uppercase(),
            path,
            segments,
            query,
            headers: request.headers,
            body: request.body,
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A cookie sent with the request, by name.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == "cookie")
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.trim())
    }

    /// The body as an HTML form (`application/x-www-form-urlencoded`).
    pub fn form(&self) -> Result<Vec<(String, String)>, ApiError> {
        let content_type = self.header("content-type").unwrap_or("");
        if !content_type
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
        {
            return Err(ApiError::new(
                415,
                "unsupported_media_type",
                "form must be sent as application/x-www-form-urlencoded",
            ));
        }
        let body = std::str::from_utf8(&self.body)
            .map_err(|_| ApiError::bad_request("form is not UTF-8"))?;
        parse_urlencoded(body).ok_or_else(|| ApiError::bad_request("form is not valid UTF-8"))
    }

    /// The `limit` query parameter: `default` when absent, 400 unless it is
    /// 1 to `max`.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.query("limit") {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| ApiError::bad_request(format!("limit must be 1 to {max}"))),
        }
    }

    pub fn bearer(&self) -> Option<&str> {
        let value = self.header("authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    }

    /// The body as JSON: 415 unless declared JSON, 400 if it does not parse.
    pub fn json_value(&self) -> Result<Value, ApiError> {
        let content_type = self.header("content-type").unwrap_or("");
        if !content_type
            .to_ascii_lowercase()
            .starts_with("application/json")
        {
            return Err(ApiError::new(
                415,
                "unsupported_media_type",
                "request body must be sent as Content-Type: application/json",
            ));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))
    }

    /// The body as a typed request: shape errors are 422 naming the field.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let value = self.json_value()?;
        serde_json::from_value(value)
            .map_err(|e| ApiError::new(422, "validation_failed", e.to_string()))
    }
}

/// `a=1&b=x+y` -> [("a", "1"), ("b", "x y")]; None if anything fails to
/// decode.
fn parse_urlencoded(s: &str) -> Option<Vec<(String, String)>> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((
                percent_decode(&k.replace('+', " "))?,
                percent_decode(&v.replace('+', " "))?,
            ))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2Fc").as_deref(), Some("a b/c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
