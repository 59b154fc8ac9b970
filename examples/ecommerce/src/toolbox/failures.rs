//! `ecommerce failures list|show|reprocess`.

use std::io::IsTerminal as _;

use cqrs_core::ops::{
    self, FailureDetail, Mode, Plan, Progress, ReprocessOutcome, ReprocessSummary, ShowOptions,
};
use cqrs_core::{Engine, FailedCommand};
use serde_json::json;

use super::args::{FailureArgs, FilterArgs, Target};
use super::output::{age_of, print_json, table};

/// Runs a `failures` subcommand.
pub async fn failures(engine: &Engine, args: FailureArgs) -> Result<(), String> {
    match args {
        FailureArgs::List { filter, json } => list(engine, &filter, json).await,
        FailureArgs::Show {
            target,
            attributes,
            json,
        } => show(engine, &target, attributes, json).await,
        FailureArgs::Reprocess {
            target,
            all,
            filter,
            dry_run,
            json,
        } => {
            let mode = if dry_run { Mode::DryRun } else { Mode::Run };
            match (all, target.target()) {
                (true, _) => reprocess_all(engine, &filter, mode, json).await,
                (false, Some(target)) if filter.is_empty() => {
                    reprocess_one(engine, &target, mode, json).await
                }
                (false, Some(_)) => Err("--tenant, --handler and --older-than go with --all".to_owned()),
                (false, None) => Err("give the command (PK SK VERSION) or --all".to_owned()),
            }
        }
    }
}

async fn list(engine: &Engine, filter: &FilterArgs, json: bool) -> Result<(), String> {
    let failed = ops::list_failures(engine, &filter.filter())
        .await
        .map_err(|e| format!("cannot list the failed commands: {e}"))?;
    if json {
        return print_json(&json!({ "count": failed.len(), "failures": failed }));
    }
    if failed.is_empty() {
        println!("no failed command");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = failed.iter().map(list_row).collect();
    println!(
        "{}",
        table(
            &[
                "PK",
                "SK",
                "VERSION",
                "TENANT",
                "FAILED",
                "HANDLERS (ATTEMPTS)",
                "ERROR"
            ],
            &rows
        )
    );
    println!(
        "\n{} failed command(s). Show one: ecommerce failures show PK SK VERSION",
        failed.len()
    );
    Ok(())
}

fn list_row(failed: &FailedCommand) -> Vec<String> {
    let handlers: Vec<String> = failed
        .failures
        .iter()
        .map(|f| format!("{} ({})", f.handler, f.attempts))
        .collect();
    let error = failed
        .failures
        .first()
        .map(|f| one_line(&f.error, 60))
        .unwrap_or_default();
    vec![
        failed.pk.clone(),
        failed.sk.clone(),
        failed.version.to_string(),
        failed.tenant_code.clone(),
        format!("{} ago", age_of(failed.failed_at)),
        handlers.join(", "),
        error,
    ]
}

/// `text` on one line, cut to `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= max {
        return line;
    }
    let cut: String = line.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

async fn show(engine: &Engine, target: &Target, attributes: bool, json: bool) -> Result<(), String> {
    let options = if attributes {
        ShowOptions::default().with_attributes()
    } else {
        ShowOptions::default()
    };
    let detail = ops::show(engine, &target.key(), target.version, options)
        .await
        .map_err(|e| format!("cannot show {}: {e}", describe(target)))?;
    if json {
        return print_json(&detail);
    }
    print_detail(&detail);
    Ok(())
}

