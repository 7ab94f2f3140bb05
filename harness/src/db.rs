//! A fresh PostgreSQL database for one test or benchmark run, created with a random name on a
//! shared server and dropped (`WITH (FORCE)`, so sessions left open do not keep it) on drop.

use anyhow::Context;
use sqlx::Connection;

/// The machine's PostgreSQL, as the tests and the benchmark reach it by default.
pub const LOCAL_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub struct Database {
    pub name: String,
    /// A URL of the new database, with the server URL's user, host and options.
    pub url: String,
    admin_url: String,
    dropped: bool,
}

impl Database {
    /// Creates `<prefix>_<random>` on the server `server_url` (any database URL on it).
    pub async fn create(server_url: &str, prefix: &str) -> anyhow::Result<Database> {
        Self::create_with(server_url, prefix, "").await
    }

    /// As [`Database::create`], with `CREATE DATABASE` options (for instance an ICU collation:
    /// `TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.utf8'`).
    pub async fn create_with(
        server_url: &str,
        prefix: &str,
        options: &str,
    ) -> anyhow::Result<Database> {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let admin_url = url_with_database(server_url, "postgres")?;
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .with_context(|| format!("connecting to PostgreSQL at {admin_url}"))?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\" {options}"))
            .execute(&mut admin)
            .await
            .with_context(|| format!("creating database {name}"))?;
        Ok(Database {
            url: url_with_database(server_url, &name)?,
            name,
            admin_url,
            dropped: false,
        })
    }

    /// Drops the database now, reporting a failure (drop only tries).
    pub async fn drop_now(mut self) -> anyhow::Result<()> {
        self.dropped = true;
        drop_database(&self.admin_url, &self.name).await
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run on a runtime's thread, where blocking on another future is refused.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for dropping the database");
            let _ = rt.block_on(drop_database(&admin_url, &name));
        })
        .join();
    }
}

async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .with_context(|| format!("dropping database {name}"))?;
    Ok(())
}

/// `url` with its database replaced by `name`, keeping user, host, port and options.
pub fn url_with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").context("the database URL has no scheme")? + 3;
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| i + scheme_end);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::url_with_database;

    #[test]
    fn database_urls_keep_host_and_options() {
        assert_eq!(
            url_with_database("postgres://postgres@127.0.0.1:5432/invoicer", "b").unwrap(),
            "postgres://postgres@127.0.0.1:5432/b"
        );
        assert_eq!(
            url_with_database("postgres://u:p@h/db?sslmode=disable", "b").unwrap(),
            "postgres://u:p@h/b?sslmode=disable"
        );
        assert_eq!(
            url_with_database("postgres://h:5432", "b").unwrap(),
            "postgres://h:5432/b"
        );
    }
}
