//! The admin JSON API over the state (SPEC §3.3), gated by `SWITCHBOARD_ADMIN_TOKEN`. Lists are
//! newest first and paged by keyset: pass a page's `next_before` back as `before`.

use axum::{
    Json,
    extract::{Path, RawQuery, State},
};
use serde_json::{Map, Value, json};
use switchboard_core::{Core, http::AdminAuth, http::url_decode_pairs};

use crate::{error::Error, events::valid_bridge_name, state};

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

struct Page {
    pairs: Vec<(String, String)>,
    limit: i64,
}

impl Page {
    fn parse(query: Option<String>) -> Result<Self, Error> {
        let pairs = url_decode_pairs(query.as_deref().unwrap_or(""));
        let mut page = Page {
            pairs,
            limit: DEFAULT_LIMIT,
        };
        if let Some(l) = page.get("limit") {
            page.limit = l
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| Error::BadQuery {
                    field: "limit",
                    problem: format!("must be a whole number from 1 to {MAX_LIMIT}"),
                })?;
        }
        Ok(page)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    fn before_int(&self) -> Result<Option<i64>, Error> {
        self.get("before")
            .map(|b| {
                b.parse().map_err(|_| Error::BadQuery {
                    field: "before",
                    problem: "must be the `next_before` of the previous page".into(),
                })
            })
            .transpose()
    }

    /// Whether another page may follow, and where it starts.
    fn next(
        &self,
        rows: &[Map<String, Value>],
        cursor: impl Fn(&Map<String, Value>) -> Value,
    ) -> Value {
        match rows.last() {
            Some(last) if rows.len() as i64 == self.limit => cursor(last),
            _ => Value::Null,
        }
    }
}

fn objects(rows: Vec<Map<String, Value>>) -> Vec<Value> {
    rows.into_iter().map(Value::Object).collect()
}

async fn known_bridge(core: &Core, bridge: &str) -> Result<(), Error> {
    if valid_bridge_name(bridge) && state::bridge_exists(&core.db, bridge).await? {
        Ok(())
    } else {
        Err(Error::UnknownBridge(bridge.chars().take(80).collect()))
    }
}

/// `GET /api/wabridges/bridges?after=&limit=` — by name; `next_after` pages on.
#[utoipa::path(
    get,
    path = "/api/wabridges/bridges",
    tag = "wabridges",
    params(
        ("after" = Option<String>, Query, description = "The previous page's `next_after`"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "Rows per page (50)"),
    ),
    responses(
        (status = 200, description = "The bridges that sent events, by name", body = crate::openapi::BridgesPage),
        (status = 400, description = "`limit` or `before` is malformed", body = switchboard_core::http::ErrorBody),
        (status = 401, description = "Admin token missing or wrong", body = switchboard_core::http::ErrorBody),
        (status = 503, description = "No admin token is configured", body = switchboard_core::http::ErrorBody),
    ),
    security(("admin_token" = []), ("admin_token_query" = [])),
)]
pub async fn list_bridges(
    _: AdminAuth,
    State(core): State<Core>,
    RawQuery(q): RawQuery,
) -> Result<Json<crate::openapi::BridgesPage>, Error> {
    let page = Page::parse(q)?;
    let rows = state::bridges(&core.db, page.get("after"), page.limit).await?;
    let next = page.next(&rows, |r| r["bridge"].clone());
    Ok(Json(crate::openapi::BridgesPage {
        bridges: objects(rows),
        next_after: next,
    }))
}

