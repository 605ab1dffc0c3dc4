//! DKIM key files: generation (`postern dkim keygen`), loading, and the texts an
//! administrator publishes (the DNS TXT record) and pastes (the `[[dkim]]` table).
//!
//! Keys are written as PKCS#8 PEM under `data_dir/dkim/<domain>.<selector>.key`, the
//! directory mode 0700 and the file 0600, and never overwritten. Loading also accepts
//! PKCS#1 RSA keys and PKCS#8 v1 Ed25519 keys (as OpenSSL and opendkim-genkey write
//! them). The public key, and so the DNS record, is always derived from the private
//! key file by the same code that loads the key for signing.
//!
//! This module must not sign (see `sign`), read the configuration, or print anything.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use mail_auth::common::crypto::{DkimKey as SigningKey, Ed25519Key, RsaKey, Sha256};
use rsa::pkcs1::DecodeRsaPublicKey as _;
use rsa::pkcs8::der::pem::LineEnding;
use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, ObjectIdentifier};
use rsa::traits::PublicKeyParts as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::DkimError;

/// The kinds of key `postern dkim keygen` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// RSA, 2048 bits (`rsa-sha256`): what every receiver verifies.
    Rsa2048,
    /// Ed25519 (`ed25519-sha256`, RFC 8463): short, but not verified everywhere yet;
    /// use it beside an RSA key, not instead of one.
    Ed25519,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Rsa2048 => "rsa2048",
            Algorithm::Ed25519 => "ed25519",
        }
    }
}

/// A public key as DKIM publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// The DER SubjectPublicKeyInfo (what `openssl rsa -pubout` gives), and the
    /// modulus size.
    Rsa { spki: Vec<u8>, bits: usize },
    /// The 32 raw bytes (RFC 8463).
    Ed25519(Vec<u8>),
}

impl PublicKey {
    /// The `k=` tag of the DNS record.
    pub fn k(&self) -> &'static str {
        match self {
            PublicKey::Rsa { .. } => "rsa",
            PublicKey::Ed25519(_) => "ed25519",
        }
    }

    /// For people: "rsa, 2048 bits" or "ed25519".
    pub fn describe(&self) -> String {
        match self {
            PublicKey::Rsa { bits, .. } => format!("rsa, {bits} bits"),
            PublicKey::Ed25519(_) => "ed25519".to_string(),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            PublicKey::Rsa { spki, .. } => spki,
            PublicKey::Ed25519(raw) => raw,
        }
    }
}

/// A key file and what is published for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    pub path: PathBuf,
    /// Lower case, ASCII (an internationalized name in its `xn--` form).
    pub domain: String,
    /// Lower case.
    pub selector: String,
    pub public: PublicKey,
}

/// Where `keygen` puts the key of `domain` and `selector`: `data_dir/dkim/<domain>.<selector>.key`.
/// Both names must have passed [`domain_name`] and [`selector_name`].
pub fn key_path(data_dir: &Path, domain: &str, selector: &str) -> PathBuf {
    data_dir
        .join("dkim")
        .join(format!("{domain}.{selector}.key"))
}

/// Makes a new private key, writes it to [`key_path`] (directory 0700, file 0600) and
/// returns where it is with its public key. An existing file is never overwritten.
pub fn keygen(
    data_dir: &Path,
    domain: &str,
    selector: &str,
    algorithm: Algorithm,
) -> Result<KeyFile, DkimError> {
    let domain = domain_name(domain)?;
    let selector = selector_name(selector)?;
    let dir = data_dir.join("dkim");
    let path = key_path(data_dir, &domain, &selector);
    if path.symlink_metadata().is_ok() {
        return Err(DkimError::Exists(path));
    }
    let pem = generate(algorithm)?;
    // The public key comes from the text written, by the code that loads keys.
    let (_, public) = parse_private(pem.as_bytes()).map_err(|reason| DkimError::Generate {
        algorithm: algorithm.name(),
        reason,
    })?;
    private_dir(&dir)?;
    write_new(&path, pem.as_bytes())?;
    Ok(KeyFile {
        path: std::path::absolute(&path).unwrap_or(path),
        domain,
        selector,
        public,
    })
}

/// Reads a private key file and derives its public key (for `postern dkim show`).
pub fn read_key(domain: &str, selector: &str, path: &Path) -> Result<KeyFile, DkimError> {
    let (_, public) = load(domain, selector, path)?;
    Ok(KeyFile {
        path: path.to_path_buf(),
        domain: domain_name(domain)?,
        selector: selector_name(selector)?,
        public,
    })
}

