//! invoicer: a month-end invoicing engine on NATS JetStream and PostgreSQL.
//!
//! The pure core prices and totals; adapters move rows and messages in and out of it.
//!
//! | module | role |
//! |---|---|
//! | [`money`] | exact decimals, integer cents, the one rounding helper |
//! | [`period`] | half-open UTC billing periods and daily proration |
//! | [`schedule`] | the month-end cron: which period each firing requests, what is due |
//! | [`catalog`] | validated tenants, plans, add-ons, subscriptions |
//! | [`abn`] | Australian Business Numbers and their checksum |
//! | [`grace`] | the grace window: ISO 8601 durations up to `P31D`, when a draft closes |
//! | [`quote`] | the quote engine shared by quotes, previews and the rollup |
//! | [`invoice`] | invoices, lines, the status machine |
//! | [`document`] | tax invoice documents: a view model of an invoice, rendered to HTML and PDF |
//! | [`wire`] | JSON payloads of the contract, parsed into domain values at the edge |
//! | [`subjects`] | the contract's subjects named by more than one layer |
//! | [`error`] | the error classes, each with one reply code and one ack kind |
//! | [`store`] | PostgreSQL: migrations and one module of queries per concern |
//! | [`rollup`] | a rollup's lifecycle: tenants, batches, what one transaction holds; grace drafts refreshed and finalized |
//! | [`api`] | the request-reply endpoints, independent of the transport |
//! | [`bus`] | NATS: streams, consumers, the outbox relay, the micro service |
//! | [`auth`] | NATS operator mode: role permissions, JWTs, credentials, revocation |
//! | [`worker`] | `invoicer run`: the parts above, supervised |
//! | [`scheduler`] | `invoicer scheduler`: fires [`schedule`] with its state in a key-value bucket |
//! | [`metrics`] | counters, the worker's readiness, the Prometheus endpoint |
//! | [`client`], [`render`], [`demo`], [`cli`] | the command line and what it prints |
//! | [`config`], [`telemetry`] | settings and logging |
//!
//! Arrows point one way: `cli` → `worker` → `bus` → `api`/`rollup` → `store` → the pure core.
pub mod api;
pub mod app;
pub mod auth;
pub mod bus;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
pub mod metrics;
pub mod rollup;
pub mod store;
pub mod subjects;
pub mod telemetry;
pub mod wire;

// Old paths, kept while the tree is reorganised (issue 16); removed once every import uses the
// new ones.
pub use app::{scheduler, worker};
pub use bus::client;
pub use cli::{bench, demo, print as render};
pub use domain::calendar as schedule;
pub use domain::{abn, catalog, document, grace, invoice, money, period, quote};
