//! The command-line arguments of the toolbox.

use std::time::Duration;

use clap::{Args, Subcommand};
use cqrs_core::ops::FailureFilter;
use cqrs_core::EntityKey;

/// `ecommerce failures ...`
#[derive(Debug, Clone, Subcommand)]
pub enum FailureArgs {
    /// List failed commands, oldest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one command: its failure (handlers, errors, attempts), its row
    /// (status, type, tenant, times) and its entity's applied version.
    Show {
        #[command(flatten)]
        target: Target,
        /// Include the command's attribute values (they may hold personal data).
        #[arg(long)]
        attributes: bool,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Reprocess one failed command, or every one matching the filters
    /// (`--all`): its failed handlers run again (or it is applied, if it
    /// never was). A command already done is reported and left alone.
    Reprocess {
        /// The command, as `failures list` prints it.
        #[command(flatten)]
        target: OptionalTarget,
        /// Every failed command matching the filters, oldest first.
        #[arg(long, conflicts_with_all = ["pk", "sk", "version"])]
        all: bool,
        #[command(flatten)]
        filter: FilterArgs,
        /// Report what would be done; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

/// One command: `PK SK VERSION`, as `failures list` prints them.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Partition key, e.g. `TENANT#shop-a`.
    pub pk: String,
    /// Sort key of the entity, e.g. `ORDER#ORD-000001`.
    pub sk: String,
    /// Version of the command.
    pub version: u64,
}

impl Target {
    pub fn key(&self) -> EntityKey {
        EntityKey::new(self.pk.as_str(), self.sk.as_str())
    }
}

/// [`Target`], absent with `--all`.
#[derive(Debug, Clone, Args)]
pub struct OptionalTarget {
    /// Partition key, e.g. `TENANT#shop-a`.
    #[arg(required_unless_present = "all")]
    pub pk: Option<String>,
    /// Sort key of the entity, e.g. `ORDER#ORD-000001`.
    #[arg(required_unless_present = "all")]
    pub sk: Option<String>,
    /// Version of the command.
    #[arg(required_unless_present = "all")]
    pub version: Option<u64>,
}

impl OptionalTarget {
    pub fn target(&self) -> Option<Target> {
        Some(Target {
            pk: self.pk.clone()?,
            sk: self.sk.clone()?,
            version: self.version?,
        })
    }
}

/// Which failed commands (`list`, `reprocess --all`).
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// Only this tenant's.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only those where this handler failed (e.g. `order-sync`).
    #[arg(long)]
    pub handler: Option<String>,
    /// Only those that failed longer ago than this: `90s`, `10m`, `2h`, `1d`.
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    pub older_than: Option<Duration>,
}

impl FilterArgs {
    pub fn filter(&self) -> FailureFilter {
        let mut filter = FailureFilter::default();
        if let Some(tenant) = &self.tenant {
            filter = filter.tenant(tenant);
        }
        if let Some(handler) = &self.handler {
            filter = filter.handler(handler);
        }
        if let Some(age) = self.older_than {
            filter = filter.older_than(age);
        }
        filter
    }

    pub fn is_empty(&self) -> bool {
        self.tenant.is_none() && self.handler.is_none() && self.older_than.is_none()
    }
}

/// `500ms`, `90s`, `10m`, `2h`, `1d` (a bare number is seconds).
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not an age such as 90s, 10m, 2h or 1d"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(number)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{text}': use ms, s, m, h or d"
            ))
        }
    };
    number
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("'{text}' is too long an age"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_with_their_units() {
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_age("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_age("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_age("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_age("5"), Ok(Duration::from_secs(5)));
        assert!(parse_age("").is_err());
        assert!(parse_age("10 minutes").is_err());
        assert!(parse_age("-1s").is_err());
        assert!(parse_age("99999999999999999999d").is_err());
    }
}