/// Reads a private key file for signing, with its public key.
pub(crate) fn load(
    domain: &str,
    selector: &str,
    path: &Path,
) -> Result<(SigningKey, PublicKey), DkimError> {
    let bad = |reason: String| DkimError::BadKey {
        path: path.to_path_buf(),
        domain: domain.to_string(),
        selector: selector.to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| {
        bad(match e.kind() {
            std::io::ErrorKind::NotFound => "the file does not exist".to_string(),
            std::io::ErrorKind::PermissionDenied => {
                "permission denied (the server's user must be able to read it)".to_string()
            }
            _ => format!("cannot read it: {e}"),
        })
    })?;
    parse_private(&pem).map_err(bad)
}

/// The TXT record to publish, as one zone-file line:
/// `<selector>._domainkey.<domain>. IN TXT "v=DKIM1; k=rsa; p=…"`, the value split into
/// strings of at most 255 bytes (an RSA-2048 value needs two).
pub fn dns_record(key: &KeyFile) -> String {
    let value = txt_value(&key.public);
    let strings: Vec<String> = value
        .as_bytes()
        .chunks(255)
        // The value is base64 and ASCII tags: no quote or backslash to escape.
        .map(|chunk| format!("\"{}\"", String::from_utf8_lossy(chunk)))
        .collect();
    format!(
        "{}. IN TXT {}",
        record_name(&key.domain, &key.selector),
        strings.join(" ")
    )
}

/// The owner name of the record, without the final dot: `<selector>._domainkey.<domain>`.
pub fn record_name(domain: &str, selector: &str) -> String {
    format!("{selector}._domainkey.{domain}")
}

/// The record's value as one string (what a DNS provider's web form asks for).
pub fn txt_value(public: &PublicKey) -> String {
    format!(
        "v=DKIM1; k={}; p={}",
        public.k(),
        base64::engine::general_purpose::STANDARD.encode(public.bytes())
    )
}

/// The `[[dkim]]` table that configures a key.
pub fn config_table(domain: &str, selector: &str, path: &Path) -> String {
    let string = |s: &str| toml::Value::String(s.to_string()).to_string();
    format!(
        "[[dkim]]\ndomain = {}\nselector = {}\nkey = {}\n",
        string(domain),
        string(selector),
        string(&path.display().to_string())
    )
}

/// A signing domain as DKIM writes it (`d=`): lower case, the final dot removed, an
/// internationalized name in its ASCII (`xn--`) form; letters, digits and hyphens in
/// dot-separated labels.
pub fn domain_name(domain: &str) -> Result<String, DkimError> {
    let ascii = mail_auth::common::to_a_label(domain.trim_end_matches('.')).to_ascii_lowercase();
    check_labels(&ascii).map_err(|reason| DkimError::InvalidName {
        what: "the domain",
        value: domain.to_string(),
        reason,
    })?;
    Ok(ascii)
}

/// A selector (`s=`): lower case; letters, digits and hyphens in dot-separated labels.
pub fn selector_name(selector: &str) -> Result<String, DkimError> {
    let lower = selector.to_ascii_lowercase();
    check_labels(&lower).map_err(|reason| DkimError::InvalidName {
        what: "the selector",
        value: selector.to_string(),
        reason,
    })?;
    Ok(lower)
}

/// DNS host-name rules (RFC 1035 §2.3.1, RFC 6376 §3.1). They also keep the names
/// safe in a file name: no `/`, no `..`.
fn check_labels(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 253 {
        return Err("it is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("it has an empty label (two dots in a row, or a leading dot)");
        }
        if label.len() > 63 {
            return Err("a label is longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("only letters, digits, hyphens and dots are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label starts or ends with a hyphen");
        }
    }
    Ok(())
}

/// A new private key in PKCS#8 PEM.
fn generate(algorithm: Algorithm) -> Result<String, DkimError> {
    let failed = |reason: String| DkimError::Generate {
        algorithm: algorithm.name(),
        reason,
    };
    match algorithm {
        Algorithm::Rsa2048 => {
            let key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048)
                .map_err(|e| failed(e.to_string()))?;
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| failed(e.to_string()))?;
            Ok(pem.as_str().to_string())
        }
        Algorithm::Ed25519 => {
            // ring writes PKCS#8 v2 (with the public key), which OpenSSL 3 cannot read;
            // written as v1 (RFC 8410), the key also serves other tools.
            let v2 = Ed25519Key::generate_pkcs8().map_err(|e| failed(e.to_string()))?;
            let v2 =
                rsa::pkcs8::der::SecretDocument::try_from(v2).map_err(|e| failed(e.to_string()))?;
            let mut info = v2
                .decode_msg::<rsa::pkcs8::PrivateKeyInfoRef<'_>>()
                .map_err(|e| failed(e.to_string()))?;
            info.public_key = None;
            let document = rsa::pkcs8::der::SecretDocument::try_from(&info)
                .map_err(|e| failed(e.to_string()))?;
            let pem = document
                .to_pem("PRIVATE KEY", LineEnding::LF)
                .map_err(|e| failed(e.to_string()))?;
            Ok(pem.as_str().to_string())
        }
    }
}

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// Parses a PEM private key: the signing key and its public key, or why not.
fn parse_private(pem: &[u8]) -> Result<(SigningKey, PublicKey), String> {
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => "it holds no PEM private key".to_string(),
        e => format!("it is not valid PEM ({e})"),
    })?;
    match der {
        PrivateKeyDer::Pkcs1(der) => rsa_key(PrivateKeyDer::Pkcs1(der)),
        PrivateKeyDer::Pkcs8(der) => {
            let info = rsa::pkcs8::PrivateKeyInfoRef::try_from(der.secret_pkcs8_der())
                .map_err(|e| format!("it is not a valid PKCS#8 key ({e})"))?;
            let oid = info.algorithm.oid;
            if oid == RSA_ENCRYPTION {
                rsa_key(PrivateKeyDer::Pkcs8(der))
            } else if oid == ED25519 {
                ed25519_key(&der)
            } else {
                Err(format!("it is a key of another kind (algorithm {oid})"))
            }
        }
        PrivateKeyDer::Sec1(_) => Err("it is an elliptic-curve (SEC1) key".to_string()),
        _ => Err("it is a key of an unknown kind".to_string()),
    }
}

