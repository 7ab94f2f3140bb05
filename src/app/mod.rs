//! The long-running processes: `invoicer run` (the [`worker`]) and `invoicer scheduler` (the
//! [`scheduler`]), each its parts supervised, started from the command line.

pub mod scheduler;
pub mod worker;
