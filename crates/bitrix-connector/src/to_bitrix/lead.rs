//! The CRM lead of a customer who writes from a phone number, made once per number.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{message::phone_of, render::split_name};
use crate::{
    bitrix::{BitrixError, id_text, truthy},
    meta::payload::InboundUnit,
    relay::Relay,
    store::{self, LeadClaim},
};

/// One CRM lead per new number (protocol §7): the phone's row is claimed first, so concurrent
/// first messages, replays and other processes can't create a second; the portal is searched
/// before creating, so a lead whose creation answer was lost is found instead of repeated.
/// How long (in 100 ms steps) a relay waits for another job's lead creation before retrying.
const LEAD_WAIT_STEPS: u32 = 50;

pub(super) async fn ensure_lead(
    relay: &Relay,
    unit: &InboundUnit,
    line: &str,
    first_text: Option<&str>,
) -> Result<(), BitrixError> {
    let Some(phone) = phone_of(&unit.customer) else {
        return Ok(());
    };
    let db = &relay.core.db;
    let storage = |e: sqlx::Error| BitrixError::Storage(e.to_string());
    // Another job may be creating this customer's lead right now (several first messages at
    // once): that takes a few REST calls, so wait for it briefly rather than spend a retry.
    // A claim that stays busy belongs to a job that died mid-way; retrying (the message itself
    // is already relayed and won't be resent) finds it stale and takes it over.
    let mut waited = 0;
    loop {
        match store::claim_lead(db, &phone).await.map_err(storage)? {
            LeadClaim::Mine => break,
            LeadClaim::Done(_) => return Ok(()),
            LeadClaim::Busy if waited < LEAD_WAIT_STEPS => {
                waited += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            LeadClaim::Busy => {
                return Err(BitrixError::Storage(format!(
                    "lead for {phone} is being created by another job; checking again"
                )));
            }
        }
    }
    match find_or_create_lead(relay, unit, &phone, line, first_text).await {
        Ok(id) => store::finish_lead(db, &phone, &id).await.map_err(storage),
        Err(e) => {
            store::release_lead(db, &phone).await.map_err(storage)?;
            Err(e)
        }
    }
}

async fn find_or_create_lead(
    relay: &Relay,
    unit: &InboundUnit,
    phone: &str,
    line: &str,
    first_text: Option<&str>,
) -> Result<String, BitrixError> {
    let b = &relay.bitrix;
    // A line set to create leads itself would give the customer a second one.
    if line_creates_leads(relay, line).await? {
        return Ok("by-openlines".into());
    }
    let found = b
        .call(
            "crm.duplicate.findbycomm",
            json!({"type": "PHONE", "values": [phone, unit.customer], "entity_type": "LEAD"}),
        )
        .await?;
    if let Some(id) = id_text(found.pointer("/LEAD/0")) {
        return Ok(id);
    }
    let (first, last) = split_name(unit.name.as_deref());
    let title = unit.name.clone().unwrap_or_else(|| phone.to_string());
    let mut fields = json!({
        "TITLE": format!("WhatsApp: {title}"),
        "PHONE": [{"VALUE": phone, "VALUE_TYPE": "MOBILE"}],
        "IM": [{"VALUE": unit.customer, "VALUE_TYPE": "OTHER"}],
        "SOURCE_ID": "OTHER",
        "SOURCE_DESCRIPTION": "WhatsApp Cloud API",
        "STATUS_ID": "NEW",
        "OPENED": "Y",
    });
    if !first.is_empty() {
        fields["NAME"] = json!(first);
    }
    if !last.is_empty() {
        fields["LAST_NAME"] = json!(last);
    }
    // A customer who came from a click-to-WhatsApp ad: the lead says so (protocol §7 sources).
    // The ad rides on the first message only, and a later message's job may be the one that
    // gets here first: the customer's record keeps it.
    let came_from = store::customer_came_from(&relay.core.db, &unit.customer)
        .await
        .map_err(|e| BitrixError::Storage(e.to_string()))?;
    if let Some(source) = came_from.or_else(|| super::conversation::lead_source(unit)) {
        fields["SOURCE_ID"] = json!("ADVERTISING");
        fields["SOURCE_DESCRIPTION"] = json!(source);
    }
    if let Some(t) = first_text {
        fields["COMMENTS"] = json!(format!("First message: {t}"));
    }
    let id = b
        .call(
            "crm.lead.add",
            json!({"fields": fields, "params": {"REGISTER_SONET_EVENT": "Y"}}),
        )
        .await?;
    let id = id_text(Some(&id)).unwrap_or_default();
    tracing::info!(lead_id = %id, "CRM lead created for a new WhatsApp customer");
    Ok(id)
}

/// How long a line's CRM settings are trusted: a burst of new customers asks once, and an
/// administrator's change of the line's lead setting is seen within a minute.
const LINE_SETTINGS_FOR: Duration = Duration::from_secs(60);

/// Whether the Open Channel creates leads by itself, read from the line's settings at most
/// once per [`LINE_SETTINGS_FOR`].
async fn line_creates_leads(relay: &Relay, line: &str) -> Result<bool, BitrixError> {
    if let Some((at, creates)) = relay
        .line_settings
        .lock()
        .expect("line cache")
        .get(line)
        .copied()
        && at.elapsed() < LINE_SETTINGS_FOR
    {
        return Ok(creates);
    }
    let creates = match relay
        .bitrix
        .call("imopenlines.config.get", json!({"CONFIG_ID": line}))
        .await
    {
        Ok(cfg) => truthy(cfg.get("CRM")) && cfg.get("CRM_CREATE") == Some(&json!("lead")),
        Err(e) if e.is_retryable() => return Err(e),
        Err(e) => {
            // Not cached: the next customer asks again.
            tracing::warn!(error = %e, "could not read the Open Channel's CRM settings");
            return Ok(false);
        }
    };
    relay
        .line_settings
        .lock()
        .expect("line cache")
        .insert(line.to_string(), (Instant::now(), creates));
    Ok(creates)
}
