//! Reading this bridge's setting values through core's resolver (store → env → file →
//! default), so a value saved in the admin form takes effect without a restart; a missing one
//! becomes [`Error::NotConfigured`] naming its environment variable.

use switchboard_core::{Core, Secret, config::Setting};

use crate::Error;

/// The value of `setting`, or [`Error::NotConfigured`] naming its environment variable.
pub async fn required(core: &Core, setting: &'static Setting) -> Result<String, Error> {
    match core.settings.get(setting).await? {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(Error::NotConfigured {
            setting: setting.env,
        }),
    }
}

pub async fn required_secret(core: &Core, setting: &'static Setting) -> Result<Secret, Error> {
    required(core, setting).await.map(Secret::new)
}

pub async fn optional(core: &Core, setting: &Setting) -> Result<Option<String>, Error> {
    Ok(core
        .settings
        .get(setting)
        .await?
        .filter(|v| !v.trim().is_empty()))
}

/// `{public_url}{path}` without a doubled slash.
pub fn public_link(core: &Core, path: &str) -> String {
    format!("{}{path}", core.config.public_url().trim_end_matches('/'))
}
