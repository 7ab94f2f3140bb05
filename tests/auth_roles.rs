//! `nats.conf`'s users and the JWT role table (`invoicer::auth::Role::permissions`) grant the
//! same subjects: a permission added to one and not the other fails here, naming the subjects
//! on each side.
//!
//! No Rust crate reads nats-server's configuration format, so a small reader for it is below:
//! maps, arrays, quoted and bare strings, `:`/`=`/space separators, `#` and `//` comments. It
//! refuses what it does not know (variables, includes) rather than guess.

use invoicer::auth::Role;
use invoicer::catalog::TenantId;
use serde_json::{Map, Value};
use std::collections::BTreeSet;

const CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/nats.conf");

/// A reader for the subset of the nats-server configuration format that `nats.conf` uses.
struct Reader<'a> {
    rest: &'a str,
}

impl<'a> Reader<'a> {
    fn skip_blank(&mut self) {
        loop {
            let trimmed = self
                .rest
                .trim_start_matches(|c: char| c.is_whitespace() || c == ',' || c == ';');
            if let Some(comment) = trimmed
                .strip_prefix('#')
                .or_else(|| trimmed.strip_prefix("//"))
            {
                self.rest = comment.split_once('\n').map_or("", |(_, after)| after);
            } else {
                self.rest = trimmed;
                return;
            }
        }
    }

    fn peek(&self) -> Option<char> {
        self.rest.chars().next()
    }

    fn bump(&mut self) {
        let mut chars = self.rest.chars();
        chars.next();
        self.rest = chars.as_str();
    }

    /// A quoted string, or a bare word up to whitespace or a delimiter.
    fn word(&mut self) -> String {
        match self.peek() {
            Some(q @ ('"' | '\'')) => {
                self.bump();
                let (word, after) = self.rest.split_once(q).expect("an unterminated string");
                assert!(!word.contains('\\'), "escapes are not supported: {word}");
                self.rest = after;
                word.to_string()
            }
            _ => {
                let end = self
                    .rest
                    .find(|c: char| c.is_whitespace() || ",;:=[]{}#".contains(c))
                    .unwrap_or(self.rest.len());
                assert!(
                    end > 0,
                    "expected a word at {:?}",
                    &self.rest[..self.rest.len().min(40)]
                );
                let word = &self.rest[..end];
                assert!(
                    !word.starts_with('$'),
                    "variables are not supported: {word}"
                );
                self.rest = &self.rest[end..];
                word.to_string()
            }
        }
    }

    fn value(&mut self) -> Value {
        self.skip_blank();
        match self.peek() {
            Some('{') => {
                self.bump();
                let map = self.entries(Some('}'));
                Value::Object(map)
            }
            Some('[') => {
                self.bump();
                let mut items = Vec::new();
                loop {
                    self.skip_blank();
                    if self.peek() == Some(']') {
                        self.bump();
                        return Value::Array(items);
                    }
                    items.push(self.value());
                }
            }
            Some('"' | '\'') => Value::String(self.word()),
            _ => match self.word().as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                other => other
                    .parse::<i64>()
                    .map(Value::from)
                    .unwrap_or_else(|_| Value::String(other.to_string())),
            },
        }
    }

    /// `key [:|=] value` entries up to `close` (or the end of the text at the top level).
    fn entries(&mut self, close: Option<char>) -> Map<String, Value> {
        let mut map = Map::new();
        loop {
            self.skip_blank();
            match (self.peek(), close) {
                (None, None) => return map,
                (None, Some(c)) => panic!("missing '{c}'"),
                (Some(c), Some(close)) if c == close => {
                    self.bump();
                    return map;
                }
                _ => {}
            }
            let key = self.word();
            assert_ne!(key, "include", "includes are not supported");
            self.rest = self.rest.trim_start_matches([' ', '\t']);
            if matches!(self.peek(), Some(':' | '=')) {
                self.bump();
            }
            let value = self.value();
            assert!(
                map.insert(key.clone(), value).is_none(),
                "{key} is set twice"
            );
        }
    }
}

fn parse(text: &str) -> Value {
    Value::Object(Reader { rest: text }.entries(None))
}

