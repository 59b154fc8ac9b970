//! Sequences: counter keys, rotation periods and number formats.
//!
//! A sequence is one atomic counter per (tenant, type code, sub-codes,
//! period). Rotation does not reset a counter: a new period is a new key, so
//! numbering restarts at 1 without any write to the old one.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys::{KEY_SEPARATOR, VERSION_SEPARATOR};

/// Prefix of the partition key of a tenant's counters: `SEQ#{tenant}`.
pub const SEQUENCE_PK_PREFIX: &str = "SEQ";
/// The default format: the bare number.
pub const DEFAULT_FORMAT: &str = "{no}";
/// At most this many sub-codes (`code1` .. `code5`).
pub const MAX_SUB_CODES: usize = 5;

/// When a sequence starts again at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Rotation {
    /// Never.
    #[default]
    None,
    /// Every calendar year.
    Yearly,
    /// Every month.
    Monthly,
    /// Every day.
    Daily,
    /// Every fiscal year, starting on the first day of `start_month` (1–12;
    /// April in Japan, the reference framework's default).
    FiscalYearly {
        /// First month of the fiscal year.
        start_month: u32,
    },
}

/// Which sequence to advance, and how to format the number.
///
/// ```
/// use cqrs_core::{Rotation, SequenceRequest};
/// let request = SequenceRequest::new("INVOICE")
///     .sub_codes(["TOKYO"])
///     .rotation(Rotation::FiscalYearly { start_month: 4 })
///     .format("INV-{code1}-{fiscal_year}-{no:05}");
/// # let _ = request;
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SequenceRequest {
    /// The sequence's type code (`ORDER`).
    pub type_code: String,
    /// Up to five sub-codes (`code1` .. `code5`) that split the sequence.
    pub sub_codes: Vec<String>,
    /// Rotation.
    pub rotation: Rotation,
    /// Format of [`SequenceValue::formatted`]; tokens: `{no}`, `{no:0N}`
    /// (zero-padded to N digits), `{year}`, `{yy}`, `{month}`, `{day}`,
    /// `{fiscal_year}`, `{code1}` .. `{code5}`, `{type}`, `{tenant}`; `{{` and
    /// `}}` for literal braces.
    pub format: String,
    /// The day the number is issued for (rotation and date tokens); today in UTC by default.
    pub date: Option<NaiveDate>,
    /// Tenant of the sequence; the caller's by default. Checked like any key.
    pub tenant_code: Option<String>,
}

impl SequenceRequest {
    /// A non-rotating sequence of `type_code`, formatted as the bare number.
    pub fn new(type_code: impl Into<String>) -> Self {
        Self {
            type_code: type_code.into(),
            sub_codes: Vec::new(),
            rotation: Rotation::None,
            format: DEFAULT_FORMAT.to_owned(),
            date: None,
            tenant_code: None,
        }
    }

    /// Sets the sub-codes.
    pub fn sub_codes<I, S>(mut self, codes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.sub_codes = codes.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the rotation.
    pub fn rotation(mut self, rotation: Rotation) -> Self {
        self.rotation = rotation;
        self
    }

    /// Sets the format.
    pub fn format(mut self, format: impl Into<String>) -> Self {
        self.format = format.into();
        self
    }

    /// Issues the number for `date` instead of today.
    pub fn date(mut self, date: NaiveDate) -> Self {
        self.date = Some(date);
        self
    }

    /// Uses the sequence of another tenant (subject to the tenancy policy).
    pub fn tenant(mut self, tenant_code: impl Into<String>) -> Self {
        self.tenant_code = Some(tenant_code.into());
        self
    }
}

/// An issued number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SequenceValue {
    /// The number, from 1 in each period.
    pub no: u64,
    /// The number formatted with the request's format.
    pub formatted: String,
    /// When it was issued.
    pub issued_at: DateTime<Utc>,
}

/// The counter's key, and the format checked, for one request on one day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CounterKey {
    pub pk: String,
    pub sk: String,
}

