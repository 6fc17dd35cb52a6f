//! Upgrades: `serve` opens a database written by the previous schema
//! version, with rows in every table, migrates it in place and keeps every
//! row: the API serves the old rows and credentials, new work goes on top,
//! and after a stop each table holds every row it held before, unchanged.
//! The previous versions are SQLite files (a PostgreSQL database starts at
//! version 4), so it runs in the SQLite suite only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::Value as SqlValue;
use rusqlite::Connection;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::database::sqlite_only;
use crate::support::{result, wait_until, TestServer};

const WAIT: Duration = Duration::from_secs(30);

/// The schema as herald 3 created it: the released steps up to version 3.
const VERSION_3_STEPS: &[&str] = &[
    include_str!("../../schema.sql"),
    include_str!("../../src/store/schema_v2.sql"),
    include_str!("../../src/store/schema_v3.sql"),
];

/// Secrets whose SHA-256 the version 3 database holds.
const ALICE_TOKEN: &str = "hrld_6767a4a32f456656f7b556dca5dcaf0165036d1fecbaadc977061fd34fe020e1";
pub(crate) const DAVE_TOKEN: &str =
    "hrld_7ada14dcf82db18e20b6f2bab16c0444c2696463848174efc01ce5108a8197db";
const ALICE_SESSION: &str = "hses_9ac1b1dfd71814a905c675a17a33bd1be2cd4a11dd406a160c643e6e9ed3554c";
const DAVE_INVITATION: &str =
    "hinv_5b71a70930769f09cc84ce6b46f579531d9db9cd73cdfb7f71103a050ee57e84";

/// What herald 3 left of a small org's first hour: Alice's org Acme with Bob,
/// Dave invited and joined (referral credits for both), Bob and Dave made
/// admins (their two emails in one batch), a Stripe subscription, and Dave's
/// ticket uploads, two of them digested and sent, one in a digest still
/// open. `$T0` is an hour ago, so that no retention period has passed; `$`
/// names stand for the hashes of the secrets above.
const VERSION_3_ROWS: &str = r#"
INSERT INTO users (id, email, name, created_at, updated_at) VALUES
    ('alice', 'alice@acme.test', 'Alice', $T0, $T0),
    ('bob', 'bob@acme.test', 'Bob', $T0, $T0 + 250000),
    ('dave', 'dave@example.com', 'Dave', $T0 + 60000, $T0 + 60000);
INSERT INTO api_tokens (token_hash, user_id, created_at) VALUES
    ('$ALICE_TOKEN', 'alice', $T0),
    ('$DAVE_TOKEN', 'dave', $T0 + 60010);
INSERT INTO sessions (id_hash, user_id, created_at, expires_at) VALUES
    ('$ALICE_SESSION', 'alice', $T0 + 5000, $T0 + 5000 + 2592000000);
INSERT INTO organizations (id, name, created_at) VALUES ('org_acme', 'Acme', $T0);
INSERT INTO members (id, org_id, user_id, role, created_at) VALUES
    ('mem_alice', 'org_acme', 'alice', 'owner', $T0),
    ('mem_bob', 'org_acme', 'bob', 'admin', $T0),
    ('mem_dave', 'org_acme', 'dave', 'admin', $T0 + 120000);
INSERT INTO invitations (id, org_id, email, role, token_hash, status, inviter_user_id,
                         accepted_user_id, created_at, expires_at, accepted_at) VALUES
    ('inv_dave', 'org_acme', 'dave@example.com', 'member', '$DAVE_INVITATION', 'accepted',
     'alice', 'dave', $T0 + 30000, $T0 + 30000 + 604800000, $T0 + 120000);
