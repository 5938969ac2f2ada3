//! Channels: each WhatsApp business number (Meta's `phone_number_id`) bound to its own Open
//! Channel line. They are listed as `[[bitrix.channels]]` in the config file; without that
//! table `meta.phone_number_id` + `bitrix.line_id` are the one channel, so a single-number
//! install needs no change. A customer message goes to the line of the number it was sent to,
//! an operator reply goes out from the number of the line it was written in, and a number
//! without a channel is never relayed into a guessed line.
//!
//! The stored per-channel state (the customer's order, the 24-hour window) is keyed by the
//! number. Rows written before channels existed carry the empty key; the first time a process
//! resolves its channels they are handed to the channel of the single-number settings, so an
//! existing customer keeps their chat and window.

use serde::Deserialize;
use switchboard_core::{
    Db,
    config::{Row, Rows, parse_rows},
    db::now_ms,
    on_pool,
};

use crate::{
    Error,
    catalogue::{BITRIX_LINE_ID, CHANNELS, META_PHONE_NUMBER_ID},
    relay::Relay,
    setting_values::optional,
};

/// The longest `name` shown on the pages.
const MAX_NAME_CHARS: usize = 60;

/// A row of `[[bitrix.channels]]`. Ids are read as TOML values so that a quoted or a bare
/// number both work and anything else is refused with the entry's number.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelRow {
    pub phone_number_id: toml::Value,
    pub line_id: toml::Value,
    #[serde(default)]
    pub name: Option<String>,
}

/// A positive whole number written as a TOML integer or a string of digits.
fn numeric_id(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::Integer(n) if *n > 0 => Some(n.to_string()),
        toml::Value::String(s)
            if !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Some(s.clone())
        }
        _ => None,
    }
}

impl Row for ChannelRow {
    fn check(&self) -> Result<(), String> {
        if numeric_id(&self.phone_number_id).is_none() {
            return Err(format!(
                "phone_number_id {} must be Meta's numeric id of the business number (WhatsApp Manager → Phone numbers), e.g. \"106540352242922\"",
                self.phone_number_id
            ));
        }
        if numeric_id(&self.line_id).is_none() {
            return Err(format!(
                "line_id {} must be the Open Channel's numeric id (Contact Center → the line's settings), e.g. 3",
                self.line_id
            ));
        }
        if let Some(name) = &self.name
            && (name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control))
        {
            return Err(format!(
                "name must be one line of at most {MAX_NAME_CHARS} characters"
            ));
        }
        Ok(())
    }
}

impl ChannelRow {
    fn channel(&self) -> Channel {
        Channel {
            phone_number_id: numeric_id(&self.phone_number_id).unwrap_or_default(),
            line: numeric_id(&self.line_id).unwrap_or_default(),
            name: self.name.clone().filter(|n| !n.trim().is_empty()),
        }
    }
}

/// [`CHANNELS`]'s parser: the rows, and no number or line twice, since either would make a
/// message's destination a guess.
pub fn parse_channels(value: toml::Value) -> Result<Rows, String> {
    let rows = parse_rows::<ChannelRow>(value)?;
    let channels: Vec<Channel> = rows
        .get::<ChannelRow>()
        .iter()
        .map(ChannelRow::channel)
        .collect();
    for (i, c) in channels.iter().enumerate() {
        for (j, o) in channels[..i].iter().enumerate() {
            if o.phone_number_id == c.phone_number_id {
                return Err(format!(
                    "entries {} and {} both have phone_number_id \"{}\": a number belongs to one line",
                    j + 1,
                    i + 1,
                    c.phone_number_id
                ));
            }
            if o.line == c.line {
                return Err(format!(
                    "entries {} and {} both have line_id {}: a line belongs to one number",
                    j + 1,
                    i + 1,
                    c.line
                ));
            }
        }
    }
    Ok(rows)
}

/// One WhatsApp number and the Open Channel line it relays into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub phone_number_id: String,
    pub line: String,
    pub name: Option<String>,
}

impl Channel {
    /// How the pages and the CLI name it: `Support (number 1065…, line 3)`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("{n} (number {}, line {})", self.phone_number_id, self.line),
            None => format!("number {} → line {}", self.phone_number_id, self.line),
        }
    }
}

/// Whether the config file lists channels; otherwise the single-number settings are the one.
pub fn listed(relay: &Relay) -> bool {
    !relay.core.config.rows::<ChannelRow>(CHANNELS).is_empty()
}

