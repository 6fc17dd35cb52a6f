//! Resend's `SendEmailRequest` schema, for `POST /emails` and for each item
//! of `POST /emails/batch`: what is required, what is typed, and the 422s
//! naming the field (and the item's index in a batch).

use serde_json::{Map, Value};

use super::decide::Reply;

/// Resend's limit on recipients in `to`.
const MAX_RECIPIENTS: usize = 50;

/// Resend's limit on emails in one `POST /emails/batch`.
pub(super) const MAX_BATCH: usize = 100;

pub(super) struct ValidEmail {
    pub(super) from: String,
    pub(super) to: Vec<String>,
    pub(super) subject: String,
    pub(super) html: Option<String>,
    pub(super) text: Option<String>,
    /// The email's own JSON object.
    pub(super) body: Value,
}

/// A batch is all or nothing: a JSON array of 1..=100 emails, each a valid
/// `SendEmailRequest` without `attachments` or `scheduled_at` (Resend's batch
/// supports neither); the first bad item refuses the whole request.
pub(super) fn validate_batch(body: &Value) -> Result<Vec<ValidEmail>, Reply> {
    let invalid = |message: &str| Reply::error(422, "validation_error", message);
    let Some(items) = body.as_array() else {
        return Err(invalid("The request body must be a JSON array of emails."));
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(invalid(&format!(
            "A batch must contain between 1 and {MAX_BATCH} emails, got {}.",
            items.len()
        )));
    }
    let mut emails = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        for name in ["attachments", "scheduled_at"] {
            if item.get(name).is_some() {
                return Err(invalid(&format!(
                    "Invalid {}. Batch emails do not support `{name}`.",
                    field(name, Some(index))
                )));
            }
        }
        emails.push(validate(item, Some(index))?);
    }
    Ok(emails)
}

/// `SendEmailRequest` from Resend's OpenAPI description: `from`, `to`,
/// `subject` required; `to` a string or 1..=50 strings; the rest typed.
/// `index` is the email's place in a batch, named in every error.
pub(super) fn validate(body: &Value, index: Option<usize>) -> Result<ValidEmail, Reply> {
    let invalid = |message: &str| Reply::error(422, "validation_error", message);
    let Some(fields) = body.as_object() else {
        return Err(invalid(&match index {
            None => "The request body must be a JSON object.".to_string(),
            Some(i) => format!("The email at index {i} must be a JSON object."),
        }));
    };
    let from = required_string(fields, "from", index)?;
    if !is_mailbox(&from) {
        // A batch reports every item's error as `validation_error`.
        let name = match index {
            None => "invalid_from_address",
            Some(_) => "validation_error",
        };
        return Err(Reply::error(
            422,
            name,
            &format!(
                "Invalid {}. The email address needs to follow the \
                 `email@example.com` or `Name <email@example.com>` format.",
                field("from", index)
            ),
        ));
    }
    let to = match fields.get("to") {
        None | Some(Value::Null) => {
            return Err(invalid(&format!("Missing {}.", field("to", index))))
        }
        Some(value) => address_list(value, "to", 1, index)?,
    };
    if to.len() > MAX_RECIPIENTS {
        return Err(invalid(&format!(
            "Invalid {}. You can send to at most 50 recipients.",
            field("to", index)
        )));
    }
    let subject = required_string(fields, "subject", index)?;
    let html = optional_string(fields, "html", index)?;
    let text = optional_string(fields, "text", index)?;
    for name in ["cc", "bcc", "reply_to"] {
        if let Some(value) = fields.get(name) {
            address_list(value, name, 0, index)?;
        }
    }
    for name in ["scheduled_at", "topic_id"] {
        optional_string(fields, name, index)?;
    }
    if let Some(value) = fields.get("headers") {
        if !value.is_object() {
            return Err(invalid(&format!(
                "Invalid {}. Expected an object.",
                field("headers", index)
            )));
        }
    }
    for name in ["attachments", "tags"] {
        if let Some(value) = fields.get(name) {
            if !value.is_array() {
                return Err(invalid(&format!(
                    "Invalid {}. Expected an array.",
                    field(name, index)
                )));
            }
        }
    }
    Ok(ValidEmail {
        from,
        to,
        subject,
        html,
        text,
        body: body.clone(),
    })
}

/// "`to` field", or "`to` field at index 3" for a batch's email.
fn field(name: &str, index: Option<usize>) -> String {
    match index {
        None => format!("`{name}` field"),
        Some(i) => format!("`{name}` field at index {i}"),
    }
}

fn required_string(
    fields: &Map<String, Value>,
    name: &str,
    index: Option<usize>,
) -> Result<String, Reply> {
    match fields.get(name) {
        None | Some(Value::Null) => Err(Reply::error(
            422,
            "validation_error",
            &format!("Missing {}.", field(name, index)),
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(Reply::error(
            422,
            "validation_error",
            &format!("Invalid {}. Expected a string.", field(name, index)),
        )),
    }
}

/// Present means it must be a string: the schema does not allow `null`.
fn optional_string(
    fields: &Map<String, Value>,
    name: &str,
    index: Option<usize>,
) -> Result<Option<String>, Reply> {
    match fields.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Reply::error(
            422,
            "validation_error",
            &format!("Invalid {}. Expected a string.", field(name, index)),
        )),
    }
}

/// A string or an array of strings, each an address.
fn address_list(
    value: &Value,
    name: &str,
    min: usize,
    index: Option<usize>,
) -> Result<Vec<String>, Reply> {
    let invalid = |detail: &str| {
        Reply::error(
            422,
            "validation_error",
            &format!("Invalid {}. {detail}", field(name, index)),
        )
    };
    let list = match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => {
            let mut list = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => list.push(s.clone()),
                    _ => return Err(invalid("Expected a string or an array of strings.")),
                }
            }
            list
        }
        _ => return Err(invalid("Expected a string or an array of strings.")),
    };
    if list.len() < min {
        return Err(invalid("At least one address is required."));
    }
    if let Some(bad) = list.iter().find(|a| !is_mailbox(a)) {
        return Err(invalid(&format!(
            "`{bad}` does not follow the `email@example.com` or `Name <email@example.com>` format."
        )));
    }
    Ok(list)
}

/// `email@example.com` or `Name <email@example.com>`, loosely.
fn is_mailbox(text: &str) -> bool {
    let text = text.trim();
    let address = match (text.rfind('<'), text.strip_suffix('>')) {
        (Some(open), Some(inner)) => &inner[open + 1..],
        _ => text,
    };
    match address.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !address
                    .chars()
                    .any(|c| c.is_whitespace() || c == '<' || c == '>')
        }
        None => false,
    }
}