INSERT INTO audit_log (id, org_id, actor_user_id, action, subject_type, subject_id, payload,
                       created_at) VALUES
    (1, 'org_acme', 'alice', 'org.created', 'organization', 'org_acme', '{"name":"Acme"}', $T0),
    (2, 'org_acme', 'alice', 'invitation.sent', 'invitation', 'inv_dave',
     '{"email":"dave@example.com","role":"member"}', $T0 + 30000),
    (3, 'org_acme', 'dave', 'invitation.accepted', 'invitation', 'inv_dave',
     '{"email":"dave@example.com","memberId":"mem_dave","role":"member"}', $T0 + 120000),
    (4, 'org_acme', 'alice', 'member.role-changed', 'member', 'mem_bob',
     '{"after":"admin","before":"member"}', $T0 + 300000),
    (5, 'org_acme', 'alice', 'member.role-changed', 'member', 'mem_dave',
     '{"after":"admin","before":"member"}', $T0 + 300000);
INSERT INTO processed_events (source, event_id, type, processed_at) VALUES
    ('stripe', 'evt_1QAcmeSubscriptionUpdated', 'customer.subscription.updated', $T0 + 10000);
INSERT INTO plan_entitlements (org_id, subscription_id, customer_id, plan, status,
                               current_period_end, last_event_at, created_at, updated_at) VALUES
    ('org_acme', 'sub_acme', 'cus_acme', 'pro', 'active', $T0 + 2592000000, $T0 + 9000, $T0,
     $T0 + 10000);
INSERT INTO preferences (user_id, type, channel, enabled, updated_at) VALUES
    ('alice', 'org.member.role_changed', 'email', 0, $T0 + 5000);

-- Event 1 was dispatched by herald 2, whose counts were per channel; the
-- others by herald 3. Dispatched notification events keep no body.
INSERT INTO outbox (seq, id, type, body, idempotency_key, status, created_at, dispatched_at,
                    sent, deduped, suppressed, error, kind, inbox_sent, inbox_deduped,
                    inbox_suppressed, email_sent, email_deduped, email_suppressed) VALUES
    (1, 'evt_invite_dave', 'org.invitation.sent', '', NULL, 'dispatched', $T0 + 30000,
     $T0 + 30015, 2, 0, 0, NULL, 'notification', NULL, NULL, NULL, NULL, NULL, NULL),
    (2, 'evt_dave_accepted', 'invitation.accepted',
     '{"payload":{"invitationId":"inv_dave","inviterUserId":"alice","organizationId":"org_acme","userId":"dave"},"type":"invitation.accepted"}',
     NULL, 'dispatched', $T0 + 120000, $T0 + 120014, 1, 0, 0, NULL, 'domain', 0, 0, 0, 0, 0, 0),
    (3, 'evt_tell_alice', 'org.invitation.accepted', '', NULL, 'dispatched', $T0 + 120000,
     $T0 + 120015, 1, 0, 0, NULL, 'notification', 1, 0, 0, 0, 0, 0),
    (4, 'evt_grant_alice', 'billing.referral.granted', '', NULL, 'dispatched', $T0 + 120016,
     $T0 + 120020, 1, 0, 0, NULL, 'notification', 1, 0, 0, 0, 0, 0),
    (5, 'evt_grant_dave', 'billing.referral.granted', '', NULL, 'dispatched', $T0 + 120016,
     $T0 + 120020, 1, 0, 0, NULL, 'notification', 1, 0, 0, 0, 0, 0),
    (6, 'evt_role_bob', 'org.member.role_changed', '', NULL, 'dispatched', $T0 + 300000,
     $T0 + 300010, 1, 0, 0, NULL, 'notification', 1, 0, 0, 1, 0, 0),
    (7, 'evt_role_dave', 'org.member.role_changed', '', NULL, 'dispatched', $T0 + 300000,
     $T0 + 300010, 1, 0, 0, NULL, 'notification', 1, 0, 0, 1, 0, 0),
    (8, 'evt_doc_1', 'document_uploaded', '', 'upload:doc_1', 'dispatched', $T0 + 600000,
     $T0 + 600005, 0, 0, 0, NULL, 'notification', 0, 0, 0, 0, 0, 0),
    (9, 'evt_doc_2', 'document_uploaded', '', 'upload:doc_2', 'dispatched', $T0 + 660000,
     $T0 + 660005, 0, 0, 0, NULL, 'notification', 0, 0, 0, 0, 0, 0),
    (10, 'evt_docs_ord_1', 'document_uploaded_batch', '', NULL, 'dispatched', $T0 + 900005,
     $T0 + 900010, 1, 0, 0, NULL, 'notification', 1, 0, 0, 1, 0, 0),
    (11, 'evt_doc_3', 'document_uploaded', '', 'upload:doc_3', 'dispatched', $T0 + 3590000,
     $T0 + 3590005, 0, 0, 0, NULL, 'notification', 0, 0, 0, 0, 0, 0);