fn rsa_key(der: PrivateKeyDer<'_>) -> Result<(SigningKey, PublicKey), String> {
    let key = RsaKey::<Sha256>::from_key_der(der)
        .map_err(|e| format!("the RSA key is rejected ({e})"))?;
    let pkcs1 = key.public_key();
    let public = rsa::PublicKey::from_pkcs1_der(&pkcs1)
        .map_err(|e| format!("the RSA public key cannot be encoded ({e})"))?;
    let spki = public
        .to_public_key_der()
        .map_err(|e| format!("the RSA public key cannot be encoded ({e})"))?;
    Ok((
        SigningKey::Rsa(key),
        PublicKey::Rsa {
            spki: spki.as_bytes().to_vec(),
            bits: public.size() * 8,
        },
    ))
}

fn ed25519_key(der: &PrivatePkcs8KeyDer<'_>) -> Result<(SigningKey, PublicKey), String> {
    // v1 documents (OpenSSL's) hold no public key: ring derives it.
    let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_pkcs8_der())
        .map_err(|e| format!("the Ed25519 key is rejected ({e})"))?;
    let public = PublicKey::Ed25519(key.public_key());
    Ok((SigningKey::Ed25519(key), public))
}

/// Creates `dir` (and its parents) for private keys: mode 0700, not a link.
fn private_dir(dir: &Path) -> Result<(), DkimError> {
    let io = |action, source| DkimError::Io {
        action,
        path: dir.to_path_buf(),
        source,
    };
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io("create the directory above", e))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("create", e)),
    }
    let meta = dir.symlink_metadata().map_err(|e| io("inspect", e))?;
    if !meta.is_dir() {
        return Err(io(
            "use",
            std::io::Error::other("it is not a directory (a link, or a file); remove it"),
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io("make private (mode 0700)", e))?;
    }
    Ok(())
}

