//! Per user x type x channel preferences: stored switches, registry defaults
//! (on unless `defaultOff`) and the `*` type that switches a channel off for
//! every non-critical type. Critical types ignore all of them.

use std::collections::BTreeMap;

use crate::args;
use crate::store::{Conn, Tx};
use serde::Serialize;

use super::registry::{Channel, Registry, TypeDef};
use crate::store::StoreResult;

/// The preference type that stands for every non-critical type.
pub const ALL_TYPES: &str = "*";

/// Stores one switch, replacing any earlier value.
pub fn set(
    tx: &Tx<'_>,
    user_id: &str,
    kind: &str,
    channel: Channel,
    enabled: bool,
) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO preferences (user_id, type, channel, enabled, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (user_id, type, channel)
         DO UPDATE SET enabled = excluded.enabled, updated_at = excluded.updated_at",
        args![user_id, kind, channel.as_str(), enabled, tx.now_ms()],
    )?;
    Ok(())
}

/// A user's stored switches for one type and for `*`, indexed by channel.
#[derive(Debug, Default)]
pub struct Switches {
    own: [Option<bool>; Channel::ALL.len()],
    all: [Option<bool>; Channel::ALL.len()],
}

impl Switches {
    /// Whether type `def` reaches the user on `channel`. A `*` switched off
    /// wins over a type switched on: it is the "no emails at all" control.
    /// Critical types ignore every switch.
    pub fn allow(&self, def: &TypeDef, channel: Channel) -> bool {
        let i = channel as usize;
        def.critical
            || (self.all[i] != Some(false)
                && self.own[i].unwrap_or_else(|| default_for(def, channel)))
    }
}

const SWITCHES_SQL: &str =
    "SELECT type, channel, enabled FROM preferences WHERE user_id = ?1 AND type = ?2
     UNION ALL
     SELECT type, channel, enabled FROM preferences WHERE user_id = ?1 AND type = '*'";

/// Reads `user_id`'s switches for type `kind` and for `*`: one query serves
/// every channel of an event's recipient. Two seeks joined by UNION ALL,
/// because `type IN (?2, '*')` makes SQLite build a temporary B-tree on
/// every run, and this runs once per notification.
pub fn switches(conn: &Conn<'_>, user_id: &str, kind: &str) -> StoreResult<Switches> {
    let mut switches = Switches::default();
    conn.for_each(SWITCHES_SQL, args![user_id, kind], |row| {
        let Some(channel) = row.text(1)?.and_then(Channel::parse) else {
            return Ok(());
        };
        let slot = if row.text(0)? == Some(ALL_TYPES) {
            &mut switches.all
        } else {
            &mut switches.own
        };
        slot[channel as usize] = Some(row.get(2)?);
        Ok(())
    })?;
    Ok(switches)
}

fn default_for(def: &TypeDef, channel: Channel) -> bool {
    !def.default_off.contains(&channel)
}

/// One line of `GET /v1/preferences`: a type (or `*`) with the value of each
/// of its channels.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypePreferences {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Critical types are always delivered; their channels read `true`.
    pub critical: bool,
    pub channels: BTreeMap<&'static str, bool>,
}

/// The `*` switches first, then every registry type the user can receive,
/// each channel showing the user's value or the registry default.
pub fn list(
    conn: &Conn<'_>,
    user_id: &str,
    registry: &Registry,
) -> StoreResult<Vec<TypePreferences>> {
    let mut stored: BTreeMap<(String, String), bool> = BTreeMap::new();
    let rows = conn.query_all(
        "SELECT type, channel, enabled FROM preferences WHERE user_id = ?1",
        args![user_id],
        |r| Ok(((r.get(0)?, r.get(1)?), r.get::<bool>(2)?)),
    )?;
    for (key, enabled) in rows {
        stored.insert(key, enabled);
    }
    let value = |kind: &str, channel: Channel, default: bool| {
        stored
            .get(&(kind.to_string(), channel.as_str().to_string()))
            .copied()
            .unwrap_or(default)
    };
    let mut out = vec![TypePreferences {
        kind: ALL_TYPES.into(),
        description: Some("Every non-critical type on this channel".into()),
        critical: false,
        channels: Channel::ALL
            .into_iter()
            .map(|c| (c.as_str(), value(ALL_TYPES, c, true)))
            .collect(),
    }];
    for (kind, def) in registry.types() {
        out.push(TypePreferences {
            kind: kind.to_string(),
            description: def.description.clone(),
            critical: def.critical,
            channels: def
                .channels
                .iter()
                .map(|&c| {
                    let on = def.critical || value(kind, c, default_for(def, c));
                    (c.as_str(), on)
                })
                .collect(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{users, Store, Synchronous};

    fn registry() -> Registry {
        Registry::parse(
            "r",
            r#"{"types": {
                "plain": {"channels": ["inbox", "email"]},
                "quiet": {"channels": ["inbox", "email"], "defaultOff": ["email"]},
                "alarm": {"channels": ["inbox", "email"], "critical": true}}}"#,
        )
        .unwrap()
    }

    #[test]
    fn type_switch_star_switch_default_off_and_critical() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
        let r = registry();
        store
            .write(|tx| {
                users::upsert(
                    tx,
                    &users::User {
                        id: "u".into(),
                        email: "u@x.io".into(),
                        name: String::new(),
                    },
                )
            })
            .unwrap();
        let allows = |kind: &str, c: Channel| {
            store
                .read(|conn| switches(conn, "u", kind))
                .unwrap()
                .allow(r.get(kind).unwrap(), c)
        };
        assert!(allows("plain", Channel::Email));
        assert!(!allows("quiet", Channel::Email));
        assert!(allows("quiet", Channel::Inbox));

        store
            .write(|tx| {
                set(tx, "u", "plain", Channel::Email, false)?;
                set(tx, "u", "quiet", Channel::Email, true)
            })
            .unwrap();
        assert!(!allows("plain", Channel::Email));
        assert!(allows("plain", Channel::Inbox));
        assert!(allows("quiet", Channel::Email));

        store
            .write(|tx| set(tx, "u", ALL_TYPES, Channel::Email, false))
            .unwrap();
        assert!(!allows("quiet", Channel::Email), "* off beats a type on");
        assert!(allows("alarm", Channel::Email), "critical ignores *");
        assert!(allows("quiet", Channel::Inbox));

        let listed = store.read(|c| list(c, "u", &r)).unwrap();
        assert_eq!(listed[0].kind, "*");
        assert!(!listed[0].channels["email"]);
        let quiet = listed.iter().find(|p| p.kind == "quiet").unwrap();
        assert!(quiet.channels["email"]);
    }

    /// The lookup runs once per notification: it must seek, not build a
    /// temporary B-tree as `type IN (?2, '*')` did.
    #[test]
    fn the_switches_lookup_builds_no_temporary_btree() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
        let ops: Vec<String> = store
            .read(|c| {
                let explain = format!("EXPLAIN {SWITCHES_SQL}");
                c.query_all(&explain, args![None::<i64>, None::<i64>], |r| r.get(1))
            })
            .unwrap();
        assert!(ops.iter().any(|op| op == "SeekGE"), "{ops:?}");
        assert!(!ops.iter().any(|op| op == "OpenEphemeral"), "{ops:?}");
    }
}
