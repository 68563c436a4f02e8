//! How every binary words an AWS SDK error: the service's own code and message
//! ("UnauthorizedOperation: You are not authorized…"), which say what is wrong, rather
//! than the SDK's generic "service error"; and for an error the service never answered
//! (connection refused, a timeout, no credentials), the chain of causes.

use std::error::Error;

use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// `code: message`, the code alone, or the error's chain when the service sent no code.
pub fn render<E>(err: &E) -> String
where
    E: ProvideErrorMetadata + Error,
{
    match (err.code(), err.message()) {
        (Some(code), Some(msg)) => format!("{code}: {msg}"),
        (Some(code), None) => code.to_string(),
        _ => render_chain(err),
    }
}

/// "a: b: c" from an error and its sources. A cause whose text its parent already
/// includes is left out: the SDK's layers often repeat the one below them.
pub fn render_chain(err: &dyn Error) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_types::error::ErrorMetadata;

    #[derive(Debug, thiserror::Error)]
    #[error("{what}")]
    struct Fake {
        what: &'static str,
        meta: ErrorMetadata,
        #[source]
        cause: Option<std::io::Error>,
    }

    impl ProvideErrorMetadata for Fake {
        fn meta(&self) -> &ErrorMetadata {
            &self.meta
        }
    }

    fn fake(code: Option<&str>, message: Option<&str>, cause: Option<&str>) -> Fake {
        let mut meta = ErrorMetadata::builder();
        if let Some(c) = code {
            meta = meta.code(c);
        }
        if let Some(m) = message {
            meta = meta.message(m);
        }
        Fake {
            what: "service error",
            meta: meta.build(),
            cause: cause.map(std::io::Error::other),
        }
    }

    #[test]
    fn the_service_code_and_message_come_first() {
        let e = fake(Some("AccessDenied"), Some("not allowed"), Some("io"));
        assert_eq!(render(&e), "AccessDenied: not allowed");
        assert_eq!(render(&fake(Some("Throttling"), None, None)), "Throttling");
    }

    #[test]
    fn without_a_code_the_causes_are_chained_once_each() {
        let e = fake(None, None, Some("connection refused"));
        assert_eq!(render(&e), "service error: connection refused");
        let repeated = fake(None, None, Some("service error"));
        assert_eq!(render(&repeated), "service error");
    }
}