/// Writes a new file with mode 0600, durably; fails when anything is at `path`.
fn write_new(path: &Path, contents: &[u8]) -> Result<(), DkimError> {
    let io = |action, source| DkimError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                DkimError::Exists(path.to_path_buf())
            } else {
                io("create", e)
            }
        })?;
    let written = file
        .write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| io("write", e));
    if written.is_err() {
        let _ = std::fs::remove_file(path);
        return written;
    }
    // The name itself must survive a crash too.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync the directory of", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_lowered() {
        assert_eq!(domain_name("Example.COM.").unwrap(), "example.com");
        assert_eq!(
            domain_name("bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(selector_name("S2026-01").unwrap(), "s2026-01");
        for bad in ["", "../etc", "a/b", "a..b", ".a", "-a.com", "a b", "a_b"] {
            assert!(selector_name(bad).is_err(), "{bad:?} accepted");
            assert!(domain_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(domain_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn an_rsa_record_is_split_into_strings_of_255_bytes() {
        let key = KeyFile {
            path: PathBuf::from("/k"),
            domain: "example.com".into(),
            selector: "s1".into(),
            public: PublicKey::Rsa {
                spki: vec![7; 294],
                bits: 2048,
            },
        };
        let record = dns_record(&key);
        let (name, strings) = record.split_once(" IN TXT ").unwrap();
        assert_eq!(name, "s1._domainkey.example.com.");
        let parts: Vec<&str> = strings
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .unwrap()
            .split("\" \"")
            .collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].len(), 255);
        assert_eq!(parts.concat(), txt_value(&key.public));
        assert!(parts[0].starts_with("v=DKIM1; k=rsa; p=BwcH"));
    }

    #[test]
    fn an_ed25519_record_is_one_string() {
        let key = KeyFile {
            path: PathBuf::from("/k"),
            domain: "example.com".into(),
            selector: "ed".into(),
            public: PublicKey::Ed25519(vec![0; 32]),
        };
        assert_eq!(
            dns_record(&key),
            "ed._domainkey.example.com. IN TXT \
             \"v=DKIM1; k=ed25519; p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\""
        );
    }

    #[test]
    fn the_config_table_is_valid_toml() {
        let text = config_table("example.com", "s1", Path::new("/data/dk\"im/a\\b.key"));
        let value: toml::Table = toml::from_str(&text).unwrap();
        let table = &value["dkim"].as_array().unwrap()[0];
        assert_eq!(table["domain"].as_str(), Some("example.com"));
        assert_eq!(table["selector"].as_str(), Some("s1"));
        assert_eq!(table["key"].as_str(), Some("/data/dk\"im/a\\b.key"));
    }

    #[test]
    fn keygen_writes_a_private_key_once() {
        let dir = tempfile::tempdir().unwrap();
        for (selector, algorithm) in [("r", Algorithm::Rsa2048), ("e", Algorithm::Ed25519)] {
            let key = keygen(dir.path(), "Example.com", selector, algorithm).unwrap();
            assert_eq!(
                key.path,
                dir.path().join(format!("dkim/example.com.{selector}.key"))
            );
            let mode = std::fs::metadata(&key.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let again = read_key("example.com", selector, &key.path).unwrap();
            assert_eq!(again.public, key.public);
            let before = std::fs::read(&key.path).unwrap();
            let err = keygen(dir.path(), "example.com", selector, algorithm).unwrap_err();
            assert!(matches!(err, DkimError::Exists(_)), "{err}");
            assert_eq!(std::fs::read(&key.path).unwrap(), before);
        }
        let mode = std::fs::metadata(dir.path().join("dkim"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn generated_keys_have_the_promised_shape() {
        let dir = tempfile::tempdir().unwrap();
        let rsa = keygen(dir.path(), "example.com", "r", Algorithm::Rsa2048).unwrap();
        assert!(matches!(rsa.public, PublicKey::Rsa { bits: 2048, .. }));
        let pem = std::fs::read_to_string(&rsa.path).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        let ed = keygen(dir.path(), "example.com", "e", Algorithm::Ed25519).unwrap();
        assert!(matches!(&ed.public, PublicKey::Ed25519(raw) if raw.len() == 32));
    }

    #[test]
    fn a_pkcs1_rsa_key_loads_and_publishes_its_subject_public_key_info() {
        use rsa::pkcs1::EncodeRsaPrivateKey as _;
        let key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap();
        let pem = key.to_pkcs1_pem(LineEnding::LF).unwrap();
        assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let (_, public) = parse_private(pem.as_bytes()).unwrap();
        let spki = key.to_public_key().to_public_key_der().unwrap();
        assert_eq!(
            public,
            PublicKey::Rsa {
                spki: spki.as_bytes().to_vec(),
                bits: 2048
            }
        );
    }

    #[test]
    fn foreign_key_formats_load_or_say_why_not() {
        // OpenSSL's PKCS#8 v1 Ed25519 key (RFC 8410 §10.3's example).
        let v1 = "-----BEGIN PRIVATE KEY-----\n\
                  MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
                  -----END PRIVATE KEY-----\n";
        let (_, public) = parse_private(v1.as_bytes()).unwrap();
        assert_eq!(
            txt_value(&public),
            "v=DKIM1; k=ed25519; p=Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE="
        );
        // An EC key (openssl ecparam -genkey -name prime256v1).
        let ec = "-----BEGIN EC PRIVATE KEY-----\n\
                  MHcCAQEEIKFBJ87AAdqDGyOyFWLQokWwemQjuUw2jvCyPWSKpSR5oAoGCCqGSM49\n\
                  AwEHoUQDQgAEuJlGhxu3e/uhDnDYyu24y4azFBkade6+/JXhRXlibNBIDHOXu72R\n\
                  qpQibdIew0o9ywIKSiYvrYygC0uUgukCIA==\n\
                  -----END EC PRIVATE KEY-----\n";
        let err = parse_private(ec.as_bytes()).err().unwrap();
        assert!(err.contains("elliptic-curve"), "{err}");
        let err = parse_private(b"not a key").err().unwrap();
        assert!(err.contains("no PEM private key"), "{err}");
        let err = load("example.com", "s1", Path::new("/nonexistent/k.key"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("/nonexistent/k.key"), "{err}");
        assert!(err.contains("does not exist"), "{err}");
        assert!(err.contains("postern dkim keygen"), "{err}");
    }
}