/// `GET /api/wabridges/bridges/{bridge}/messages?chat_id=&before=&limit=` — newest first by the
/// sender's timestamp. `before` is an opaque `<timestamp>.<event>` cursor, or a bare Unix time
/// in seconds for "messages sent before then".
#[utoipa::path(
    get,
    path = "/api/wabridges/bridges/{bridge}/messages",
    tag = "wabridges",
    params(
        ("bridge" = String, Path, description = "The bridge's name, as in its hook URL"),
        ("chat_id" = Option<String>, Query, description = "Only this chat (a contact JID or a group)"),
        ("before" = Option<String>, Query, description = "The previous page's `next_before`, or a Unix time in seconds"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "Rows per page (50)"),
    ),
    responses(
        (status = 200, description = "Messages, newest first", body = crate::openapi::MessagesPage),
        (status = 400, description = "`limit` or `before` is malformed", body = switchboard_core::http::ErrorBody),
        (status = 401, description = "Admin token missing or wrong", body = switchboard_core::http::ErrorBody),
        (status = 404, description = "No such bridge", body = switchboard_core::http::ErrorBody),
        (status = 503, description = "No admin token is configured", body = switchboard_core::http::ErrorBody),
    ),
    security(("admin_token" = []), ("admin_token_query" = [])),
)]
pub async fn list_messages(
    _: AdminAuth,
    State(core): State<Core>,
    Path(bridge): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<crate::openapi::MessagesPage>, Error> {
    let page = Page::parse(q)?;
    known_bridge(&core, &bridge).await?;
    let before = page
        .get("before")
        .map(|b| {
            let bad = || Error::BadQuery {
                field: "before",
                problem: "must be a `next_before` cursor or a Unix time in seconds".into(),
            };
            match b.split_once('.') {
                Some((ts, ev)) => Ok::<_, Error>((
                    ts.parse().map_err(|_| bad())?,
                    ev.parse().map_err(|_| bad())?,
                )),
                // Event ids start at 1, so 0 excludes the whole second: strictly before.
                None => Ok((b.parse().map_err(|_| bad())?, 0)),
            }
        })
        .transpose()?;
    let rows = state::messages(&core.db, &bridge, page.get("chat_id"), before, page.limit).await?;
    let next = page.next(&rows, |r| {
        json!(format!("{}.{}", r["timestamp"], r["event"]))
    });
    Ok(Json(crate::openapi::MessagesPage {
        bridge,
        messages: objects(rows),
        next_before: next,
    }))
}

/// `GET /api/wabridges/bridges/{bridge}/contacts?before=&limit=`
#[utoipa::path(
    get,
    path = "/api/wabridges/bridges/{bridge}/contacts",
    tag = "wabridges",
    params(
        ("bridge" = String, Path, description = "The bridge's name, as in its hook URL"),
        ("before" = Option<String>, Query, description = "The previous page's `next_before`"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "Rows per page (50)"),
    ),
    responses(
        (status = 200, description = "Contacts, newest first", body = crate::openapi::ContactsPage),
        (status = 400, description = "`limit` or `before` is malformed", body = switchboard_core::http::ErrorBody),
        (status = 401, description = "Admin token missing or wrong", body = switchboard_core::http::ErrorBody),
        (status = 404, description = "No such bridge", body = switchboard_core::http::ErrorBody),
        (status = 503, description = "No admin token is configured", body = switchboard_core::http::ErrorBody),
    ),
    security(("admin_token" = []), ("admin_token_query" = [])),
)]
pub async fn list_contacts(
    _: AdminAuth,
    State(core): State<Core>,
    Path(bridge): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<crate::openapi::ContactsPage>, Error> {
    let page = Page::parse(q)?;
    known_bridge(&core, &bridge).await?;
    let rows = state::contacts(&core.db, &bridge, page.before_int()?, page.limit).await?;
    let next = page.next(&rows, |r| r["first_event"].clone());
    Ok(Json(crate::openapi::ContactsPage {
        bridge,
        contacts: objects(rows),
        next_before: next,
    }))
}

/// `GET /api/wabridges/bridges/{bridge}/calls?before=&limit=`
#[utoipa::path(
    get,
    path = "/api/wabridges/bridges/{bridge}/calls",
    tag = "wabridges",
    params(
        ("bridge" = String, Path, description = "The bridge's name, as in its hook URL"),
        ("before" = Option<String>, Query, description = "The previous page's `next_before`"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "Rows per page (50)"),
    ),
    responses(
        (status = 200, description = "Calls, newest first", body = crate::openapi::CallsPage),
        (status = 400, description = "`limit` or `before` is malformed", body = switchboard_core::http::ErrorBody),
        (status = 401, description = "Admin token missing or wrong", body = switchboard_core::http::ErrorBody),
        (status = 404, description = "No such bridge", body = switchboard_core::http::ErrorBody),
        (status = 503, description = "No admin token is configured", body = switchboard_core::http::ErrorBody),
    ),
    security(("admin_token" = []), ("admin_token_query" = [])),
)]
pub async fn list_calls(
    _: AdminAuth,
    State(core): State<Core>,
    Path(bridge): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<crate::openapi::CallsPage>, Error> {
    let page = Page::parse(q)?;
    known_bridge(&core, &bridge).await?;
    let rows = state::calls(&core.db, &bridge, page.before_int()?, page.limit).await?;
    let next = page.next(&rows, |r| r["first_event"].clone());
    Ok(Json(crate::openapi::CallsPage {
        bridge,
        calls: objects(rows),
        next_before: next,
    }))
}

/// `GET /api/wabridges/bridges/{bridge}/polls/{poll_id}/votes`
#[utoipa::path(
    get,
    path = "/api/wabridges/bridges/{bridge}/polls/{poll_id}/votes",
    tag = "wabridges",
    params(
        ("bridge" = String, Path, description = "The bridge's name, as in its hook URL"),
        ("poll_id" = String, Path, description = "The poll's message id"),
    ),
    responses(
        (status = 200, description = "Each voter's latest vote", body = crate::openapi::PollVotes),
        (status = 401, description = "Admin token missing or wrong", body = switchboard_core::http::ErrorBody),
        (status = 404, description = "No such bridge", body = switchboard_core::http::ErrorBody),
        (status = 503, description = "No admin token is configured", body = switchboard_core::http::ErrorBody),
    ),
    security(("admin_token" = []), ("admin_token_query" = [])),
)]
pub async fn list_poll_votes(
    _: AdminAuth,
    State(core): State<Core>,
    Path((bridge, poll_id)): Path<(String, String)>,
) -> Result<Json<crate::openapi::PollVotes>, Error> {
    known_bridge(&core, &bridge).await?;
    let rows = state::poll_votes(&core.db, &bridge, &poll_id).await?;
    Ok(Json(crate::openapi::PollVotes {
        bridge,
        poll_id,
        votes: objects(rows),
    }))
}

