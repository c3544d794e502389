//! `whizbang sync` and `whizbang rebuild`: the tool has no perspective code,
//! so it asks a running service to do the work. It writes a request row
//! (`wh_operator_requests`) and NOTIFYs the services; one that runs the
//! perspective claims it and reports progress in the row, which the tool
//! shows as a progress bar (plain text redrawn with `\r`, or JSON lines with
//! `--json`) until the request is done. It fails, with a non-zero exit
//! code, when the service reports a failure, and when no service claims the
//! request within the timeout (the request is then withdrawn).

use serde_json::json;
use sqlx::PgPool;
use std::io::Write as _;
use std::time::{Duration, Instant};
use uuid::Uuid;
use whizbang_postgres::REQUESTS_CHANNEL;

/// How often the tool reads the request's row.
const POLL: Duration = Duration::from_millis(200);

/// A request row as the tool polls it.
type Row = (String, i64, i64, f64, Option<i64>, Option<String>);

/// Asks for `kind` (`sync` or `rebuild`) of `perspective` and follows it to
/// the end. `Err`: the sentence to print.
pub(crate) async fn request(
    pool: &PgPool,
    kind: &str,
    perspective: &str,
    pickup: Duration,
    as_json: bool,
) -> Result<(), String> {
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await.map_err(db)?;
    sqlx::query(
        "insert into wh_operator_requests (request_id, kind, perspective) values ($1, $2, $3)",
    )
    .bind(id)
    .bind(kind)
    .bind(perspective)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    sqlx::query("select pg_notify(wh_channel($1), $2)")
        .bind(REQUESTS_CHANNEL)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)?;
    let asked = Instant::now();
    let mut last: Option<(String, i64, i64)> = None;
    loop {
        let (status, done, total, rate, eta_ms, error): Row = sqlx::query_as(
            "select status, done, total, rate, eta_ms, error
               from wh_operator_requests where request_id = $1",
        )
        .bind(id)
        .fetch_one(pool)
        .await
        .map_err(db)?;
        let changed = last.as_ref() != Some(&(status.clone(), done, total));
        if changed {
            show(
                kind,
                perspective,
                id,
                &status,
                done,
                total,
                rate,
                eta_ms,
                as_json,
            );
            last = Some((status.clone(), done, total));
        }
        match status.as_str() {
            "done" => {
                if !as_json {
                    println!();
                }
                return Ok(());
            }
            "failed" => {
                if !as_json {
                    println!();
                }
                return Err(format!(
                    "the {kind} of perspective `{perspective}` failed in the service: {}",
                    error.unwrap_or_default()
                ));
            }
            "requested" if asked.elapsed() >= pickup => {
                let withdrawn = sqlx::query(
                    "delete from wh_operator_requests where request_id = $1 and status = 'requested'",
                )
                .bind(id)
                .execute(pool)
                .await
                .map_err(db)?
                .rows_affected();
                if withdrawn == 1 {
                    if !as_json {
                        println!();
                    }
                    return Err(format!(
                        "no running service picked up the {kind} of perspective `{perspective}` \
                         within {}s, so the request was withdrawn and nothing changed; start a \
                         service that runs `{perspective}` with its runner enabled (or check \
                         the name with `whizbang status`), then ask again",
                        pickup.as_secs()
                    ));
                }
            }
            _ => {}
        }
        tokio::time::sleep(POLL).await;
    }
}

fn db(e: sqlx::Error) -> String {
    format!("a database statement failed: {e}")
}

/// One progress line: redrawn in place, or a JSON line.
#[allow(clippy::too_many_arguments)] // the columns of one row, named at the call
fn show(
    kind: &str,
    perspective: &str,
    id: Uuid,
    status: &str,
    done: i64,
    total: i64,
    rate: f64,
    eta_ms: Option<i64>,
    as_json: bool,
) {
    if as_json {
        println!(
            "{}",
            json!({
                "request_id": id, "kind": kind, "perspective": perspective, "status": status,
                "done": done, "total": total, "rate": rate, "eta_ms": eta_ms,
            })
        );
        return;
    }
    const WIDTH: usize = 30;
    let fraction = if total > 0 {
        (done as f64 / total as f64).clamp(0.0, 1.0)
    } else if status == "done" {
        1.0
    } else {
        0.0
    };
    let filled = (fraction * WIDTH as f64).round() as usize;
    let eta = match eta_ms {
        Some(ms) if status == "running" => format!(", {:.0}s left", ms as f64 / 1000.0),
        _ => String::new(),
    };
    print!(
        "\r{kind} {perspective} [{}{}] {:5.1}% {done}/{total} events, {rate:.0} events/s{eta} ({status})   ",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        fraction * 100.0,
    );
    let _ = std::io::stdout().flush();
}