/// Every channel, in the file's order. Without `[[bitrix.channels]]`, the one formed by
/// `meta.phone_number_id` and `bitrix.line_id`, or none while either is unset.
pub async fn all(relay: &Relay) -> Result<Vec<Channel>, Error> {
    let rows: &[ChannelRow] = relay.core.config.rows(CHANNELS);
    let channels = if rows.is_empty() {
        let phone = optional(&relay.core, META_PHONE_NUMBER_ID).await?;
        let line = optional(&relay.core, BITRIX_LINE_ID).await?;
        match (phone, line) {
            (Some(phone_number_id), Some(line)) => vec![Channel {
                phone_number_id: phone_number_id.trim().to_string(),
                line: line.trim().to_string(),
                name: None,
            }],
            _ => Vec::new(),
        }
    } else {
        rows.iter().map(ChannelRow::channel).collect()
    };
    adopt_once(relay, &channels).await?;
    Ok(channels)
}

/// The channels messages are routed by. A single-number install can't route before both of
/// its settings are there: the error names the missing one rather than call every number
/// unknown.
pub async fn routing(relay: &Relay) -> Result<Vec<Channel>, Error> {
    if !listed(relay) {
        crate::setting_values::required(&relay.core, META_PHONE_NUMBER_ID).await?;
        crate::setting_values::required(&relay.core, BITRIX_LINE_ID).await?;
    }
    all(relay).await
}

/// The channel of the number a message was sent to; `None` for a number without one.
pub async fn for_number(relay: &Relay, phone_number_id: &str) -> Result<Option<Channel>, Error> {
    Ok(routing(relay)
        .await?
        .into_iter()
        .find(|c| c.phone_number_id == phone_number_id))
}

/// The channel of an Open Channel line; `None` for a line without one.
pub async fn for_line(relay: &Relay, line: &str) -> Result<Option<Channel>, Error> {
    let line = line.trim();
    Ok(routing(relay).await?.into_iter().find(|c| c.line == line))
}

/// The channel of an operator's reply: its event's line, or for a reply queued before events
/// were read for their line, the single-number channel.
pub async fn for_reply(relay: &Relay, line: Option<&str>) -> Result<Option<Channel>, Error> {
    match line {
        Some(line) => for_line(relay, line).await,
        None => v1(relay).await.map(Some),
    }
}

/// The channel that work queued before channels existed belongs to: the one of the
/// single-number settings (by number, else by line), or the only one.
pub async fn v1(relay: &Relay) -> Result<Channel, Error> {
    let channels = all(relay).await?;
    if let Some(c) = v1_among(relay, &channels).await? {
        return Ok(c);
    }
    // Name the setting that would make it known.
    crate::setting_values::required(&relay.core, META_PHONE_NUMBER_ID).await?;
    crate::setting_values::required(&relay.core, BITRIX_LINE_ID).await?;
    Err(Error::Internal(
        "meta.phone_number_id and bitrix.line_id name no channel of [[bitrix.channels]]".into(),
    ))
}

async fn v1_among(relay: &Relay, channels: &[Channel]) -> Result<Option<Channel>, Error> {
    let phone = optional(&relay.core, META_PHONE_NUMBER_ID).await?;
    let line = optional(&relay.core, BITRIX_LINE_ID).await?;
    let by_number = channels
        .iter()
        .find(|c| phone.as_deref().map(str::trim) == Some(c.phone_number_id.as_str()));
    let by_line = channels
        .iter()
        .find(|c| line.as_deref().map(str::trim) == Some(c.line.as_str()));
    Ok(by_number
        .or(by_line)
        .or(match channels {
            [only] => Some(only),
            _ => None,
        })
        .cloned())
}

/// Hands rows stored before channels existed to the v1 channel, once per process (and
/// harmlessly again by a second process: nothing writes the empty key any more).
async fn adopt_once(relay: &Relay, channels: &[Channel]) -> Result<(), Error> {
    if relay.adopted.load(std::sync::atomic::Ordering::Acquire) {
        return Ok(());
    }
    let Some(owner) = v1_among(relay, channels).await? else {
        return Ok(());
    };
    adopt(&relay.core.db, &owner.phone_number_id).await?;
    relay
        .adopted
        .store(true, std::sync::atomic::Ordering::Release);
    Ok(())
}