/// `GET /api/wabridges/bridges/{bridge}/events/{event_id}/responses`
#[utoipa::path(
    get,
    path = "/api/wabridges/bridges/{bridge}/events/{event_id}/responses",
    tag = "wabridges",
    params(
        ("bridge" = String, Path, description = "The bridge's name, as in its hook URL"),
        ("event_id" = String, Path, description = "The event's message id"),
    ),
    responses(
        (status = 200, description = "Each invitee's latest response", body = crate::openapi::EventResponses),
        (status = 401, description = "Admin token missing or wrong", body = switchboard_core::http::ErrorBody),
        (status = 404, description = "No such bridge", body = switchboard_core::http::ErrorBody),
        (status = 503, description = "No admin token is configured", body = switchboard_core::http::ErrorBody),
    ),
    security(("admin_token" = []), ("admin_token_query" = [])),
)]
pub async fn list_event_responses(
    _: AdminAuth,
    State(core): State<Core>,
    Path((bridge, event_id)): Path<(String, String)>,
) -> Result<Json<crate::openapi::EventResponses>, Error> {
    known_bridge(&core, &bridge).await?;
    let rows = state::event_responses(&core.db, &bridge, &event_id).await?;
    Ok(Json(crate::openapi::EventResponses {
        bridge,
        event_id,
        responses: objects(rows),
    }))
}
