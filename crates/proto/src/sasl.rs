//! SASL mechanisms PLAIN (RFC 4616) and LOGIN, decoding only: checking the credentials
//! is the auth backend's job.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Longest SASL response line we read (RFC 4954 §4 raises the line limit to 12288).
pub const MAX_SASL_LINE: usize = 12288;

/// What a client offered as credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub mechanism: Mechanism,
    /// The authorization identity (PLAIN only); `None` when empty.
    pub authzid: Option<String>,
    pub login: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    /// Never prints the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("mechanism", &self.mechanism)
            .field("authzid", &self.authzid)
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    pub fn parse(name: &str) -> Option<Mechanism> {
        match name.to_ascii_uppercase().as_str() {
            "PLAIN" => Some(Mechanism::Plain),
            "LOGIN" => Some(Mechanism::Login),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslError {
    /// The client sent `*` (RFC 4954 §4).
    Cancelled,
    BadBase64,
    /// Decoded, but not the shape the mechanism needs.
    Malformed,
}

/// Decodes one client response line. `*` cancels; `=` is an empty initial response.
pub fn decode_response(line: &str) -> Result<Vec<u8>, SaslError> {
    match line.trim_end() {
        "*" => Err(SaslError::Cancelled),
        "=" => Ok(Vec::new()),
        text => STANDARD.decode(text).map_err(|_| SaslError::BadBase64),
    }
}

pub fn encode_challenge(text: &str) -> String {
    STANDARD.encode(text)
}

/// Splits a PLAIN message `authzid NUL authcid NUL passwd`.
pub fn decode_plain(message: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(login), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| SaslError::Malformed);
    let login = text(login)?;
    if login.is_empty() {
        return Err(SaslError::Malformed);
    }
    let authzid = text(authzid)?;
    Ok(Credentials {
        mechanism: Mechanism::Plain,
        authzid: (!authzid.is_empty()).then_some(authzid),
        login,
        password: text(password)?,
    })
}

/// Turns a decoded LOGIN username or password into text.
pub fn decode_login_field(field: Vec<u8>) -> Result<String, SaslError> {
    String::from_utf8(field).map_err(|_| SaslError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_splits_three_fields() {
        let c = decode_plain(b"\0user@example.com\0secret").unwrap();
        assert_eq!(c.login, "user@example.com");
        assert_eq!(c.password, "secret");
        assert_eq!(c.authzid, None);
        let c = decode_plain(b"other@example.com\0user@example.com\0pw").unwrap();
        assert_eq!(c.authzid.as_deref(), Some("other@example.com"));
    }

    #[test]
    fn plain_with_wrong_field_count_is_malformed() {
        assert_eq!(decode_plain(b"user\0pw"), Err(SaslError::Malformed));
        assert_eq!(decode_plain(b"\0u\0p\0x"), Err(SaslError::Malformed));
        assert_eq!(decode_plain(b"\0\0pw"), Err(SaslError::Malformed));
    }

    #[test]
    fn star_cancels_and_garbage_is_bad_base64() {
        assert_eq!(decode_response("*"), Err(SaslError::Cancelled));
        assert_eq!(decode_response("!!!"), Err(SaslError::BadBase64));
        assert_eq!(decode_response("="), Ok(Vec::new()));
        assert_eq!(decode_response("dXNlcg=="), Ok(b"user".to_vec()));
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = decode_plain(b"\0u\0hunter2").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
