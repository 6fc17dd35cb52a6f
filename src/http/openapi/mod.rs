//! `GET /openapi.json`: the OpenAPI 3.1 document, assembled from the API
//! routes the routing table hands in, each with its operation. This module
//! never reads the routing table itself: `routes.rs` names an operation (in
//! `operations`) for every API route, so the document cannot miss one.

mod op;
pub mod operations;
mod schedules;
mod schemas;
pub mod topics;
mod webhooks;

use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use super::response::Reply;
use crate::notify::Registry;

pub use op::Op;

/// A route of the API document: method, path pattern (with its `{params}`)
/// and the function giving its operation.
pub struct Endpoint {
    pub method: &'static str,
    pub pattern: &'static str,
    pub operation: fn() -> Op,
}

/// The document for this server's registry (its types are the enum of an
/// event's `type`), built once: the registry and the routes are fixed for
/// the process.
pub fn reply(registry: &Registry, endpoints: impl IntoIterator<Item = Endpoint>) -> Reply {
    static BODY: OnceLock<Vec<u8>> = OnceLock::new();
    let body = BODY.get_or_init(|| {
        let types: Vec<&str> = registry.types().map(|(name, _)| name).collect();
        serde_json::to_vec(&document(&types, endpoints)).unwrap_or_default()
    });
    Reply::text(200, "application/json", body.clone())
}

/// The whole document.
pub fn document(event_types: &[&str], endpoints: impl IntoIterator<Item = Endpoint>) -> Value {
    let mut paths = Map::new();
    for endpoint in endpoints {
        let item = paths
            .entry(endpoint.pattern.to_string())
            .or_insert_with(|| json!({}));
        item[endpoint.method.to_ascii_lowercase()] = (endpoint.operation)().build(endpoint.pattern);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "herald",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Self-hosted notification service: events in, inbox rows and emails out."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "serviceKey": {"type": "http", "scheme": "bearer",
                    "description": "HERALD_SERVICE_KEY: triggers events and manages users."},
                "userToken": {"type": "http", "scheme": "bearer",
                    "description": "A user token from POST /v1/users/{id}/tokens: acts as that user."},
                "stripeSignature": {"type": "apiKey", "in": "header", "name": "Stripe-Signature",
                    "description": "t=<unix time>,v1=<HMAC-SHA256 of \"{t}.{raw body}\" with STRIPE_WEBHOOK_SECRET>"}
            },
            "schemas": all_schemas(event_types)
        }
    })
}

/// `schemas::all` with the features that keep their shapes apart.
fn all_schemas(event_types: &[&str]) -> Value {
    let mut all = schemas::all(event_types);
    if let Some(map) = all.as_object_mut() {
        schedules::add(map, event_types);
        webhooks::add(map);
        topics::add(map);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(method: &'static str, pattern: &'static str, operation: fn() -> Op) -> Endpoint {
        Endpoint {
            method,
            pattern,
            operation,
        }
    }

    #[test]
    fn path_parameters_and_their_404_come_from_the_pattern() {
        let doc = document(
            &[],
            [endpoint(
                "GET",
                "/v1/orgs/{org}/members",
                operations::list_members,
            )],
        );
        let op = &doc["paths"]["/v1/orgs/{org}/members"]["get"];
        assert_eq!(op["parameters"][0]["name"], "org");
        assert_eq!(op["parameters"][0]["in"], "path");
        assert!(op["responses"].get("404").is_some());
        assert!(op["responses"].get("401").is_some());
        assert!(op["responses"].get("415").is_none(), "no body, no 415");
    }
}