/// An allow list as written: one subject or an array of them.
fn allow_list(permissions: &Value, direction: &str, user: &str) -> Vec<String> {
    let Some(side) = permissions.get(direction) else {
        return vec![];
    };
    let side = side
        .as_object()
        .unwrap_or_else(|| panic!("{user}: {direction} is not a map"));
    for key in side.keys() {
        assert_eq!(
            key, "allow",
            "{user}: {direction}.{key} has no counterpart in the role table"
        );
    }
    match &side["allow"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().expect("a subject").to_string())
            .collect(),
        other => panic!("{user}: {direction}.allow is {other}"),
    }
}

/// Fails with what is on each side only.
fn same_subjects(user: &str, direction: &str, conf: &[String], table: &[String]) {
    let (c, t): (BTreeSet<&String>, BTreeSet<&String>) =
        (conf.iter().collect(), table.iter().collect());
    assert_eq!(
        c.len(),
        conf.len(),
        "{user}: {direction} lists a subject twice in nats.conf"
    );
    assert_eq!(
        t.len(),
        table.len(),
        "{user}: {direction} lists a subject twice in the role table"
    );
    let only_conf: Vec<_> = c.difference(&t).collect();
    let only_table: Vec<_> = t.difference(&c).collect();
    assert!(
        only_conf.is_empty() && only_table.is_empty(),
        "{user}: {direction} differs between nats.conf and src/auth/roles.rs\n  \
         only in nats.conf: {only_conf:?}\n  only in the role table: {only_table:?}"
    );
}

#[test]
fn every_nats_conf_user_has_exactly_its_roles_permissions() {
    let text = std::fs::read_to_string(CONF).unwrap();
    let conf = parse(&text);
    let users = conf["authorization"]["users"]
        .as_array()
        .expect("nats.conf lists its users under authorization.users");
    let mut roles_seen = BTreeSet::new();
    let mut tenants = 0;
    for user in users {
        let name = user["user"].as_str().expect("every user has a name");
        let role = match Role::fixed(name) {
            Some(role) => role,
            None => {
                tenants += 1;
                Role::Tenant(TenantId::parse(name).unwrap_or_else(|e| panic!("user {name}: {e}")))
            }
        };
        roles_seen.insert(name.to_string());
        let permissions = &user["permissions"];
        let keys: BTreeSet<&str> = permissions
            .as_object()
            .unwrap_or_else(|| panic!("{name} has no permissions"))
            .keys()
            .map(String::as_str)
            .collect();
        for key in &keys {
            assert!(
                ["publish", "subscribe", "allow_responses"].contains(key),
                "{name}: permissions.{key} has no counterpart in the role table"
            );
        }
        let table = role.permissions();
        same_subjects(
            name,
            "publish",
            &allow_list(permissions, "publish", name),
            &table.publish,
        );
        same_subjects(
            name,
            "subscribe",
            &allow_list(permissions, "subscribe", name),
            &table.subscribe,
        );
        let responses = permissions
            .get("allow_responses")
            .map(|v| v == &Value::Bool(true));
        assert_eq!(
            responses.unwrap_or(false),
            table.allow_responses,
            "{name}: allow_responses differs between nats.conf and the role table"
        );
    }
    for fixed in ["worker", "admin", "scheduler", "metering"] {
        assert!(roles_seen.contains(fixed), "nats.conf has no {fixed} user");
    }
    assert!(tenants >= 2, "nats.conf's example tenants are gone");
}

#[test]
fn the_reader_understands_the_format_it_claims_to() {
    let conf = parse(
        "# comment\nport: 4222\nname = 'x' // another\njetstream {}\n\
         auth { users = [ {user: a, permissions: {publish: \"p.>\", allow_responses: true}}\n\
         {user: \"b\"\n permissions { subscribe { allow: [\"_INBOX_b.>\"\n \"c\"] } } } ] }",
    );
    assert_eq!(conf["port"], 4222);
    assert_eq!(conf["name"], "x");
    assert_eq!(conf["jetstream"], serde_json::json!({}));
    let users = conf["auth"]["users"].as_array().unwrap();
    assert_eq!(users[0]["permissions"]["publish"], "p.>");
    assert_eq!(users[0]["permissions"]["allow_responses"], true);
    assert_eq!(
        users[1]["permissions"]["subscribe"]["allow"],
        serde_json::json!(["_INBOX_b.>", "c"])
    );
}

#[test]
#[should_panic(expected = "only in nats.conf")]
fn a_divergence_is_reported() {
    same_subjects("x", "publish", &["a".into(), "b".into()], &["a".into()]);
}
