//! What a handler returns: a status, a JSON (or other) body and headers.

use serde::Serialize;

use super::error::ApiError;

pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn json(status: u16, value: &impl Serialize) -> Reply {
        match serde_json::to_vec(value) {
            Ok(body) => Reply {
                status,
                content_type: "application/json",
                body,
                headers: Vec::new(),
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

    pub fn into_response(self) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
        let mut response = tiny_http::Response::from_data(self.body).with_status_code(self.status);
        let headers =
            std::iter::once(("Content-Type", self.content_type.to_string())).chain(self.headers);
        for (name, value) in headers {
            if let Ok(h) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
                response.add_header(h);
            }
        }
        response
    }
}
