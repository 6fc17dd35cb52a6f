//! Two herald processes on one PostgreSQL database, as a deployment scaled
//! out behind a load balancer: the http scenario's single and bulk load
//! phases with the requests spread round-robin over both servers, both
//! sending to one fake provider, then commit-to-inbox at `--rate`, also
//! round-robin. The same figures as the http scenario's for one instance,
//! under `two_instances_*`, and how the deliveries were shared out.

use std::time::Duration;

use herald::args;
use serde_json::{json, Map, Value};

use super::http::{commit_to_inbox, load_phases, report_commit_to_inbox};
use crate::databases::Engine;
use crate::db;
use crate::fake_provider::fake_resend;
use crate::options::Opts;
use crate::process::start_herald;
use crate::seed::prepared_db;

pub fn run(engine: &Engine, opts: &Opts, out: &mut Map<String, Value>) -> Result<(), String> {
    if !engine.is_postgres() {
        return Err("the two-instances scenario needs --database-url postgres://...".into());
    }
    let users = opts.users.min(1000);
    eprintln!(
        "two-instances: two herald processes on one PostgreSQL database, {} events from {} \
         clients round-robin over both, one per request then {} per request, {users} users",
        opts.events, opts.clients, opts.http_batch
    );
    let db = engine.fresh("two_instances")?;
    drop(prepared_db(&db.database, users, 0)?);
    let mail = fake_resend()?;
    let first = start_herald(&db.database, &mail.url)?;
    let second = start_herald(&db.database, &mail.url)?;
    std::thread::sleep(Duration::from_secs(2));
    let store = db::watch(&db.database)?;
    let heralds = [&first, &second];
    load_phases(&heralds, &mail, &store, opts, users, "two_instances", out)?;

    // Each delivery is held by the instance whose dispatcher created it,
    // the one its event was posted to (its bus heard of it first).
    let shares: Vec<i64> = store
        .read(|c| {
            c.query_all(
                "SELECT COUNT(*) FROM deliveries GROUP BY claimed_by ORDER BY claimed_by",
                args![],
                |r| r.get(0),
            )
        })
        .map_err(|e| e.to_string())?;
    eprintln!("  deliveries created by each instance: {shares:?}");
    out.insert("two_instances_deliveries_by_instance".into(), json!(shares));

    let lat = commit_to_inbox(
        &heralds,
        &store,
        opts.rate,
        opts.rate * 3,
        2 * opts.events,
        users,
    )?;
    report_commit_to_inbox(out, "two_instances_commit_to_inbox", opts.rate, &lat);
    drop(store);
    Ok(())
}
