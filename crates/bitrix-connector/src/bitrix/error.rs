//! Everything a Bitrix call can end in, classified once: retry (outage, rate limit, expired
//! token after a failed refresh) or dead-letter with the seed's fix text.

use switchboard_core::JobError;

use crate::error::fix;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BitrixError {
    #[error("{0} is not configured")]
    NotConfigured(&'static str),
    #[error("Bitrix24 app is not installed")]
    NotInstalled,
    #[error("Bitrix24 unreachable: {0}")]
    Transport(String),
    #[error("Bitrix24 unavailable (HTTP {http})")]
    Unavailable { http: u16 },
    #[error("Bitrix24 {code}: {description}")]
    Api {
        code: String,
        description: String,
        http: u16,
    },
    #[error("Bitrix24 OAuth refused the refresh: {code} ({description})")]
    OAuth { code: String, description: String },
    #[error("stored grant: {0}")]
    Storage(String),
    /// The portal's rate limit has no room now; a slot frees in `retry_in`.
    #[error("Bitrix24 rate limit reached; room again in {} ms", .retry_in.as_millis())]
    Busy { retry_in: std::time::Duration },
}

const RETRYABLE_CODES: &[&str] = &[
    "QUERY_LIMIT_EXCEEDED",
    "OPERATION_TIME_LIMIT",
    "INTERNAL_SERVER_ERROR",
    "OVERLOAD_LIMIT",
    "expired_token",
];

impl BitrixError {
    pub fn code(&self) -> Option<&str> {
        match self {
            BitrixError::Api { code, .. } | BitrixError::OAuth { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn fix(&self) -> Option<&'static str> {
        if matches!(self, BitrixError::NotInstalled) {
            return Some(fix::NOT_INSTALLED);
        }
        Some(match self.code()? {
            "invalid_token" | "NO_AUTH_FOUND" => fix::INVALID_TOKEN,
            "invalid_grant" | "invalid_client" => fix::INVALID_GRANT,
            "NOT_ACTIVE_LINE" => fix::NOT_ACTIVE_LINE,
            "IMCONNECTOR_NO_CORRECT_PROVIDER" | "IMCONNECTOR_NOT_SPECIFIED_CORRECT_COMMAND" => {
                fix::NO_PROVIDER
            }
            "insufficient_scope" => fix::SCOPE,
            "WRONG_AUTH_TYPE" => fix::WRONG_AUTH_TYPE,
            _ => return None,
        })
    }

    pub fn explained(&self) -> String {
        match self.fix() {
            Some(f) => format!("{self}. {f}"),
            None => self.to_string(),
        }
    }

    pub fn is_retryable(&self) -> bool {
        match self {
            BitrixError::Transport(_)
            | BitrixError::Unavailable { .. }
            | BitrixError::Storage(_)
            | BitrixError::Busy { .. } => true,
            BitrixError::Api { code, http, .. } => {
                RETRYABLE_CODES.contains(&code.as_str())
                    || (*http >= 500 && code != "PORTAL_DELETED")
            }
            BitrixError::OAuth { .. }
            | BitrixError::NotConfigured(_)
            | BitrixError::NotInstalled => false,
        }
    }

    pub fn into_job_error(self) -> JobError {
        if let BitrixError::Busy { retry_in } = self {
            return JobError::Postpone(retry_in, self.to_string());
        }
        if self.is_retryable() {
            JobError::Retry(self.explained())
        } else {
            JobError::Permanent(self.explained())
        }
    }
}

impl From<crate::Error> for BitrixError {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::NotConfigured { setting } => BitrixError::NotConfigured(setting),
            other => BitrixError::Storage(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: &str, http: u16) -> BitrixError {
        BitrixError::Api {
            code: code.into(),
            description: String::new(),
            http,
        }
    }

    #[test]
    fn classification() {
        assert!(api("QUERY_LIMIT_EXCEEDED", 503).is_retryable());
        assert!(!api("NOT_ACTIVE_LINE", 400).is_retryable());
        assert!(
            api("NOT_ACTIVE_LINE", 400)
                .explained()
                .contains("Run `switchboard bitrix activate-connector`")
        );
        assert!(!api("invalid_token", 401).is_retryable());
        assert!(BitrixError::Unavailable { http: 503 }.is_retryable());
        let grant = BitrixError::OAuth {
            code: "invalid_grant".into(),
            description: String::new(),
        };
        assert!(!grant.is_retryable());
        assert!(grant.explained().contains("Re-install"));
    }
}
