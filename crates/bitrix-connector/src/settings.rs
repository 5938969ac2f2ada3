//! Reading this bridge's settings through core's handle (store → env → file → default), so a
//! value saved in the admin form takes effect without a restart.

use switchboard_core::{Core, Secret, config::settings};

use crate::Error;

fn env_name(key: &str) -> &'static str {
    settings::find(key).map_or("an unknown setting", |s| s.env)
}

/// The value of `key`, or [`Error::NotConfigured`] naming its environment variable.
pub async fn required(core: &Core, key: &str) -> Result<String, Error> {
    match core.settings.get(key).await? {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(Error::NotConfigured {
            setting: env_name(key),
        }),
    }
}

pub async fn required_secret(core: &Core, key: &str) -> Result<Secret, Error> {
    required(core, key).await.map(Secret::new)
}

pub async fn optional(core: &Core, key: &str) -> Result<Option<String>, Error> {
    Ok(core
        .settings
        .get(key)
        .await?
        .filter(|v| !v.trim().is_empty()))
}

/// `{public_url}{path}` without a doubled slash.
pub fn public_link(core: &Core, path: &str) -> String {
    format!("{}{path}", core.config.public_url().trim_end_matches('/'))
}
