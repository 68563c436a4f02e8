//! The launcher's errors and the exit status each maps to (listed in `lease --help`).

use lease_common::aws::AwsConfigError;
use lease_common::duration::DurationError;
use lease_common::tags::TagError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Duration(#[from] DurationError),
    #[error(transparent)]
    Tag(#[from] TagError),
    #[error(transparent)]
    AwsConfig(#[from] AwsConfigError),
    /// An AWS call failed; `what` names the operation and the object.
    #[error("{what}: {message}")]
    Aws { what: String, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    MissingProgram(String),
    #[error(transparent)]
    Settings(#[from] crate::settings::SettingsError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Duration(_) | Error::Tag(_) | Error::AwsConfig(_) => 2,
            Error::NotFound(_) => 3,
            Error::Refused(_) => 4,
            Error::MissingProgram(_) => 5,
            Error::Settings(
                crate::settings::SettingsError::Parse { .. }
                | crate::settings::SettingsError::NoHome,
            ) => 2,
            Error::Aws { .. } | Error::Io { .. } | Error::Settings(_) => 1,
        }
    }

    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }

    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// Wraps an SDK error, keeping the service's error code and message (which say
    /// what is wrong: "UnauthorizedOperation", "InvalidParameterValue", …) rather than
    /// the SDK's generic "service error".
    pub fn aws<E>(what: impl Into<String>, err: E) -> Self
    where
        E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error,
    {
        let message = match (err.code(), err.message()) {
            (Some(code), Some(msg)) => format!("{code}: {msg}"),
            (Some(code), None) => code.to_string(),
            _ => render_chain(&err),
        };
        Error::Aws {
            what: what.into(),
            message,
        }
    }
}

/// "a: b: c" from an error and its sources, for errors with no service code
/// (connection refused, timeouts, credentials missing).
fn render_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