INSERT INTO listener_runs (event_seq, listener, status, attempts, next_attempt_at, last_error,
                           created_at, done_at) VALUES
    (2, 'billing.referral', 'done', 1, $T0 + 120014, NULL, $T0 + 120014, $T0 + 120016);
INSERT INTO credit_ledger (id, ref_id, user_id, amount, reason, created_at) VALUES
    (1, 'referral:inv_dave:referrer', 'alice', 500, 'referral: you invited a new member',
     $T0 + 120016),
    (2, 'referral:inv_dave:referee', 'dave', 500, 'referral: you joined by invitation',
     $T0 + 120016);
INSERT INTO dedup_marks (type, recipient, subject_id, dedup_key, notified_at) VALUES
    ('org.invitation.sent', 'dave', 'inv_dave', '', $T0 + 30015),
    ('org.invitation.accepted', 'alice', 'inv_dave', '', $T0 + 120015),
    ('org.member.role_changed', 'bob', 'mem_bob', 'member:admin', $T0 + 300010),
    ('org.member.role_changed', 'dave', 'mem_dave', 'member:admin', $T0 + 300010);
-- Digest 1 closed into event 10; digest 2 is open, due in about 5 minutes.
INSERT INTO digests (id, type, batch_type, recipient_key, recipient, digest_key, channels,
                     opened_at, due_at, status, flushed_seq, flushed_at) VALUES
    (1, 'document_uploaded', 'document_uploaded_batch', 'dave', '"dave"', 'ord_1',
     '["inbox","email"]', $T0 + 600005, $T0 + 900005, 'flushed', 10, $T0 + 900005),
    (2, 'document_uploaded', 'document_uploaded_batch', 'dave', '"dave"', 'ord_2',
     '["inbox","email"]', $T0 + 3590005, $T0 + 3890005, 'open', NULL, NULL);
INSERT INTO digest_events (digest_id, event_seq, subject_id, payload) VALUES
    (1, 8, 'doc_1', '{"eventName":"Concert","orderId":"ord_1","ticketCount":2}'),
    (1, 9, 'doc_2', '{"eventName":"Concert","orderId":"ord_1","ticketCount":1}'),
    (2, 11, 'doc_3', '{"eventName":"Opera","orderId":"ord_2","ticketCount":4}');

