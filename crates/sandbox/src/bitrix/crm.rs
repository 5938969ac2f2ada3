//! CRM leads, duplicate search and the Open Lines line config (protocol §7). Duplicate search
//! compares stored values verbatim, so a product must search the formatting variants itself.

use serde_json::{Value, json};

use super::Shared;
use super::php;
use super::rest::{MethodResult, Reply, RestError};
use super::state::Lead;

const PAGE: usize = 50;
const MAX_DUPLICATE_VALUES: usize = 20;

pub(crate) fn find_by_comm(s: &Shared, params: &Value) -> MethodResult {
    let kind = php::as_text(php::param(params, "type"))
        .unwrap_or_default()
        .to_uppercase();
    if kind != "PHONE" && kind != "EMAIL" {
        return Err(RestError::argument(
            "Parameter 'type' must be PHONE or EMAIL",
        ));
    }
    let values: Vec<String> = match php::param(params, "values") {
        Some(Value::Array(items)) => items.iter().filter_map(|v| php::as_text(Some(v))).collect(),
        Some(Value::Object(map)) => map.values().filter_map(|v| php::as_text(Some(v))).collect(),
        _ => Vec::new(),
    };
    if values.is_empty() {
        return Err(RestError::argument(
            "Parameter 'values' must be a non-empty array",
        ));
    }
    if values.len() > MAX_DUPLICATE_VALUES {
        return Err(RestError::argument(
            "Too many values: at most 20 are allowed",
        ));
    }
    let entity = php::as_text(php::param(params, "entity_type")).map(|e| e.to_uppercase());
    if entity.as_deref().is_some_and(|e| e != "LEAD") {
        // Only leads exist on this portal: other entity types never match.
        return Ok(Reply::Result(json!([])));
    }
    let ids: Vec<u64> = s
        .portal()
        .leads
        .iter()
        .filter(|l| l.multifield(&kind).iter().any(|v| values.contains(v)))
        .map(|l| l.id)
        .collect();
    if ids.is_empty() {
        // An empty PHP array serializes as a JSON list, not an object.
        Ok(Reply::Result(json!([])))
    } else {
        Ok(Reply::Result(json!({"LEAD": ids})))
    }
}

pub(crate) fn lead_add(s: &Shared, params: &Value) -> MethodResult {
    let fields = php::param(params, "fields")
        .filter(|f| f.is_object())
        .map(php::keys_to_upper)
        .ok_or_else(|| RestError::argument("Parameter 'fields' must be an object"))?;
    let mut portal = s.portal();
    let id = portal.next("lead");
    portal.leads.push(Lead {
        id,
        fields,
        by_openlines: false,
    });
    Ok(Reply::Result(json!(id)))
}

fn lead_json(lead: &Lead) -> Value {
    let mut v = lead.fields.clone();
    if let Some(map) = v.as_object_mut() {
        map.insert("ID".into(), json!(lead.id.to_string()));
        for kind in ["PHONE", "EMAIL", "IM", "WEB"] {
            if let Some(Value::Array(items)) = map.get_mut(kind) {
                for (n, item) in items.iter_mut().enumerate() {
                    item["ID"] = json!((lead.id * 10 + n as u64).to_string());
                    item["TYPE_ID"] = json!(kind);
                }
            }
        }
    }
    v
}

pub(crate) fn lead_get(s: &Shared, params: &Value) -> MethodResult {
    let id = php::as_int(php::param(params, "id"))
        .filter(|id| *id > 0)
        .ok_or_else(|| RestError::argument("ID is not defined or invalid."))?;
    let portal = s.portal();
    let lead = portal
        .leads
        .iter()
        .find(|l| l.id == id as u64)
        .ok_or_else(|| RestError::new(400, "", "Not found"))?;
    Ok(Reply::Result(lead_json(lead)))
}

pub(crate) fn lead_list(s: &Shared, params: &Value) -> MethodResult {
    let filter = php::param(params, "filter")
        .map(php::keys_to_upper)
        .unwrap_or(json!({}));
    let start = php::as_int(php::param(params, "start")).unwrap_or(0).max(0) as usize;
    let portal = s.portal();
    let matching: Vec<Value> = portal
        .leads
        .iter()
        .filter(|l| {
            filter.as_object().is_none_or(|f| {
                f.iter().all(|(k, want)| {
                    let key = k.trim_start_matches('=');
                    if key == "ID" {
                        return php::as_text(Some(want)) == Some(l.id.to_string());
                    }
                    php::as_text(l.fields.get(key)) == php::as_text(Some(want))
                })
            })
        })
        .map(lead_json)
        .collect();
    let total = matching.len();
    let page: Vec<Value> = matching.into_iter().skip(start).take(PAGE).collect();
    let next = (start + PAGE < total).then_some(start + PAGE);
    Ok(Reply::Page {
        result: json!(page),
        total,
        next,
    })
}

pub(crate) fn openlines_config(s: &Shared, params: &Value) -> MethodResult {
    let portal = s.portal();
    let id = php::as_int(php::param(params, "CONFIG_ID")).unwrap_or(portal.cfg.line_id);
    if id != portal.cfg.line_id && !portal.cfg.extra_lines.contains(&id) {
        return Err(RestError::new(
            400,
            "CONFIG_NOT_FOUND",
            "Open Channel not found",
        ));
    }
    let creates = portal.cfg.openlines_creates_leads;
    Ok(Reply::Result(json!({
        "ID": id.to_string(),
        "ACTIVE": "Y",
        "LINE_NAME": format!("Open Channel {id}"),
        "CRM": if creates { "Y" } else { "N" },
        "CRM_CREATE": if creates { "lead" } else { "none" },
        "CRM_CREATE_SECOND": "none",
        "CRM_SOURCE": "create",
        "QUEUE_TYPE": "evenly",
    })))
}

/// `imopenlines.config.list.get`: the portal's Open Channels, as a plain `result` list with
/// string ids and `Y`/`N` flags like every Open Lines config read.
pub(crate) fn openlines_list(s: &Shared) -> MethodResult {
    let portal = s.portal();
    let mut ids = vec![portal.cfg.line_id];
    ids.extend(portal.cfg.extra_lines.iter().copied());
    ids.sort_unstable();
    ids.dedup();
    let list: Vec<Value> = ids
        .into_iter()
        .map(|id| {
            let name = portal
                .line_names
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("Open Channel {id}"));
            json!({"ID": id.to_string(), "ACTIVE": "Y", "LINE_NAME": name})
        })
        .collect();
    Ok(Reply::Result(json!(list)))
}

/// `imopenlines.config.add`: creates an Open Channel from `PARAMS` (`LINE_NAME` at least)
/// and answers its new id as a number.
pub(crate) fn openlines_add(s: &Shared, params: &Value) -> MethodResult {
    let name = php::param(params, "PARAMS")
        .and_then(|p| p.get("LINE_NAME"))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    let mut portal = s.portal();
    let next = portal
        .cfg
        .extra_lines
        .iter()
        .copied()
        .chain([portal.cfg.line_id])
        .max()
        .unwrap_or(0)
        + 1;
    portal.cfg.extra_lines.push(next);
    let name = name.unwrap_or_else(|| format!("Open Channel {next}"));
    portal.line_names.insert(next, name);
    Ok(Reply::Result(json!(next)))
}