/// Validates `request` and computes its counter key for `tenant` on `date`.
pub(crate) fn counter_key(request: &SequenceRequest, tenant: &str, date: NaiveDate) -> Result<CounterKey> {
    validate_code("tenantCode", tenant)?;
    validate_code("typeCode", &request.type_code)?;
    if request.sub_codes.len() > MAX_SUB_CODES {
        return Err(Error::invalid(
            "subCodes",
            format!(
                "at most {MAX_SUB_CODES} sub-codes, got {}",
                request.sub_codes.len()
            ),
        ));
    }
    for code in &request.sub_codes {
        validate_code("subCodes", code)?;
    }
    if let Rotation::FiscalYearly { start_month } = request.rotation {
        if !(1..=12).contains(&start_month) {
            return Err(Error::invalid(
                "rotation",
                format!("fiscal year start month must be 1-12, got {start_month}"),
            ));
        }
    }
    // Reject a bad format before the counter moves: a number must never be burnt.
    render(&request.format, &FormatValues::new(request, tenant, date, 0))?;

    let mut sk = request.type_code.clone();
    for code in &request.sub_codes {
        sk.push(KEY_SEPARATOR);
        sk.push_str(code);
    }
    if let Some(period) = period(request.rotation, date) {
        sk.push(KEY_SEPARATOR);
        sk.push_str(&period);
    }
    Ok(CounterKey {
        pk: format!("{SEQUENCE_PK_PREFIX}{KEY_SEPARATOR}{tenant}"),
        sk,
    })
}

/// Formats number `no` of `request`.
pub(crate) fn format_number(
    request: &SequenceRequest,
    tenant: &str,
    date: NaiveDate,
    no: u64,
) -> Result<String> {
    render(&request.format, &FormatValues::new(request, tenant, date, no))
}

fn validate_code(what: &str, code: &str) -> Result<()> {
    if code.is_empty() {
        return Err(Error::invalid(what, "must not be empty"));
    }
    if code.contains(KEY_SEPARATOR) || code.contains(VERSION_SEPARATOR) {
        return Err(Error::invalid(
            what,
            format!("'{code}' must not contain '{KEY_SEPARATOR}' or '{VERSION_SEPARATOR}'"),
        ));
    }
    Ok(())
}

/// The fiscal year `date` falls in: the calendar year in which it started.
pub fn fiscal_year(date: NaiveDate, start_month: u32) -> i32 {
    if date.month() >= start_month {
        date.year()
    } else {
        date.year() - 1
    }
}

/// The period part of the counter key, `None` without rotation.
fn period(rotation: Rotation, date: NaiveDate) -> Option<String> {
    match rotation {
        Rotation::None => None,
        Rotation::Yearly => Some(format!("{:04}", date.year())),
        Rotation::Monthly => Some(format!("{:04}{:02}", date.year(), date.month())),
        Rotation::Daily => Some(format!("{:04}{:02}{:02}", date.year(), date.month(), date.day())),
        Rotation::FiscalYearly { start_month } => Some(format!("FY{:04}", fiscal_year(date, start_month))),
    }
}

struct FormatValues<'a> {
    request: &'a SequenceRequest,
    tenant: &'a str,
    date: NaiveDate,
    no: u64,
}

impl<'a> FormatValues<'a> {
    fn new(request: &'a SequenceRequest, tenant: &'a str, date: NaiveDate, no: u64) -> Self {
        Self {
            request,
            tenant,
            date,
            no,
        }
    }

    fn token(&self, token: &str, out: &mut String) -> Result<()> {
        use std::fmt::Write as _;
        let unknown = || Error::invalid("format", format!("unknown token '{{{token}}}'"));
        // Writing to a String cannot fail.
        let _ = match token {
            "no" => write!(out, "{}", self.no),
            "year" => write!(out, "{:04}", self.date.year()),
            "yy" => write!(out, "{:02}", self.date.year().rem_euclid(100)),
            "month" => write!(out, "{:02}", self.date.month()),
            "day" => write!(out, "{:02}", self.date.day()),
            "type" => write!(out, "{}", self.request.type_code),
            "tenant" => write!(out, "{}", self.tenant),
            "fiscal_year" => {
                let start = match self.request.rotation {
                    Rotation::FiscalYearly { start_month } => start_month,
                    _ => 4,
                };
                write!(out, "{}", fiscal_year(self.date, start))
            }
            _ => {
                if let Some(width) = token.strip_prefix("no:") {
                    let digits = width.strip_prefix('0').unwrap_or(width);
                    let width: usize = digits.parse().map_err(|_| unknown())?;
                    if width > 20 {
                        return Err(Error::invalid("format", "padding wider than 20 digits"));
                    }
                    write!(out, "{:0width$}", self.no)
                } else if let Some(n) = token.strip_prefix("code") {
                    let index: usize = n.parse().map_err(|_| unknown())?;
                    if !(1..=MAX_SUB_CODES).contains(&index) {
                        return Err(unknown());
                    }
                    let code = self.request.sub_codes.get(index - 1).ok_or_else(|| {
                        Error::invalid(
                            "format",
                            format!(
                                "'{{{token}}}' but only {} sub-codes",
                                self.request.sub_codes.len()
                            ),
                        )
                    })?;
                    write!(out, "{code}")
                } else {
                    return Err(unknown());
                }
            }
        };
        Ok(())
    }
}

