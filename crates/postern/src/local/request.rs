//! The little protocol between `postern sendmail` and the submission socket.
//!
//! The client sends one JSON line (a [`Request`]), then the raw message until it shuts
//! down its side of the socket. The server answers one JSON line (a [`Response`]) whose
//! `exit` is the sysexits.h code `sendmail` exits with. Everything the client says is
//! data: who it is comes from the kernel (SO_PEERCRED), never from this request.

use serde::{Deserialize, Serialize};

/// Longest request line; the message follows it.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

/// sysexits.h codes, as CONTRACT.md lists them for `sendmail`.
pub mod exit {
    pub const OK: u8 = 0;
    pub const USAGE: u8 = 64;
    pub const DATA_ERROR: u8 = 65;
    pub const NO_USER: u8 = 67;
    pub const UNAVAILABLE: u8 = 69;
    pub const SOFTWARE: u8 = 70;
    pub const TEMPORARY: u8 = 75;
    pub const NO_PERMISSION: u8 = 77;
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// `-f`: the envelope sender; `Some("")` is the null sender. Default: the user's
    /// address at our host name.
    pub sender: Option<String>,
    /// `-F`: the full name for a `From:` that postern adds.
    pub full_name: Option<String>,
    /// Recipients given as arguments.
    pub recipients: Vec<String>,
    /// `-t`: also take recipients from To, Cc and Bcc, and remove Bcc.
    pub extract_recipients: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub exit: u8,
    pub message: String,
}

impl Response {
    pub fn new(exit: u8, message: impl Into<String>) -> Response {
        Response {
            exit,
            message: message.into(),
        }
    }
}
