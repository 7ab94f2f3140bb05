//! Restricted NATS users for the permission tests: a connection that logs in with a `nats.conf`
//! password or an issued `.creds` file, and records every permissions violation the server
//! reports to it.
//!
//! A refusal is proved by the server's own word: the `-ERR 'Permissions Violation ...'` it sends
//! the offending connection, which async-nats reports through the event callback.

use super::NatsServer;
use async_nats::{jetstream, ConnectOptions, Event, Request, RequestErrorKind, ServerError};
use std::time::Duration;
use tokio::sync::mpsc;

/// How a user logs in.
#[derive(Clone)]
pub enum Login {
    /// A `nats.conf` user and its demo password (`<user>-secret`).
    Password(String),
    /// The contents of a `.creds` file.
    Creds(String),
}

impl Login {
    pub fn password(user: &str) -> Login {
        Login::Password(user.to_string())
    }

    pub fn options(&self) -> ConnectOptions {
        match self {
            Login::Password(user) => {
                ConnectOptions::new().user_and_password(user.clone(), format!("{user}-secret"))
            }
            Login::Creds(creds) => ConnectOptions::new()
                .credentials(creds)
                .expect("the issued credentials parse"),
        }
    }
}

/// The permissions violations the server reported to one connection, in order.
pub struct Violations(pub mpsc::UnboundedReceiver<String>);

impl Violations {
    /// Waits, with a deadline, until the server has reported each of `violations` (e.g.
    /// `Publish to "billing.quote"`), in any order. Any other violation fails the test.
    pub async fn expect(&mut self, violations: &[String]) {
        let mut wanted: Vec<String> = violations
            .iter()
            .map(|v| format!("Permissions Violation for {v}"))
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !wanted.is_empty() {
            match tokio::time::timeout_at(deadline, self.0.recv()).await {
                Ok(Some(error)) => match wanted.iter().position(|w| *w == error) {
                    Some(i) => drop(wanted.swap_remove(i)),
                    None => panic!("unexpected server error: {error} (waiting for {wanted:?})"),
                },
                Ok(None) => panic!("the connection closed before the server reported {wanted:?}"),
                Err(_) => panic!("the server did not report {wanted:?}"),
            }
        }
    }

    /// Everything reported so far and not awaited.
    pub fn unexpected(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.0.try_recv().ok()).collect()
    }
}

/// A connection as one restricted user.
pub struct User {
    pub client: async_nats::Client,
    pub violations: Violations,
}

impl User {
    /// Connects with `login`, replying on `inbox` (the user's own prefix, or a wrong one).
    pub async fn connect(server: &NatsServer, login: &Login, inbox: &str) -> User {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = login
            .options()
            .custom_inbox_prefix(inbox)
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let Event::ServerError(ServerError::Other(error)) = event {
                        let _ = tx.send(error);
                    }
                }
            })
            .connect(&server.url)
            .await
            .unwrap_or_else(|e| panic!("{inbox}: could not log in: {e}"));
        User {
            client,
            violations: Violations(rx),
        }
    }

    pub fn js(&self) -> jetstream::Context {
        jetstream::new(self.client.clone())
    }

    /// Requests the server must refuse to forward: it reports a violation for each, and none
    /// gets any reply (not even "no responders", which would mean it was routed). The requests
    /// go out together, so they share one reply deadline.
    pub async fn requests_refused(&mut self, subjects: &[&str]) {
        let requests = subjects.iter().map(|subject| {
            let request = Request::new()
                .payload("{}".into())
                .timeout(Some(Duration::from_secs(2)));
            self.client.send_request(subject.to_string(), request)
        });
        let expected: Vec<String> = subjects
            .iter()
            .map(|s| format!("Publish to \"{s}\""))
            .collect();
        let (replies, ()) = tokio::join!(
            futures::future::join_all(requests),
            self.violations.expect(&expected),
        );
        for (subject, reply) in subjects.iter().zip(replies) {
            let error = reply.expect_err("a refused request got a reply");
            assert_eq!(
                error.kind(),
                RequestErrorKind::TimedOut,
                "{subject}: {error}"
            );
        }
    }

    /// A subscription the server must refuse.
    pub async fn subscribe_refused(&mut self, subject: &str) -> async_nats::Subscriber {
        let subscriber = self.client.subscribe(subject.to_string()).await.unwrap();
        self.violations
            .expect(&[format!("Subscription to \"{subject}\"")])
            .await;
        subscriber
    }

    /// Plain publishes the server must refuse.
    pub async fn publishes_refused(&mut self, subjects: &[&str]) {
        for subject in subjects {
            self.client
                .publish(subject.to_string(), "{}".into())
                .await
                .unwrap();
        }
        let expected: Vec<String> = subjects
            .iter()
            .map(|s| format!("Publish to \"{s}\""))
            .collect();
        self.violations.expect(&expected).await;
    }
}