INSERT INTO email_bodies (event_seq, subject, html, text) VALUES
    (1, 'You''re invited to join Acme',
     '<!DOCTYPE html><html lang="en"><body><p>Alice invited you to join Acme as member.</p><p><a href="https://herald.acme.test/invitations/accept?token=$DAVE_SECRET">Accept invitation</a></p></body></html>',
     'Alice invited you to join Acme as member.

Accept the invitation:
https://herald.acme.test/invitations/accept?token=$DAVE_SECRET
'),
    (6, 'Your role in Acme changed to admin',
     '<!DOCTYPE html><html lang="en"><body><p>Alice changed your role in Acme from member to admin.</p></body></html>',
     'Alice changed your role in Acme from member to admin.'),
    (7, 'Your role in Acme changed to admin',
     '<!DOCTYPE html><html lang="en"><body><p>Alice changed your role in Acme from member to admin.</p></body></html>',
     'Alice changed your role in Acme from member to admin.'),
    (10, '2 documents uploaded for order ord_1',
     '<!DOCTYPE html><html lang="en"><body><ul><li>Concert: 2 tickets</li><li>Concert: 1 ticket</li></ul></body></html>',
     'Concert: 2 tickets
Concert: 1 ticket');
INSERT INTO mail_batches (id, first_seq, last_seq) VALUES ('bat_roles', 6, 7);
INSERT INTO deliveries (id, event_seq, recipient, channel, address, status, attempts,
                        next_attempt_at, provider, provider_id, last_error, created_at,
                        updated_at, batch_id) VALUES
    ('dlv_invite_dave', 1, 'dave', 'email', 'dave@example.com', 'sent', 1, NULL, 'resend',
     're_invite_dave', NULL, $T0 + 30015, $T0 + 30400, NULL),
    ('dlv_role_bob', 6, 'bob', 'email', 'bob@acme.test', 'sent', 2, NULL, 'resend',
     're_role_bob', 'provider answered 503', $T0 + 300010, $T0 + 306000, 'bat_roles'),
    ('dlv_role_dave', 7, 'dave', 'email', 'dave@example.com', 'sent', 2, NULL, 'resend',
     're_role_dave', 'provider answered 503', $T0 + 300010, $T0 + 306000, 'bat_roles'),
    ('dlv_docs_dave', 10, 'dave', 'email', 'dave@example.com', 'sent', 1, NULL, 'resend',
     're_docs_dave', NULL, $T0 + 900010, $T0 + 900300, NULL);

-- Dave deleted the newest row of his inbox (id 7): the ids stay used.
INSERT INTO notifications (id, event_seq, user_id, type, title, body, actions, payload,
                           created_at, seen_at, read_at) VALUES
    (1, 1, 'dave', 'org.invitation.sent', 'Alice invited you to join Acme',
     'You have been invited to join Acme as member. Accept the invitation to get access.',
     '[{"label":"Accept invitation","url":"https://herald.acme.test/invitations/accept?token=$DAVE_SECRET"}]',
     '{"acceptUrl":"https://herald.acme.test/invitations/accept?token=$DAVE_SECRET","invitedEmail":"dave@example.com","inviterName":"Alice","orgName":"Acme","role":"member"}',
     $T0 + 30015, $T0 + 100000, $T0 + 110000),
    (2, 3, 'alice', 'org.invitation.accepted', 'Dave joined Acme',
     'Dave (dave@example.com) accepted your invitation and is now a member of Acme.', '[]',
     '{"memberEmail":"dave@example.com","memberName":"Dave","orgName":"Acme"}',
     $T0 + 120015, $T0 + 200000, NULL),
    (3, 4, 'alice', 'billing.referral.granted', 'You earned 500 referral credits',
     '500 credits were added to your account for a referral. Your balance is now 500 credits.',
     '[]',
     '{"amount":500,"balance":500,"reason":"referral: you invited a new member","refId":"referral:inv_dave:referrer"}',
     $T0 + 120020, NULL, NULL),
    (4, 5, 'dave', 'billing.referral.granted', 'You earned 500 referral credits',
     '500 credits were added to your account for a referral. Your balance is now 500 credits.',
     '[]',
     '{"amount":500,"balance":500,"reason":"referral: you joined by invitation","refId":"referral:inv_dave:referee"}',
     $T0 + 120020, $T0 + 200000, NULL),
    (5, 6, 'bob', 'org.member.role_changed', 'Your role in Acme is now admin',
     'Alice changed your role in Acme from member to admin.', '[]',
     '{"actorName":"Alice","before":"member","newRole":"admin","orgName":"Acme"}',
     $T0 + 300010, NULL, NULL),
    (6, 7, 'dave', 'org.member.role_changed', 'Your role in Acme is now admin',
     'Alice changed your role in Acme from member to admin.', '[]',
     '{"actorName":"Alice","before":"member","newRole":"admin","orgName":"Acme"}',
     $T0 + 300010, NULL, NULL),
    (7, 10, 'dave', 'document_uploaded_batch', '2 documents uploaded for order ord_1',
     'Concert: 2 tickets, Concert: 1 ticket.', '[]',
     '{"count":2,"events":[{"eventName":"Concert","orderId":"ord_1","ticketCount":2},{"eventName":"Concert","orderId":"ord_1","ticketCount":1}]}',
     $T0 + 900010, $T0 + 950000, $T0 + 950000);
DELETE FROM notifications WHERE id = 7;
"#;

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn sha256_hex(secret: &str) -> String {
    format!("{:x}", Sha256::digest(secret.as_bytes()))
}

/// Writes `herald.db` in `dir` as herald 3 did (WAL, foreign keys on) and
/// fills it with `VERSION_3_ROWS` an hour before `now`.
pub(crate) fn version_3_database(dir: &Path, now: i64) {
    let mut conn = Connection::open(dir.join("herald.db")).unwrap();
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON;")
        .unwrap();
    for step in VERSION_3_STEPS {
        conn.execute_batch(step).unwrap();
    }
    let rows = [
        ("$T0", (now - 3_600_000).to_string()),
        ("$ALICE_TOKEN", sha256_hex(ALICE_TOKEN)),
        ("$DAVE_TOKEN", sha256_hex(DAVE_TOKEN)),
        ("$ALICE_SESSION", sha256_hex(ALICE_SESSION)),
        ("$DAVE_INVITATION", sha256_hex(DAVE_INVITATION)),
        ("$DAVE_SECRET", DAVE_INVITATION.to_string()),
    ]
    .iter()
    .fold(VERSION_3_ROWS.to_string(), |sql, (name, value)| {
        sql.replace(name, value)
    });
    let tx = conn.transaction().unwrap();
    tx.execute_batch(
        "CREATE TABLE schema_version (version INTEGER NOT NULL);
         INSERT INTO schema_version (version) VALUES (3);",
    )
    .unwrap();
    tx.execute_batch(&rows).unwrap();
    tx.commit().unwrap();
    let violations: i64 = conn
        .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(violations, 0, "the version 3 rows refer to each other");
}

/// The database's tables (SQLite's own left out) with their columns.
fn tables(conn: &Connection) -> BTreeMap<String, Vec<String>> {
    let names: Vec<String> = strings(
        conn,
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    );
    names
        .into_iter()
        .map(|table| {
            let columns = strings(
                conn,
                &format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid"),
            );
            (table, columns)
        })
        .collect()
}

fn strings(conn: &Connection, sql: &str) -> Vec<String> {
    let mut stmt = conn.prepare(sql).unwrap();
    let rows = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows
}

fn index_names(conn: &Connection) -> BTreeSet<String> {
    strings(
        conn,
        "SELECT name FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL",
    )
    .into_iter()
    .collect()
}

/// Every row of `table` in `columns`, each value spelled with its storage
/// class (`Integer(5)` is not `Text("5")`).
fn rows(conn: &Connection, table: &str, columns: &[String]) -> BTreeSet<Vec<String>> {
    let list: Vec<String> = columns.iter().map(|c| format!("\"{c}\"")).collect();
    let mut stmt = conn
        .prepare(&format!("SELECT {} FROM \"{table}\"", list.join(", ")))
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            (0..columns.len())
                .map(|i| Ok(format!("{:?}", r.get::<_, SqlValue>(i)?)))
                .collect::<Result<Vec<String>, _>>()
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows
}

fn notification_sequence(conn: &Connection) -> i64 {
    conn.query_row(
        "SELECT seq FROM sqlite_sequence WHERE name = 'notifications'",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// `GET /v1/inbox` as herald serves a stored row: `ntf_` ids, JSON columns
/// parsed, epoch milliseconds as RFC 3339.
fn inbox_item(row: &rusqlite::Row<'_>) -> rusqlite::Result<Value> {
    let time = |i: usize| -> rusqlite::Result<Value> {
        Ok(json!(row
            .get::<_, Option<i64>>(i)?
            .map(herald::time::rfc3339)))
    };
    let parsed = |i: usize| -> rusqlite::Result<Value> {
        Ok(serde_json::from_str(&row.get::<_, String>(i)?).unwrap())
    };
    Ok(json!({
        "id": format!("ntf_{}", row.get::<_, i64>(0)?),
        "type": row.get::<_, String>(1)?,
        "title": row.get::<_, String>(2)?,
        "body": row.get::<_, String>(3)?,
        "actions": parsed(4)?,
        "payload": parsed(5)?,
        "createdAt": time(6)?,
        "seenAt": time(7)?,
        "readAt": time(8)?,
        // Rows older than version 7 are in the inbox: not archived, not
        // snoozed.
        "archivedAt": null,
        "snoozedUntil": null,
    }))
}

fn inbox_of(conn: &Connection, user: &str) -> Vec<Value> {
    let mut stmt = conn
        .prepare(
            "SELECT id, type, title, body, actions, payload, created_at, seen_at, read_at
             FROM notifications WHERE user_id = ?1 ORDER BY created_at DESC, id DESC",
        )
        .unwrap();
    let items = stmt
        .query_map([user], inbox_item)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    items
}

#[test]
fn serve_upgrades_a_version_3_database_and_keeps_every_row() {
    if sqlite_only("migration::serve_upgrades_a_version_3_database_and_keeps_every_row") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    version_3_database(dir.path(), now_ms());

    let (v3_tables, v3_rows, v3_indexes, v3_sequence, dave_inbox) = {
        let conn = Connection::open(dir.path().join("herald.db")).unwrap();
        let v3_tables = tables(&conn);
        let v3_rows: BTreeMap<String, BTreeSet<Vec<String>>> = v3_tables
            .iter()
            .map(|(table, columns)| (table.clone(), rows(&conn, table, columns)))
            .collect();
        let empty: Vec<&String> = v3_rows
            .iter()
            .filter(|(_, rows)| rows.is_empty())
            .map(|(table, _)| table)
            .collect();
        assert!(
            empty.is_empty(),
            "the version 3 schema has tables the fixture leaves empty: {empty:?}"
        );
        let dave_inbox = inbox_of(&conn, "dave");
        (
            v3_tables,
            v3_rows,
            index_names(&conn),
            notification_sequence(&conn),
            dave_inbox,
        )
    };

    let mut server = TestServer::builder().db_dir(dir.path()).start();

    // Credentials stored by herald 3 still sign in.
    let (status, me) = server.get("/v1/me", Some(DAVE_TOKEN));
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        me,
        json!({"id": "dave", "email": "dave@example.com", "name": "Dave",
               "timezone": null, "quietHours": null, "locale": null})
    );
    let page = server.request_raw(
        "GET",
        "/inbox",
        &[("cookie", &format!("herald_session={ALICE_SESSION}"))],
        None,
    );
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(
        page.text().contains("Dave joined Acme"),
        "Alice's inbox page lacks her version 3 row"
    );

    // The inbox rebuilt by version 4 serves the old rows, every field.
    assert_eq!(dave_inbox.len(), 3);
    let (status, inbox) = server.get("/v1/inbox", Some(DAVE_TOKEN));
    assert_eq!(status, 200, "{inbox}");
    assert_eq!(inbox["items"], json!(dave_inbox));

    // Events keep their results (herald 2's per-channel counts unsplit) and
    // find their inbox rows and deliveries.
    let key = server.service_key().to_string();
    let (_, invite) = server.get("/v1/events/evt_invite_dave", Some(&key));
    assert_eq!(
        invite["result"],
        json!({"sent": 2, "deduped": 0, "suppressedByPrefs": 0, "throttled": 0, "channels": null}),
        "{invite}"
    );
    let (status, role) = server.get("/v1/events/evt_role_bob", Some(&key));
    assert_eq!(status, 200, "{role}");
    assert_eq!(role["status"], "dispatched");
    assert_eq!(role["result"], result([1, 0, 0], [1, 0, 0], [1, 0, 0]));
    assert_eq!(
        role["deliveries"],
        json!([
            {"id": "ntf_5", "recipient": "bob", "channel": "inbox", "status": "delivered",
             "attempts": 1, "nextAttemptAt": null, "lastError": null, "batchId": null},
            {"id": "dlv_role_bob", "recipient": "bob", "channel": "email", "status": "sent",
             "attempts": 2, "nextAttemptAt": null, "lastError": "provider answered 503",
             "batchId": "bat_roles"}
        ])
    );

    // The reference application's rows.
    let (_, credits) = server.get("/v1/credits", Some(ALICE_TOKEN));
    assert_eq!(credits["balance"], 500, "{credits}");
    let (_, audit) = server.get("/v1/orgs/org_acme/audit", Some(ALICE_TOKEN));
    assert_eq!(audit["items"].as_array().map(Vec::len), Some(5), "{audit}");
    let (_, billing) = server.get("/v1/orgs/org_acme/billing", Some(ALICE_TOKEN));
    assert_eq!(
        (&billing["plan"], &billing["status"]),
        (&json!("pro"), &json!("active")),
        "{billing}"
    );

    // New work on the upgraded file: an inbox row whose id carries on past
    // the deleted 7, and an email.
    let (status, posted) = server.post_event(json!({
        "type": "system.announcement", "recipients": ["dave"],
        "payload": {"title": "Maintenance on Sunday", "body": "02:00 to 02:30 UTC."}
    }));
    assert_eq!(status, 202, "{posted}");
    server.wait_event_done(posted["eventId"].as_str().unwrap(), WAIT);
    let (status, posted) = server.post_event(json!({
        "type": "org.member.role_changed", "recipients": ["bob"], "subjectId": "mem_bob",
        "payload": {"newRole": "owner", "before": "admin", "orgName": "Acme", "actorName": "Alice"}
    }));
    assert_eq!(status, 202, "{posted}");
    let event = posted["eventId"].as_str().unwrap().to_string();
    server.wait_event_done(&event, WAIT);
    let sent = wait_until(WAIT, || {
        let (_, view) = server.get(&format!("/v1/events/{event}"), Some(&key));
        view["deliveries"][1]["status"] == "sent"
    });
    assert!(sent, "the new event's email was not sent");
    let (_, inbox) = server.get("/v1/inbox", Some(DAVE_TOKEN));
    assert_eq!(
        inbox["items"][0]["title"], "Maintenance on Sunday",
        "{inbox}"
    );
    assert_eq!(inbox["items"][0]["id"], format!("ntf_{}", v3_sequence + 1));

    let status = server.stop();
    assert!(status.success(), "serve exited with {status}");

    let conn = Connection::open(dir.path().join("herald.db")).unwrap();
    let version: i64 = conn
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, herald::store::SCHEMA_VERSION);
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let violations: i64 = conn
        .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(violations, 0, "foreign key violations after the upgrade");

    let indexes = index_names(&conn);
    let lost: Vec<&String> = v3_indexes.difference(&indexes).collect();
    assert!(lost.is_empty(), "indexes lost by the upgrade: {lost:?}");
    for added in ["digest_events_event", "digests_flushed"] {
        assert!(indexes.contains(added), "version 4 adds index {added}");
    }
    assert!(
        notification_sequence(&conn) > v3_sequence,
        "inbox ids carry on from version 3's counter"
    );

    let v4_tables = tables(&conn);
    for (table, columns) in &v3_tables {
        if table == "schema_version" {
            continue;
        }
        let kept = v4_tables.get(table).unwrap_or_else(|| {
            panic!("table {table} is gone after the upgrade");
        });
        let dropped: Vec<&String> = columns.iter().filter(|c| !kept.contains(c)).collect();
        assert!(
            dropped.is_empty(),
            "{table} lost columns in the upgrade: {dropped:?}"
        );
        let before = &v3_rows[table];
        let after = rows(&conn, table, columns);
        assert!(
            after.len() >= before.len(),
            "{table}: {} rows after the upgrade, {} before (serve may add rows for the \
             events posted since, but must not lose any)",
            after.len(),
            before.len()
        );
        let changed: Vec<&Vec<String>> = before.difference(&after).collect();
        assert!(
            changed.is_empty(),
            "{table}: rows of the version 3 database missing or changed after the upgrade \
             (columns {columns:?}): {changed:#?}"
        );
    }
}
