//! The registry of notification types: which channels a type uses, which
//! payload fields it requires, its dedup, digest and criticality policy, its
//! inbox actions and a sample payload. Loaded from `data/registry.json`
//! (embedded) or a file given with `--registry`; a type never needs code.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::NotifyError;

pub const EMBEDDED_REGISTRY: &str = include_str!("../../data/registry.json");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Inbox,
    Email,
}

impl Channel {
    pub const ALL: [Channel; 2] = [Channel::Inbox, Channel::Email];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Inbox => "inbox",
            Channel::Email => "email",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

fn default_dedup_window() -> u64 {
    600
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TypeDef {
    pub channels: Vec<Channel>,
    #[serde(default)]
    pub required: Vec<String>,
    #[serde(default)]
    pub critical: bool,
    #[serde(default = "default_dedup_window")]
    pub dedup_window_secs: u64,
    #[serde(default)]
    pub dedup_key: Option<String>,
    #[serde(default)]
    pub digest: Option<DigestDef>,
    #[serde(default)]
    pub actions: Vec<ActionDef>,
    #[serde(default)]
    pub sample: Value,
    #[serde(default)]
    pub description: Option<String>,
    /// Channels a user receives this type on only after switching them on
    /// (`PUT /v1/preferences`); every other channel defaults to on.
    #[serde(default)]
    pub default_off: Vec<Channel>,
    /// Holds a channel back, and sends it later only if the recipient has
    /// not seen (or read) the inbox row by then (SPEC 9).
    #[serde(default)]
    pub escalate: Option<EscalateDef>,
    /// At most `limit` notifications per recipient (and rendered key) in
    /// any sliding window (SPEC 9).
    #[serde(default)]
    pub throttle: Option<ThrottleDef>,
}

impl TypeDef {
    pub fn has(&self, channel: Channel) -> bool {
        self.channels.contains(&channel)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DigestDef {
    pub key: String,
    pub window_secs: u64,
    pub batch_type: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EscalateDef {
    pub channel: Channel,
    pub after_secs: u64,
    pub unless: Unless,
}

/// What spares a recipient an escalated channel: the inbox row of the same
/// event seen, or read, by the time it is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unless {
    Seen,
    Read,
}

impl Unless {
    pub fn as_str(self) -> &'static str {
        match self {
            Unless::Seen => "seen",
            Unless::Read => "read",
        }
    }

    pub fn parse(s: &str) -> Option<Unless> {
        [Unless::Seen, Unless::Read]
            .into_iter()
            .find(|u| u.as_str() == s)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ThrottleDef {
    pub limit: u32,
    pub window_secs: u64,
    /// A template over the payload, like `dedupKey`: throttled apart per
    /// rendered value (per organization, per project...).
    #[serde(default)]
    pub key: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionDef {
    pub label: String,
    pub url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    types: BTreeMap<String, TypeDef>,
}

#[derive(Debug)]
pub struct Registry {
    /// Where the registry came from, for error messages.
    pub source: String,
    types: BTreeMap<String, TypeDef>,
}

impl Registry {
    pub fn embedded() -> Result<Registry, NotifyError> {
        Registry::parse("data/registry.json (embedded)", EMBEDDED_REGISTRY)
    }

    pub fn from_file(path: &Path) -> Result<Registry, NotifyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| NotifyError::Config(format!("{}: {e}", path.display())))?;
        Registry::parse(&path.display().to_string(), &text)
    }

    pub fn parse(source: &str, text: &str) -> Result<Registry, NotifyError> {
        let file: RegistryFile = serde_json::from_str(text)
            .map_err(|e| NotifyError::Config(format!("{source}: {e}")))?;
        let registry = Registry {
            source: source.to_string(),
            types: file.types,
        };
        registry.check_shape()?;
        Ok(registry)
    }

    pub fn get(&self, name: &str) -> Option<&TypeDef> {
        self.types.get(name)
    }

    pub fn types(&self) -> impl Iterator<Item = (&str, &TypeDef)> {
        self.types.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Structural rules that need no templates: every type has a channel,
    /// its sample carries its required fields, and batch types exist.
    fn check_shape(&self) -> Result<(), NotifyError> {
        let mut problems = Vec::new();
        for (name, def) in &self.types {
            if def.channels.is_empty() {
                problems.push(format!("type {name}: no channels"));
            }
            for field in &def.required {
                if def.sample.get(field).is_none() {
                    problems.push(format!(
                        "type {name}: sample is missing required field {field:?}"
                    ));
                }
            }
            for channel in &def.default_off {
                if !def.has(*channel) {
                    problems.push(format!(
                        "type {name}: defaultOff names channel {:?} the type does not use",
                        channel.as_str()
                    ));
                }
            }
            if let Some(digest) = &def.digest {
                problems.extend(self.digest_problems(name, def, digest));
            }
            if let Some(escalate) = &def.escalate {
                problems.extend(escalate_problems(name, def, escalate));
            }
            if let Some(throttle) = &def.throttle {
                if throttle.limit == 0 || throttle.window_secs == 0 {
                    problems.push(format!(
                        "type {name}: throttle limit and windowSecs must each be at least 1"
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(NotifyError::Config(format!(
                "{}: {}",
                self.source,
                problems.join("; ")
            )))
        }
    }

    /// A digest's batch type must exist, carry every channel of the digested
    /// type, need no field but the `events` and `count` a digest provides,
    /// and not be digested itself.
    fn digest_problems(&self, name: &str, def: &TypeDef, digest: &DigestDef) -> Vec<String> {
        let batch_name = &digest.batch_type;
        let Some(batch) = self.types.get(batch_name) else {
            return vec![format!(
                "type {name}: digest batch type {batch_name:?} is not declared"
            )];
        };
        let mut problems = Vec::new();
        if digest.window_secs == 0 {
            problems.push(format!("type {name}: digest windowSecs must be at least 1"));
        }
        for channel in def.channels.iter().filter(|c| !batch.has(**c)) {
            problems.push(format!(
                "type {name}: batch type {batch_name} lacks channel {:?}",
                channel.as_str()
            ));
        }
        for field in batch
            .required
            .iter()
            .filter(|f| !BATCH_FIELDS.contains(&f.as_str()))
        {
            problems.push(format!(
                "type {name}: batch type {batch_name} requires {field:?}, but a digest \
                 provides only \"events\" and \"count\""
            ));
        }
        if batch.digest.is_some() {
            problems.push(format!(
                "type {name}: batch type {batch_name} must not have a digest itself"
            ));
        }
        problems
    }
}

/// An escalated channel is one the type uses, not the inbox (whose row is
/// what the condition reads, so the type needs it), and waits at least a
/// second.
fn escalate_problems(name: &str, def: &TypeDef, escalate: &EscalateDef) -> Vec<String> {
    let channel = escalate.channel.as_str();
    let mut problems = Vec::new();
    if escalate.channel == Channel::Inbox {
        problems.push(format!(
            "type {name}: escalate cannot hold \"inbox\": the inbox row is what \"unless\" reads"
        ));
    } else if !def.has(escalate.channel) {
        problems.push(format!(
            "type {name}: escalate names channel {channel:?} the type does not use"
        ));
    }
    if !def.has(Channel::Inbox) {
        problems.push(format!(
            "type {name}: escalate needs the inbox channel, whose row \"unless\" reads"
        ));
    }
    if escalate.after_secs == 0 {
        problems.push(format!(
            "type {name}: escalate afterSecs must be at least 1"
        ));
    }
    problems
}

/// The payload fields a digest gives its batch notification.
pub const BATCH_FIELDS: [&str; 2] = ["events", "count"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_registry_declares_the_built_in_types() {
        let r = Registry::embedded().unwrap();
        for t in [
            "org.invitation.sent",
            "org.member.role_changed",
            "org.billing.past_due",
            "org.invitation.accepted",
            "billing.referral.granted",
            "document_uploaded",
            "document_uploaded_batch",
            "system.announcement",
            "comment.mentioned",
        ] {
            assert!(r.get(t).is_some(), "missing built-in type {t}");
        }
        let mention = r
            .get("comment.mentioned")
            .unwrap()
            .escalate
            .as_ref()
            .unwrap();
        assert_eq!(
            (mention.channel, mention.after_secs, mention.unless),
            (Channel::Email, 600, Unless::Seen)
        );
        assert!(r.get("org.billing.past_due").unwrap().critical);
        assert_eq!(
            r.get("system.announcement").unwrap().channels,
            vec![Channel::Inbox]
        );
    }

    #[test]
    fn broken_registries_are_refused_with_the_type_named() {
        let err = Registry::parse(
            "r.json",
            r#"{"types": {"a": {"channels": ["inbox"], "required": ["x"], "sample": {}}}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("type a") && err.contains("\"x\""), "{err}");
        let err = Registry::parse("r.json", r#"{"types": {"a": {"channels": ["sms"]}}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("r.json") && err.contains("sms"), "{err}");
    }

    #[test]
    fn digests_and_default_off_are_checked_against_the_types_they_name() {
        let err = Registry::parse(
            "r.json",
            r#"{"types": {
                "a": {"channels": ["inbox", "email"], "defaultOff": ["email"],
                      "digest": {"key": "k", "windowSecs": 0, "batchType": "b"}},
                "b": {"channels": ["inbox"], "required": ["events", "total"],
                      "sample": {"events": [], "total": 1},
                      "digest": {"key": "k", "windowSecs": 5, "batchType": "a"}},
                "c": {"channels": ["inbox"], "defaultOff": ["email"]}}}"#,
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "type a: digest windowSecs must be at least 1",
            "type a: batch type b lacks channel \"email\"",
            "type a: batch type b requires \"total\"",
            "type a: batch type b must not have a digest itself",
            "type c: defaultOff names channel \"email\"",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in {err}");
        }
        let ok = Registry::parse(
            "r.json",
            r#"{"types": {"a": {"channels": ["inbox", "email"], "defaultOff": ["email"]}}}"#,
        )
        .unwrap();
        assert_eq!(ok.get("a").unwrap().default_off, vec![Channel::Email]);
    }

    #[test]
    fn escalations_and_throttles_are_checked_against_the_type() {
        let err = Registry::parse(
            "r.json",
            r#"{"types": {
                "a": {"channels": ["inbox"],
                      "escalate": {"channel": "email", "afterSecs": 0, "unless": "seen"}},
                "b": {"channels": ["inbox", "email"],
                      "escalate": {"channel": "inbox", "afterSecs": 5, "unless": "read"}},
                "c": {"channels": ["email"],
                      "escalate": {"channel": "email", "afterSecs": 5, "unless": "seen"}},
                "d": {"channels": ["inbox"], "throttle": {"limit": 0, "windowSecs": 60}}}}"#,
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "type a: escalate names channel \"email\" the type does not use",
            "type a: escalate afterSecs must be at least 1",
            "type b: escalate cannot hold \"inbox\"",
            "type c: escalate needs the inbox channel",
            "type d: throttle limit and windowSecs must each be at least 1",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in {err}");
        }
        let err = Registry::parse(
            "r.json",
            r#"{"types": {"a": {"channels": ["inbox", "email"],
                "escalate": {"channel": "sms", "afterSecs": 5, "unless": "seen"}}}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("r.json") && err.contains("sms"), "{err}");
        let ok = Registry::parse(
            "r.json",
            r#"{"types": {"a": {"channels": ["inbox", "email"],
                "escalate": {"channel": "email", "afterSecs": 600, "unless": "seen"},
                "throttle": {"limit": 3, "windowSecs": 3600, "key": "{{ org }}"}}}}"#,
        )
        .unwrap();
        let a = ok.get("a").unwrap();
        assert_eq!(a.escalate.as_ref().unwrap().unless, Unless::Seen);
        assert_eq!(
            a.throttle.as_ref().unwrap().key.as_deref(),
            Some("{{ org }}")
        );
    }
}
