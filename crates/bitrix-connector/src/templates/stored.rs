//! `bitrix_templates`: the account's templates as the last sync listed them.

use serde_json::Value;
use switchboard_core::{Db, db::now_ms, on_pool};

use super::Approved;

type Row = (String, String, String, String, String);

fn approved((name, language, category, status, components): Row) -> Approved {
    Approved {
        name,
        language,
        category,
        status,
        components: serde_json::from_str(&components).unwrap_or(Value::Null),
    }
}

/// Replaces the stored list with `templates` in one transaction: a template deleted at Meta
/// goes, and a reader never sees half a list.
pub async fn replace_all(db: &Db, templates: &[Approved]) -> Result<(), sqlx::Error> {
    let now = now_ms();
    on_pool!(db, |p| {
        let mut tx = p.begin().await?;
        sqlx::query("DELETE FROM bitrix_templates")
            .execute(&mut *tx)
            .await?;
        for t in templates {
            sqlx::query(
                "INSERT INTO bitrix_templates (name, language, category, status, components, synced_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (name, language) DO UPDATE SET category = excluded.category,
                   status = excluded.status, components = excluded.components,
                   synced_at = excluded.synced_at",
            )
            .bind(&t.name)
            .bind(&t.language)
            .bind(&t.category)
            .bind(&t.status)
            .bind(t.components.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    })
}

/// Every stored template, by name then language.
pub async fn all(db: &Db) -> Result<Vec<Approved>, sqlx::Error> {
    let rows: Vec<Row> = on_pool!(db, |p| sqlx::query_as(
        "SELECT name, language, category, status, components FROM bitrix_templates
         ORDER BY name, language"
    )
    .fetch_all(p)
    .await)?;
    Ok(rows.into_iter().map(approved).collect())
}

/// The languages of the template `name` (any case), by language.
pub async fn named(db: &Db, name: &str) -> Result<Vec<Approved>, sqlx::Error> {
    let rows: Vec<Row> = on_pool!(db, |p| sqlx::query_as(
        "SELECT name, language, category, status, components FROM bitrix_templates
         WHERE LOWER(name) = LOWER($1) ORDER BY language"
    )
    .bind(name)
    .fetch_all(p)
    .await)?;
    Ok(rows.into_iter().map(approved).collect())
}

/// When the list was last synced (Unix ms); `None` before the first sync.
pub async fn last_synced(db: &Db) -> Result<Option<i64>, sqlx::Error> {
    let (at,): (Option<i64>,) = on_pool!(db, |p| sqlx::query_as(
        "SELECT MAX(synced_at) FROM bitrix_templates"
    )
    .fetch_one(p)
    .await)?;
    Ok(at)
}

/// What an `Idempotency-Key` already stands for.
pub enum Claim {
    /// New: this call sends, then [`finish_claim`] or [`drop_claim`].
    Mine,
    /// Another call with the key is still sending.
    Busy,
    /// Sent before: its answer (JSON).
    Done(String),
}

/// Far beyond a send's time (Meta's answer, a database write).
const STALE_CLAIM_MS: i64 = 5 * 60 * 1000;

/// Claims `key` for one write-first send.
pub async fn claim(db: &Db, key: &str) -> Result<Claim, sqlx::Error> {
    let inserted = on_pool!(db, |p| sqlx::query(
        "INSERT INTO bitrix_first_sends (idempotency_key, created_at) VALUES ($1, $2)
         ON CONFLICT (idempotency_key) DO NOTHING"
    )
    .bind(key)
    .bind(now_ms())
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    if inserted == 1 {
        return Ok(Claim::Mine);
    }
    let (answer,): (Option<String>,) = on_pool!(db, |p| sqlx::query_as(
        "SELECT answer FROM bitrix_first_sends WHERE idempotency_key = $1"
    )
    .bind(key)
    .fetch_one(p)
    .await)?;
    if let Some(a) = answer {
        return Ok(Claim::Done(a));
    }
    // A claim far older than any send takes was left by a process that died mid-call: taken
    // over, so the key is not stuck.
    let now = now_ms();
    let taken = on_pool!(db, |p| sqlx::query(
        "UPDATE bitrix_first_sends SET created_at = $1
         WHERE idempotency_key = $2 AND answer IS NULL AND created_at < $3"
    )
    .bind(now)
    .bind(key)
    .bind(now - STALE_CLAIM_MS)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(if taken == 1 { Claim::Mine } else { Claim::Busy })
}

/// The key's send went out: later calls with it get `answer`.
pub async fn finish_claim(
    db: &Db,
    key: &str,
    wamid: &str,
    answer: &str,
) -> Result<(), sqlx::Error> {
    on_pool!(db, |p| sqlx::query(
        "UPDATE bitrix_first_sends SET wamid = $1, answer = $2 WHERE idempotency_key = $3"
    )
    .bind(wamid)
    .bind(answer)
    .bind(key)
    .execute(p)
    .await
    .map(drop))
}

/// The key's send did not go out: a later call with it may try again.
pub async fn drop_claim(db: &Db, key: &str) -> Result<(), sqlx::Error> {
    on_pool!(db, |p| sqlx::query(
        "DELETE FROM bitrix_first_sends WHERE idempotency_key = $1 AND answer IS NULL"
    )
    .bind(key)
    .execute(p)
    .await
    .map(drop))
}
