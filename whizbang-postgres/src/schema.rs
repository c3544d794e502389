//! Schema names: one PostgreSQL schema per service, so several services
//! share one database with their own tables (their own inbox, outbox,
//! events and read models).

use whizbang_core::{Error, Result};

/// The longest schema name accepted (bytes). PostgreSQL allows 63; the rest
/// is kept for the NOTIFY channel names derived from it (`whizbang_applied.<schema>`).
pub const MAX_SCHEMA_NAME: usize = 40;

/// A validated schema name: lower-case ASCII letters, digits and `_`,
/// starting with a letter or `_`, at most [`MAX_SCHEMA_NAME`] bytes, not a
/// system schema (`pg_*`, `information_schema`). Such a name needs no
/// quoting and is quoted anyway wherever it reaches SQL; it never comes from
/// a value spliced in unchecked.
///
/// ```
/// use whizbang_postgres::SchemaName;
///
/// assert_eq!(SchemaName::new("billing")?.as_str(), "billing");
/// assert!(SchemaName::new("Billing").is_err());
/// assert!(SchemaName::new("billing; drop table wh_events").is_err());
/// assert!(SchemaName::new("pg_catalog").is_err());
/// # Ok::<(), whizbang_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SchemaName(String);

impl SchemaName {
    /// Checks `name`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] saying what is wrong with it.
    pub fn new(name: &str) -> Result<Self> {
        let refuse = |why: &str| {
            Err(Error::InvalidInput(format!(
                "schema name {name:?} {why}; use lower-case ASCII letters, digits and `_`, \
                 starting with a letter or `_`, at most {MAX_SCHEMA_NAME} bytes (e.g. `billing`)"
            )))
        };
        let mut chars = name.chars();
        match chars.next() {
            None => return refuse("is empty"),
            Some(c) if !(c.is_ascii_lowercase() || c == '_') => {
                return refuse("does not start with a lower-case letter or `_`")
            }
            Some(_) => {}
        }
        if name.len() > MAX_SCHEMA_NAME {
            return refuse("is too long");
        }
        if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            return refuse("holds a character other than a-z, 0-9 and `_`");
        }
        if name.starts_with("pg_") || name == "information_schema" {
            return refuse("is a system schema");
        }
        Ok(SchemaName(name.to_owned()))
    }

    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a quoted SQL identifier (`"billing"`).
    pub(crate) fn quoted(&self) -> String {
        // Validated: no `"` to escape.
        format!("\"{}\"", self.0)
    }

    /// The name of NOTIFY channel `base` in this schema (see `wh_channel`
    /// in migration `0004_outbox.sql`).
    #[must_use]
    pub fn channel(&self, base: &str) -> String {
        if self.0 == "public" {
            base.to_owned()
        } else {
            format!("{base}.{}", self.0)
        }
    }
}

impl std::fmt::Display for SchemaName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::SchemaName;

    #[test]
    fn hostile_names_are_refused() {
        for bad in [
            "",
            "1abc",
            "Billing",
            "bill-ing",
            "bill\"ing",
            "a b",
            "x;drop",
            "pg_temp",
            "information_schema",
            &"a".repeat(41),
        ] {
            assert!(SchemaName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(SchemaName::new("_b2").unwrap().quoted(), "\"_b2\"");
        assert_eq!(
            SchemaName::new("public").unwrap().channel("wh_queue"),
            "wh_queue"
        );
        assert_eq!(
            SchemaName::new("billing").unwrap().channel("wh_queue"),
            "wh_queue.billing"
        );
    }
}
