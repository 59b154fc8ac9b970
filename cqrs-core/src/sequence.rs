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

/// The counter a number is drawn from, in the reference framework's layout,
/// so that both frameworks draw from the same counter: pk `SEQ#{tenant}`, sk
/// `{typeCode}[#code1..#code5]#{period}` where the period is `none` without
/// rotation, else `YYYY`, `YYYYMM`, `YYYYMMDD`, or the year a fiscal year
/// starts in; the count in the attribute `seq`, with the descriptive fields
/// the reference framework writes beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    /// `SEQ#{tenant}`.
    pub pk: String,
    /// `{typeCode}[#code1..#code5]#{period or none}`.
    pub sk: String,
    /// Where this framework counted this sequence before it shared the
    /// reference framework's counters (sk `{typeCode}[#codes]`, or with
    /// `#{period}`, `FY{year}` for fiscal years, attribute `counter`): the
    /// first number drawn at `sk` when it has no count yet continues from
    /// the count there, so migrated counters keep counting. Often `sk`
    /// itself.
    pub legacy_sk: String,
    /// The sequence's type code (stored as `type`).
    pub type_code: String,
    /// The rotation's name as the reference framework stores it (`name`):
    /// `none`, `yearly`, `monthly`, `daily` or `fiscal_yearly`.
    pub rotation: &'static str,
    /// The tenant (`tenantCode`).
    pub tenant_code: String,
    /// Who draws the number (`createdBy` on the first draw, `updatedBy`).
    pub user: String,
    /// From which address (`createdIp`, `updatedIp`), if known.
    pub source_ip: Option<String>,
    /// The request drawing it (`requestId`).
    pub request_id: String,
    /// When (`createdAt` on the first draw, `updatedAt`).
    pub at: DateTime<Utc>,
}

/// Validates `request` and computes its counter's key for `tenant` on
/// `date` (the other fields of the [`Counter`] are the caller's).
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

    let mut codes = request.type_code.clone();
    for code in &request.sub_codes {
        codes.push(KEY_SEPARATOR);
        codes.push_str(code);
    }
    let sk = format!("{codes}{KEY_SEPARATOR}{}", period(request.rotation, date));
    let legacy_sk = match legacy_period(request.rotation, date) {
        Some(period) => format!("{codes}{KEY_SEPARATOR}{period}"),
        None => codes,
    };
    Ok(CounterKey {
        pk: format!("{SEQUENCE_PK_PREFIX}{KEY_SEPARATOR}{tenant}"),
        sk,
        legacy_sk,
    })
}

impl Counter {
    /// The counter at `pk`/`sk` with nothing more to say: no earlier
    /// location (`legacy_sk` is `sk`), type code the first part of `sk`, no
    /// rotation, the tenant of `pk`, user `system`, now. For tests of a
    /// backend; the engine fills every field from the request.
    pub fn new(pk: impl Into<String>, sk: impl Into<String>) -> Self {
        let (pk, sk) = (pk.into(), sk.into());
        Counter {
            type_code: sk.split(KEY_SEPARATOR).next().unwrap_or_default().to_owned(),
            tenant_code: crate::keys::tenant_of_pk(&pk).unwrap_or_default().to_owned(),
            legacy_sk: sk.clone(),
            pk,
            sk,
            rotation: Rotation::None.name(),
            user: "system".to_owned(),
            source_ip: None,
            request_id: String::new(),
            at: crate::clock::now(),
        }
    }
}

/// The keys of a [`Counter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CounterKey {
    pub pk: String,
    pub sk: String,
    pub legacy_sk: String,
}

impl Rotation {
    /// Its name in the reference framework's counter rows.
    pub fn name(self) -> &'static str {
        match self {
            Rotation::None => "none",
            Rotation::Yearly => "yearly",
            Rotation::Monthly => "monthly",
            Rotation::Daily => "daily",
            Rotation::FiscalYearly { .. } => "fiscal_yearly",
        }
    }
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

/// The period part of the counter's sort key, as the reference framework
/// writes it: `none` without rotation, the fiscal year as the year it
/// starts in.
fn period(rotation: Rotation, date: NaiveDate) -> String {
    match rotation {
        Rotation::None => "none".to_owned(),
        Rotation::Yearly => format!("{:04}", date.year()),
        Rotation::Monthly => format!("{:04}{:02}", date.year(), date.month()),
        Rotation::Daily => format!("{:04}{:02}{:02}", date.year(), date.month(), date.day()),
        Rotation::FiscalYearly { start_month } => format!("{:04}", fiscal_year(date, start_month)),
    }
}

/// The period part of the sort key this framework counted at before it
/// shared the reference framework's layout: none without rotation, `FY`
/// before a fiscal year.
fn legacy_period(rotation: Rotation, date: NaiveDate) -> Option<String> {
    match rotation {
        Rotation::None => None,
        Rotation::FiscalYearly { start_month } => Some(format!("FY{:04}", fiscal_year(date, start_month))),
        other => Some(period(other, date)),
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
        // The reference framework's layout.
        assert_eq!(key(Rotation::None), "ORDER#none");
        assert_eq!(key(Rotation::Yearly), "ORDER#2024");
        assert_eq!(key(Rotation::Monthly), "ORDER#202403");
        assert_eq!(key(Rotation::Daily), "ORDER#20240309");
        assert_eq!(key(Rotation::FiscalYearly { start_month: 4 }), "ORDER#2023");
        let sub = counter_key(&SequenceRequest::new("ORDER").sub_codes(["A", "B"]), "a", d).unwrap();
        assert_eq!((sub.pk.as_str(), sub.sk.as_str()), ("SEQ#a", "ORDER#A#B#none"));
        // Where this framework counted before.
        let legacy = |r| {
            counter_key(&SequenceRequest::new("ORDER").rotation(r), "a", d)
                .unwrap()
                .legacy_sk
        };
        assert_eq!(legacy(Rotation::None), "ORDER");
        assert_eq!(legacy(Rotation::Monthly), "ORDER#202403");
        assert_eq!(legacy(Rotation::FiscalYearly { start_month: 4 }), "ORDER#FY2023");
        assert_eq!(sub.legacy_sk, "ORDER#A#B");
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
