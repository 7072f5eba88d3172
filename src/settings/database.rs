//! `database:` where the user → agent mapping and the chat leases live.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

use super::{ConfigError, secret, units};

/// The `database:` section: where the user → agent mapping and the leases live.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://…` or `sqlite://PATH` (the file is created when missing).
    pub url: DatabaseUrl,
    /// PostgreSQL only: schema holding the gateway's tables (created when missing).
    pub schema: Option<String>,
    /// Connections in the pool; statements beyond them wait for a free one.
    pub max_connections: u32,
    /// How long a query may wait for a connection before the route answers 503.
    #[serde(rename = "acquire_timeout_ms", with = "units::millis")]
    pub acquire_timeout: Duration,
    /// PostgreSQL: prepared statements kept per connection. `0` is for a
    /// transaction pooler (PgBouncer `pool_mode = transaction`): unnamed
    /// statements only, each store call in a transaction of its own.
    pub statement_cache: usize,
    /// PostgreSQL: a direct connection (not through a transaction pooler)
    /// for what needs a session: LISTEN and migrations.
    pub direct_url: Option<DatabaseUrl>,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: DatabaseUrl::Sqlite("sqlite://eai-gateway.db".into()),
            schema: None,
            max_connections: 16,
            acquire_timeout: Duration::from_secs(3),
            // sqlx's own default: what the gateway used before the key existed.
            statement_cache: 100,
            direct_url: None,
        }
    }
}

/// The database URL with its kind decided once, from its scheme.
#[derive(Clone)]
pub enum DatabaseUrl {
    /// A `postgres://` or `postgresql://` URL.
    Postgres(String),
    /// A `sqlite:` URL.
    Sqlite(String),
}

impl DatabaseUrl {
    /// Decides the kind from the scheme; the error names the schemes accepted.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            Ok(Self::Postgres(raw.to_owned()))
        } else if raw.starts_with("sqlite:") {
            Ok(Self::Sqlite(raw.to_owned()))
        } else {
            // Only the scheme is shown: the rest may hold a password.
            let expected = "expected postgres://, postgresql:// or sqlite: \
                            (e.g. postgres://user:password@host/db or sqlite://eai-gateway.db)";
            Err(match raw.split_once("://") {
                Some((scheme, _)) => format!("the scheme {scheme:?} is not known: {expected}"),
                None => format!("not a database URL: {expected}"),
            })
        }
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// Shows the scheme, host and database only: a PostgreSQL URL may carry a
/// password, in its user part or as a `password=` parameter.
impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Compared as secrets: the URL may hold the database password.
impl PartialEq for DatabaseUrl {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Postgres(a), Self::Postgres(b)) | (Self::Sqlite(a), Self::Sqlite(b)) => {
                secret::same(a, b)
            }
            _ => false,
        }
    }
}

impl Eq for DatabaseUrl {}

impl DatabaseUrl {
    /// The URL without credentials or parameters, safe for logs and the
    /// demo banner.
    pub fn redacted(&self) -> String {
        match self {
            Self::Sqlite(url) => url.clone(),
            Self::Postgres(raw) => {
                let scheme = raw.split_once("://").map_or("postgres", |(s, _)| s);
                // Read as sqlx reads it. The parameters are left out whole
                // (`password=` is one of them); an `@` left in the path means
                // the user part was not where the parser looked, so it may
                // hold the password, and nothing is shown.
                match reqwest::Url::parse(raw) {
                    Ok(url) if !url.path().contains('@') => {
                        let host = url.host_str().unwrap_or_default();
                        let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
                        format!("{scheme}://{host}{port}{}", url.path())
                    }
                    _ => format!("{scheme}://<redacted>"),
                }
            }
        }
    }
}

impl DatabaseSettings {
    /// Whether the pool goes through a transaction pooler
    /// (`statement_cache: 0`): no session state may outlive a transaction.
    pub fn through_transaction_pooler(&self) -> bool {
        matches!(self.url, DatabaseUrl::Postgres(_)) && self.statement_cache == 0
    }

    /// The URL of what needs a session (LISTEN, migrations): `direct_url`
    /// when set, else `url`; `None` when only a transaction pooler is
    /// configured, which cannot hold a session.
    pub fn session_url(&self) -> Option<&DatabaseUrl> {
        match &self.direct_url {
            Some(direct) => Some(direct),
            None if self.through_transaction_pooler() => None,
            None => Some(&self.url),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(schema) = &self.schema {
            let ok = schema.len() <= 63
                && schema
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && schema.bytes().next().is_some_and(|b| !b.is_ascii_digit());
            if !ok {
                return Err(ConfigError::new(
                    "database.schema",
                    format!(
                        "{schema:?} is not a schema name: must be 1-63 lowercase letters, \
                         digits or '_', not starting with a digit"
                    ),
                ));
            }
        }
        if self.max_connections == 0 {
            return Err(ConfigError::out_of_range(
                "database.max_connections",
                0,
                "must be at least 1",
            ));
        }
        match (&self.url, &self.direct_url) {
            (DatabaseUrl::Postgres(_), Some(DatabaseUrl::Sqlite(_))) => {
                return Err(ConfigError::new(
                    "database.direct_url",
                    "must be a postgres:// URL: it reaches the database of database.url \
                     without the pooler",
                ));
            }
            (DatabaseUrl::Sqlite(_), Some(_)) => {
                return Err(ConfigError::new(
                    "database.direct_url",
                    "applies to PostgreSQL only: database.url is SQLite",
                ));
            }
            _ => {}
        }
        if self.acquire_timeout.is_zero() {
            return Err(ConfigError::out_of_range(
                "database.acquire_timeout_ms",
                0,
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