/// Moves the empty-key rows to `phone_number_id`; a window already kept under it keeps the
/// later of the two times.
pub async fn adopt(db: &Db, phone_number_id: &str) -> Result<(), sqlx::Error> {
    on_pool!(db, |p| {
        sqlx::query(
        "INSERT INTO bitrix_windows (channel, wa_id, last_inbound_at, updated_at)
         SELECT $1, wa_id, last_inbound_at, $2 FROM bitrix_windows WHERE channel = ''
         ON CONFLICT (channel, wa_id) DO UPDATE SET
           last_inbound_at = CASE WHEN excluded.last_inbound_at > bitrix_windows.last_inbound_at
                                  THEN excluded.last_inbound_at ELSE bitrix_windows.last_inbound_at END"
    )
    .bind(phone_number_id)
    .bind(now_ms())
    .execute(p)
    .await
    .map(|r| r.rows_affected())
    })?;
    on_pool!(db, |p| sqlx::query(
        "DELETE FROM bitrix_windows WHERE channel = ''"
    )
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    on_pool!(db, |p| sqlx::query(
        "UPDATE bitrix_inbound SET channel = $1 WHERE channel = ''"
    )
    .bind(phone_number_id)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// The window `/` counts traffic over.
const TRAFFIC_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// One line per channel for `/`: messages in and replies out over the last 24 hours. `/` is
/// public, so a channel is named by its `name` or its line, never by its number.
pub async fn traffic(relay: &Relay) -> Vec<String> {
    let Ok(channels) = all(relay).await else {
        return Vec::new();
    };
    let Ok((inbound, outbound)) =
        crate::store::traffic_since(&relay.core.db, now_ms() - TRAFFIC_WINDOW_MS).await
    else {
        return Vec::new();
    };
    let count = |rows: &[(String, i64)], number: &str| {
        rows.iter()
            .find(|(c, _)| c == number)
            .map_or(0, |(_, n)| *n)
    };
    channels
        .iter()
        .map(|c| {
            let name = match &c.name {
                Some(n) => format!("{n} (line {})", c.line),
                None => format!("Line {}", c.line),
            };
            format!(
                "{name} — last 24 h: {} in, {} out",
                count(&inbound, &c.phone_number_id),
                count(&outbound, &c.phone_number_id)
            )
        })
        .collect()
}

/// Remembers a number Meta posted for that has no channel, for its row on `/setup`. Only
/// signed notifications get here, but a number is kept no longer than any real one.
pub async fn record_unknown(db: &Db, phone_number_id: &str) -> Result<(), sqlx::Error> {
    let phone_number_id: String = phone_number_id.chars().take(32).collect();
    let now = now_ms();
    on_pool!(db, |p| sqlx::query(
        "INSERT INTO bitrix_unknown_numbers (phone_number_id, first_seen_at, last_seen_at)
         VALUES ($1, $2, $2)
         ON CONFLICT (phone_number_id) DO UPDATE SET last_seen_at = excluded.last_seen_at"
    )
    .bind(&phone_number_id)
    .bind(now)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Numbers without a channel that Meta posted for, newest first, at most `limit`.
pub async fn unknown_numbers(db: &Db, limit: i64) -> Result<Vec<(String, i64)>, sqlx::Error> {
    on_pool!(db, |p| sqlx::query_as(
        "SELECT phone_number_id, last_seen_at FROM bitrix_unknown_numbers
         ORDER BY last_seen_at DESC LIMIT $1"
    )
    .bind(limit)
    .fetch_all(p)
    .await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Rows, String> {
        let table: toml::Table = text.parse().unwrap();
        parse_channels(table["c"].clone())
    }

    #[test]
    fn ids_may_be_quoted_or_bare_and_nothing_else() {
        let rows = parse(
            "[[c]]\nphone_number_id = \"106540352242922\"\nline_id = 3\n\
             [[c]]\nphone_number_id = 2\nline_id = \"7\"\nname = \"Sales\"",
        )
        .unwrap();
        let cs: Vec<Channel> = rows
            .get::<ChannelRow>()
            .iter()
            .map(ChannelRow::channel)
            .collect();
        assert_eq!(cs[0].line, "3");
        assert_eq!(cs[1].phone_number_id, "2");
        assert_eq!(cs[1].name.as_deref(), Some("Sales"));
        let e = parse("[[c]]\nphone_number_id = \"1\"\nline_id = \"three\"").unwrap_err();
        assert!(e.starts_with("entry 1: line_id"), "{e}");
        let e = parse("[[c]]\nphone_number_id = \"1\"\nline_id = 1\n[[c]]\nphone_number_id = \"+49\"\nline_id = 2").unwrap_err();
        assert!(e.starts_with("entry 2: phone_number_id"), "{e}");
        let e = parse("[[c]]\nphone_number_id = \"1\"\nline_id = 1\n[[c]]\nphone_number_id = \"2\"\nline_id = 1").unwrap_err();
        assert!(e.contains("entries 1 and 2 both have line_id 1"), "{e}");
        let e = parse(
            "[[c]]\nphone_number_id = 5\nline_id = 1\n[[c]]\nphone_number_id = \"5\"\nline_id = 2",
        )
        .unwrap_err();
        assert!(
            e.contains("entries 1 and 2 both have phone_number_id \"5\""),
            "{e}"
        );
    }
}
