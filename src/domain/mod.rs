//! The pure core: what a bill is and how it is priced, with no I/O of any kind (no tokio, sqlx
//! or async-nats). Everything it needs comes in as arguments, the clock too, and everything
//! it decides goes out as values or typed errors, so quotes, previews, the rollup and the
//! documents share one implementation, and its tests need no services.
//!
//! | module | what it decides |
//! |---|---|
//! | [`money`] | exact decimals, integer cents, the one rounding helper |
//! | [`period`] | half-open UTC billing periods and daily proration |
//! | [`calendar`] | the month-end calendar: which period each firing requests, what is due |
//! | [`catalog`] | validated tenants, plans, add-ons, subscriptions |
//! | [`abn`] | Australian Business Numbers and their checksum |
//! | [`grace`] | the grace window: ISO 8601 durations up to `P31D`, when a draft closes |
//! | [`quote`] | the quote engine shared by quotes, previews and the rollup |
//! | [`invoice`] | invoices, lines, the status machine |
//! | [`rollup`] | what a rollup is asked to bill |
//! | [`usage`] | metered usage records |
//! | [`document`] | tax invoice documents: a view model of an invoice, rendered to HTML and PDF |

pub mod abn;
pub mod calendar;
pub mod catalog;
pub mod document;
pub mod grace;
pub mod invoice;
pub mod money;
pub mod period;
pub mod quote;
pub mod rollup;
pub mod usage;
