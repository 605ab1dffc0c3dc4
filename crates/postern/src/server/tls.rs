//! TLS for the listeners: the certificate from the config, or a self-signed one made in
//! `data_dir` on first start, and a stream type that can be upgraded by STARTTLS.
//!
//! One crypto provider (ring) is named explicitly, so no dependency can drag in another.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read certificate: {message}")]
    Certificate { path: PathBuf, message: String },
    #[error("{path}: cannot read private key: {message}")]
    Key { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    #[error("certificate and key do not fit together: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the acceptor from `[tls]`, or from the self-signed pair in `data_dir/tls/`,
/// generating it when absent.
pub fn acceptor(config: &Config) -> Result<TlsAcceptor, TlsError> {
    let (cert, key) = match &config.tls {
        Some(tls) => (tls.cert.clone(), tls.key.clone()),
        None => ensure_self_signed(&config.data_dir.join("tls"), &config.hostname)?,
    };
    let certs = CertificateDer::pem_file_iter(&cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificate {
            path: cert.clone(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Certificate {
            path: cert,
            message: "no PEM certificate found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| TlsError::Key {
        path: key.clone(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // Session resumption for clients that reconnect for every message (PHP scripts):
    // stateless tickets, their keys rotated by rustls and renewed on reload. A resumed
    // TLS 1.3 session still runs an (EC)DHE exchange, so forward secrecy is kept.
    server.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// Returns the paths of a self-signed certificate for `hostname`, made once.
fn ensure_self_signed(dir: &Path, hostname: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let generated = rcgen::generate_simple_self_signed(vec![hostname.to_string()])
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    write_private(&key, generated.signing_key.serialize_pem().as_bytes()).map_err(io_err(&key))?;
    std::fs::write(&cert, generated.cert.pem()).map_err(io_err(&cert))?;
    tracing::info!(
        event = "tls_generated",
        cert = %cert.display(),
        msg = "no [tls] configured: made a self-signed certificate; set [tls] cert and key for a real one"
    );
    Ok((cert, key))
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ClientConnection, Connection, HandshakeKind, ServerConnection};

    /// Runs a handshake in memory and returns how the client saw it.
    fn handshake(server: &Arc<ServerConfig>, client: &Arc<rustls::ClientConfig>) -> HandshakeKind {
        let name = rustls_pki_types::ServerName::try_from("mail.example.com").unwrap();
        let mut client = Connection::from(ClientConnection::new(client.clone(), name).unwrap());
        let mut server = Connection::from(ServerConnection::new(server.clone()).unwrap());
        for _ in 0..10 {
            let mut bytes = Vec::new();
            client.write_tls(&mut bytes).unwrap();
            server.read_tls(&mut bytes.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            bytes.clear();
            server.write_tls(&mut bytes).unwrap();
            client.read_tls(&mut bytes.as_slice()).unwrap();
            client.process_new_packets().unwrap();
        }
        assert!(!client.is_handshaking());
        client.handshake_kind().unwrap()
    }

    #[test]
    fn a_returning_client_resumes_its_session() {
        let data = tempfile::tempdir().unwrap();
        let mut config = Config::development_defaults();
        config.data_dir = data.path().to_owned();
        let server = acceptor(&config).unwrap().config().clone();
        // Stateless tickets: resumption is not limited to rustls's 256 cached sessions.
        assert!(server.ticketer.enabled(), "no session tickets");
        let client = crate::stream::opportunistic_client_config().unwrap();
        assert_eq!(handshake(&server, &client), HandshakeKind::Full);
        assert_eq!(handshake(&server, &client), HandshakeKind::Resumed);
    }
}
