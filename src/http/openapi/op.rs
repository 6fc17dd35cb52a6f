//! One operation of the document: `Op` holds the hand-written part (id,
//! summary, auth, body, success responses); `Op::build` derives the rest
//! (path parameters, error responses, security) the way `Req`, `auth` and
//! `ApiError` actually answer.

use serde_json::{json, Map, Value};

use super::schemas::schema;

/// Who may call an operation.
#[derive(Clone, Copy, PartialEq)]
pub enum Auth {
    Public,
    Service,
    User,
    Stripe,
}

/// One operation's hand-written part; the rest is derived.
pub struct Op {
    id: &'static str,
    summary: &'static str,
    auth: Auth,
    /// JSON request body schema; implies 415 and 422.
    body: Option<Value>,
    /// Query and header parameter objects (path parameters are derived).
    params: Vec<Value>,
    /// Success responses: status, description, JSON schema (None: no body).
    ok: Vec<(u16, &'static str, Option<Value>)>,
    /// Error statuses beyond the derived ones.
    errors: &'static [u16],
    /// The success responses' media type.
    media: &'static str,
    /// Whether it can answer 503: it reads the database, or (the webhook)
    /// is not configured.
    may_be_busy: bool,
}

impl Op {
    pub fn new(id: &'static str, summary: &'static str, auth: Auth) -> Op {
        Op {
            id,
            summary,
            auth,
            body: None,
            params: Vec::new(),
            ok: Vec::new(),
            errors: &[],
            media: "application/json",
            may_be_busy: true,
        }
    }

    /// The success responses' media type, when not JSON.
    pub fn media(mut self, media: &'static str) -> Op {
        self.media = media;
        self
    }

    pub fn body(mut self, schema: Value) -> Op {
        self.body = Some(schema);
        self
    }

    pub fn param(mut self, p: Value) -> Op {
        self.params.push(p);
        self
    }

    pub fn ok(mut self, status: u16, description: &'static str, schema: Value) -> Op {
        self.ok.push((status, description, Some(schema)));
        self
    }

    pub fn no_content(mut self, description: &'static str) -> Op {
        self.ok.push((204, description, None));
        self
    }

    pub fn errors(mut self, errors: &'static [u16]) -> Op {
        self.errors = errors;
        self
    }

    /// Answers without the database, so never 503.
    pub fn never_busy(mut self) -> Op {
        self.may_be_busy = false;
        self
    }

    /// The operation object for the route `pattern`.
    pub fn build(self, pattern: &str) -> Value {
        let mut params = path_params(pattern);
        params.extend(self.params);
        let mut errors = vec![400, 413];
        if matches!(self.auth, Auth::Service | Auth::User) {
            errors.extend([401, 403]);
        }
        if self.body.is_some() {
            errors.extend([415, 422]);
        }
        if pattern.contains('{') {
            errors.push(404);
        }
        if self.may_be_busy {
            errors.push(503);
        }
        errors.extend(self.errors);
        errors.sort_unstable();
        errors.dedup();

        let mut responses = Map::new();
        for (status, description, body) in self.ok {
            let mut r = json!({"description": description});
            if let Some(body) = body {
                let mut content = Map::new();
                content.insert(self.media.to_string(), json!({"schema": body}));
                r["content"] = Value::Object(content);
            }
            responses.insert(status.to_string(), r);
        }
        for status in errors {
            responses.insert(status.to_string(), error_response(status));
        }

        let mut operation = json!({
            "operationId": self.id,
            "summary": self.summary,
            "responses": responses,
        });
        if !params.is_empty() {
            operation["parameters"] = Value::Array(params);
        }
        if let Some(body) = self.body {
            operation["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": body}}
            });
        }
        operation["security"] = match self.auth {
            Auth::Public => json!([]),
            Auth::Service => json!([{"serviceKey": []}]),
            Auth::User => json!([{"userToken": []}]),
            Auth::Stripe => json!([{"stripeSignature": []}]),
        };
        if self.auth == Auth::Stripe {
            operation["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": {"type": "object"}}}
            });
        }
        operation
    }
}

fn path_params(pattern: &str) -> Vec<Value> {
    pattern
        .split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            json!({"name": name, "in": "path", "required": true,
                   "schema": {"type": "string", "minLength": 1}})
        })
        .collect()
}

fn error_response(status: u16) -> Value {
    let description = match status {
        400 => "Malformed request: bad JSON, path, query or parameter",
        401 => "Missing or unknown token",
        403 => "The token may not use this endpoint or act on this resource",
        404 => "No such resource (or not visible to the caller)",
        409 => "Conflicts with the current state",
        410 => "Expired or revoked",
        413 => "Request body over 1 MiB",
        415 => "Request body is not application/json",
        422 => "Validation failed; the message names the field",
        503 => "Busy (the database, or too many open streams) or not configured; nothing was changed, retry later",
        _ => "Error",
    };
    let mut response = json!({
        "description": description,
        "content": {"application/json": {"schema": schema("Error")}}
    });
    if status == 401 {
        response["headers"] = json!({
            "WWW-Authenticate": {"required": true, "schema": {"type": "string"}}
        });
    }
    response
}
