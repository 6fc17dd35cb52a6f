//! What a handler returns: a status, a JSON (or other) body and headers.

use serde::Serialize;

use super::error::ApiError;

/// Pages run only our own script and style; no inline script, so an
/// injected `<script>` or `onerror=` could not run even if escaping failed.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
    /// Set for `GET /v1/inbox/stream`: instead of this reply, the connection
    /// goes to the stream hub.
    pub stream: Option<super::stream::Subscribe>,
    /// Set by signing out or revoking tokens: the open streams that end now.
    pub ends_streams: Option<super::stream::EndStreams>,
}

impl Reply {
    pub fn json(status: u16, value: &impl Serialize) -> Reply {
        match serde_json::to_vec(value) {
            Ok(body) => Reply {
                status,
                content_type: "application/json",
                body,
                headers: Vec::new(),
                stream: None,
                ends_streams: None,
            },
            Err(e) => Reply::error(ApiError::internal(format!("cannot encode response: {e}"))),
        }
    }

    pub fn text(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
            stream: None,
            ends_streams: None,
        }
    }

    /// A server-rendered page: UTF-8 HTML that may not be framed, sniffed or
    /// run scripts other than our own.
    pub fn html(status: u16, body: String) -> Reply {
        Reply::html_with_csp(status, body, PAGE_CSP)
    }

    /// A page with its own content policy.
    pub fn html_with_csp(status: u16, body: String, csp: &str) -> Reply {
        Reply::text(status, "text/html; charset=utf-8", body).with_page_headers(csp)
    }

    /// 303 See Other to `location` (after a form POST, or to sign in).
    pub fn redirect(location: &str) -> Reply {
        Reply::text(303, "text/plain; charset=utf-8", Vec::new()).header("Location", location)
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    /// The security headers of every HTML page, with its content policy.
    fn with_page_headers(self, csp: &str) -> Reply {
        self.header("Content-Security-Policy", csp)
            .header("X-Content-Type-Options", "nosniff")
            .header("X-Frame-Options", "DENY")
            .header("Referrer-Policy", "same-origin")
            .header("Cache-Control", "no-store")
    }

    /// Hands the connection to the stream hub once the head is written.
    pub fn stream(subscribe: super::stream::Subscribe) -> Reply {
        Reply {
            stream: Some(subscribe),
            ..Reply::text(
                200,
                "text/event-stream; charset=utf-8",
                super::stream::PREAMBLE,
            )
            .header("Cache-Control", "no-store")
            .header("X-Accel-Buffering", "no")
            .header("X-Content-Type-Options", "nosniff")
        }
    }

    pub fn no_content() -> Reply {
        Reply::text(204, "text/plain", Vec::new())
    }

    pub fn error(e: ApiError) -> Reply {
        let mut reply = Reply::json(e.status, &e.body());
        if e.status == 401 {
            reply.headers.push(("WWW-Authenticate", "Bearer".into()));
        }
        reply
    }

    /// The server's response: Content-Type first, then our headers.
    pub fn into_response(self) -> super::server::Response {
        let mut headers = Vec::with_capacity(self.headers.len() + 1);
        headers.push(("Content-Type", self.content_type.to_string()));
        headers.extend(self.headers);
        super::server::Response {
            status: self.status,
            headers,
            body: self.body,
        }
    }
}
