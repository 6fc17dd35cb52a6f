//! herald's integration tests: one binary, one module per capability. Each
//! test starts the real `herald` binary on port 0 with its own temporary
//! database and, where email matters, a fake Resend server on 127.0.0.1.

mod support;

mod api_errors;
mod app_cli;
mod app_invitations;
mod app_roles;
mod app_stripe;
mod app_tenancy;
mod architecture;
mod backup;
mod browser;
mod crash;
mod delivery;
mod delivery_crash;
mod delivery_engine;
mod delivery_pace;
mod domain_credits;
mod domain_listeners;
mod escalation;
mod group_commit;
mod http_edge;
mod inbox;
mod inbox_archive;
mod inbox_page;
mod inbox_stream;
mod inbox_stream_bounds;
mod instances;
mod invitation_page;
mod library;
mod links;
mod locales;
mod metrics;
mod migrate_postgres;
mod migration;
mod openapi;
mod policy_catalog;
mod policy_dedup;
mod policy_digest;
mod policy_prefs;
mod policy_registry;
mod policy_results;
mod quiet_hours;
mod retention;
mod scheduled;
mod schedules;
mod throttle;
mod topics;
mod webhooks;