fn render(format: &str, values: &FormatValues<'_>) -> Result<String> {
    let mut out = String::with_capacity(format.len() + 8);
    let mut rest = format;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            out.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            out.push('}');
            rest = after;
        } else if let Some(after) = tail.strip_prefix('{') {
            let end = after
                .find('}')
                .ok_or_else(|| Error::invalid("format", "unclosed '{'"))?;
            values.token(&after[..end], &mut out)?;
            rest = &after[end + 1..];
        } else {
            return Err(Error::invalid("format", "unmatched '}' (write '}}' for a brace)"));
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn formats_tokens() {
        let req = SequenceRequest::new("ORDER")
            .sub_codes(["TKY"])
            .format("ORD-{code1}-{yy}{month}{day}-{no:06} {{x}}");
        let s = format_number(&req, "shop-a", day(2024, 1, 5), 42).unwrap();
        assert_eq!(s, "ORD-TKY-240105-000042 {x}");
        let plain = SequenceRequest::new("ORDER").format("ORD-{no:6}");
        assert_eq!(
            format_number(&plain, "t", day(2024, 1, 5), 1).unwrap(),
            "ORD-000001"
        );
    }

    #[test]
    fn bad_formats_are_rejected() {
        for format in ["{nope}", "{no", "x}", "{code1}", "{code6}", "{no:abc}"] {
            let req = SequenceRequest::new("ORDER").format(format);
            assert!(
                matches!(
                    counter_key(&req, "t", day(2024, 1, 1)),
                    Err(Error::InvalidInput { .. })
                ),
                "{format}"
            );
        }
    }

    #[test]
    fn fiscal_year_starts_in_its_month() {
        assert_eq!(fiscal_year(day(2024, 3, 31), 4), 2023);
        assert_eq!(fiscal_year(day(2024, 4, 1), 4), 2024);
        assert_eq!(fiscal_year(day(2024, 1, 1), 1), 2024);
    }

    #[test]
    fn counter_keys_per_rotation() {
        let d = day(2024, 3, 9);
        let key = |r| {
            counter_key(&SequenceRequest::new("ORDER").rotation(r), "a", d)
                .unwrap()
                .sk
        };
        assert_eq!(key(Rotation::None), "ORDER");
        assert_eq!(key(Rotation::Yearly), "ORDER#2024");
        assert_eq!(key(Rotation::Monthly), "ORDER#202403");
        assert_eq!(key(Rotation::Daily), "ORDER#20240309");
        assert_eq!(key(Rotation::FiscalYearly { start_month: 4 }), "ORDER#FY2023");
        let sub = counter_key(&SequenceRequest::new("ORDER").sub_codes(["A", "B"]), "a", d).unwrap();
        assert_eq!((sub.pk.as_str(), sub.sk.as_str()), ("SEQ#a", "ORDER#A#B"));
    }

    #[test]
    fn invalid_codes_are_rejected() {
        let d = day(2024, 3, 9);
        assert!(counter_key(&SequenceRequest::new(""), "a", d).is_err());
        assert!(counter_key(&SequenceRequest::new("A#B"), "a", d).is_err());
        assert!(counter_key(
            &SequenceRequest::new("A").sub_codes(["1", "2", "3", "4", "5", "6"]),
            "a",
            d
        )
        .is_err());
        assert!(counter_key(
            &SequenceRequest::new("A").rotation(Rotation::FiscalYearly { start_month: 13 }),
            "a",
            d
        )
        .is_err());
    }
}