fn print_detail(detail: &FailureDetail) {
    let c = &detail.command;
    let mut rows = vec![
        ("command", format!("{} {} {}", c.pk, c.sk, c.version)),
        ("type", c.entity_type.clone()),
        ("tenant", c.tenant_code.clone()),
        ("status", c.status.as_str().to_owned()),
        (
            "published",
            format!("{} ({} ago)", c.created_at.to_rfc3339(), age_of(c.created_at)),
        ),
        ("request", c.request_id.clone()),
        ("entity at", format!("version {}", detail.applied_version)),
    ];
    if let Some(source) = &c.source {
        rows.push(("source", source.clone()));
    }
    if let Some(failure) = &detail.failure {
        rows.push((
            "failed",
            format!(
                "{} ({} ago)",
                failure.failed_at.to_rfc3339(),
                age_of(failure.failed_at)
            ),
        ));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (name, value) in rows {
        println!("{name:<width$}  {value}");
    }
    match &detail.failure {
        Some(failure) => {
            println!();
            let rows: Vec<Vec<String>> = failure
                .failures
                .iter()
                .map(|f| vec![f.handler.clone(), f.attempts.to_string(), one_line(&f.error, 200)])
                .collect();
            println!("{}", table(&["HANDLER", "ATTEMPTS", "LAST ERROR"], &rows));
        }
        None => println!("\nno failure record: the command is not failed"),
    }
    if let Some(attributes) = &c.attributes {
        println!("\nattributes: {attributes}");
    }
}

async fn reprocess_one(engine: &Engine, target: &Target, mode: Mode, json: bool) -> Result<(), String> {
    let outcome = ops::reprocess(engine, &target.key(), target.version, mode)
        .await
        .map_err(|e| format!("cannot reprocess {}: {e}", describe(target)))?;
    if json {
        let mut document = serde_json::to_value(&outcome).map_err(|e| e.to_string())?;
        if let Some(fields) = document.as_object_mut() {
            fields.insert("pk".into(), json!(target.pk));
            fields.insert("sk".into(), json!(target.sk));
            fields.insert("version".into(), json!(target.version));
        }
        print_json(&document)?;
    } else {
        println!("{}: {}", describe(target), outcome_text(&outcome));
    }
    match outcome {
        ReprocessOutcome::FailedAgain { .. } => Err(format!("{} failed again", describe(target))),
        _ => Ok(()),
    }
}

fn describe(target: &Target) -> String {
    format!("{} {} {}", target.pk, target.sk, target.version)
}

fn outcome_text(outcome: &ReprocessOutcome) -> String {
    match outcome {
        ReprocessOutcome::Finished { status } => format!("reprocessed, now {}", status.as_str()),
        ReprocessOutcome::FailedAgain { failures } => {
            let failed: Vec<String> = failures
                .iter()
                .map(|f| {
                    format!(
                        "{} ({} attempts): {}",
                        f.handler,
                        f.attempts,
                        one_line(&f.error, 120)
                    )
                })
                .collect();
            format!("failed again: {}", failed.join("; "))
        }
        ReprocessOutcome::AlreadyDone { status } => {
            format!("already done ({}); nothing run", status.as_str())
        }
        ReprocessOutcome::NotFailed { status } => {
            format!(
                "not failed ({}): the pipeline settles it; nothing run",
                status.as_str()
            )
        }
        ReprocessOutcome::WouldReprocess { plan } => match plan {
            Plan::Apply { from, to } => {
                format!("dry run: would apply versions {from} to {to} and run their handlers")
            }
            Plan::Rerun { handlers } => format!("dry run: would run again {}", handlers.join(", ")),
            _ => "dry run".to_owned(),
        },
        _ => format!("{outcome:?}"),
    }
}

async fn reprocess_all(engine: &Engine, filter: &FilterArgs, mode: Mode, json: bool) -> Result<(), String> {
    let mut progress = ProgressReport::new(mode);
    let summary = ops::reprocess_all(engine, &filter.filter(), mode, |p| progress.show(p))
        .await
        .map_err(|e| format!("cannot list the failed commands: {e}"))?;
    progress.finish();
    if json {
        print_json(&summary)?;
    } else {
        print_summary(&summary);
    }
    match (summary.failed_again, summary.errors) {
        (0, 0) => Ok(()),
        (again, errors) => Err(format!(
            "{again} command(s) failed again and {errors} could not be reprocessed"
        )),
    }
}

fn print_summary(summary: &ReprocessSummary) {
    let rows: Vec<Vec<String>> = summary
        .results
        .iter()
        .map(|r| {
            let outcome = match &r.outcome {
                Ok(outcome) => outcome_text(outcome),
                Err(error) => format!("error: {}", one_line(error, 120)),
            };
            vec![r.pk.clone(), r.sk.clone(), r.version.to_string(), outcome]
        })
        .collect();
    if !rows.is_empty() {
        println!("{}\n", table(&["PK", "SK", "VERSION", "OUTCOME"], &rows));
    }
    if summary.dry_run {
        println!(
            "dry run: {} matched, {} would be reprocessed, {} already done, {} errors; nothing written",
            summary.matched, summary.would_reprocess, summary.already_done, summary.errors
        );
    } else {
        println!(
            "{} matched: {} finished, {} failed again, {} already done, {} errors",
            summary.matched, summary.finished, summary.failed_again, summary.already_done, summary.errors
        );
    }
}

/// A progress bar on a terminal, a line per tenth otherwise (stderr).
struct ProgressReport {
    bar: Option<indicatif::ProgressBar>,
    last_tenth: Option<u64>,
    verb: &'static str,
}

impl ProgressReport {
    fn new(mode: Mode) -> Self {
        let verb = match mode {
            Mode::Run => "reprocessing",
            Mode::DryRun => "checking",
        };
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} commands ({eta} left)")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_message(verb);
            bar
        });
        Self {
            bar,
            last_tenth: None,
            verb,
        }
    }

    fn show(&mut self, p: Progress) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(p.total);
                bar.set_position(p.done);
            }
            None => {
                let tenth = (p.done * 10).checked_div(p.total).unwrap_or(10).min(10);
                if self.last_tenth != Some(tenth) {
                    self.last_tenth = Some(tenth);
                    eprintln!("{}: {}/{} commands", self.verb, p.done, p.total);
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
