//! NATS decentralized authentication (operator mode, JWTs signed with nkeys), CONTRACT.md
//! section 7: an operator, the billing account with a signing key and JetStream, a system
//! account, per-role user credentials and tenant revocation. All JWT code is here; the CLI
//! (`invoicer auth ...`) only calls it, and `bus::connect` asks [`roles`] and [`claims`] for a
//! user's default inbox prefix.
//!
//! | module | role |
//! |---|---|
//! | [`roles`] | the one table of role permissions and inbox prefixes (pure) |
//! | [`claims`] | operator, account and user JWTs; `.creds` files |
//! | [`server_conf`] | `nats-operator.conf`, the server configuration |
//! | [`dir`] | the auth directory: keys, issued users, revocations |
//! | [`push`] | account updates to a running server |

pub mod claims;
pub mod dir;
pub mod push;
pub mod roles;
pub mod server_conf;

pub use dir::AuthDir;
pub use roles::{Permissions, Role};
