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
