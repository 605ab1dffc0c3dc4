//! Password schemes: checks a password against a stored hash, and makes new hashes.
//!
//! Owns the mapping from Dovecot's `{SCHEME}` prefixes and crypt(3) `$id$` prefixes to the
//! hash implementations (sha-crypt, bcrypt, argon2). It knows nothing about files or users.
//!
//! Supported, with the scheme name matched case-insensitively:
//!
//! | prefix | hash | crypt(3) id |
//! | --- | --- | --- |
//! | `{SHA512-CRYPT}` | SHA-512-crypt | `$6$` |
//! | `{SHA256-CRYPT}` | SHA-256-crypt | `$5$` |
//! | `{BLF-CRYPT}` | bcrypt | `$2y$`, `$2b$`, `$2a$` |
//! | `{ARGON2ID}` | Argon2id (PHC string) | `$argon2id$` |
//! | `{ARGON2I}` | Argon2i (PHC string) | `$argon2i$` |
//! | `{CRYPT}` or no prefix | any of the above, chosen by its `$id$` | |
//! | `{PLAIN}` (also `{CLEAR}`, `{CLEARTEXT}`) | the password itself | |
//!
//! A prefix and the hash's `$id$` must agree (`{SHA512-CRYPT}$5$…` is malformed), so that a
//! mislabelled line is reported rather than silently read as something else. Traditional DES
//! crypt and MD5-crypt (`$1$`) are not supported: they are too weak to keep.
//!
//! Error messages never contain the stored hash or the password.

use argon2::{Argon2, PasswordHash};
use rand::Rng;
// sha-crypt and argon2 share `password-hash` 0.6, and so its traits and error type.
use sha_crypt::password_hash;
use sha_crypt::{PasswordHasher, PasswordVerifier, ShaCrypt};
use subtle::ConstantTimeEq;

/// Why a stored hash could not be used. Both are configuration mistakes, not wrong passwords.
#[derive(Debug, thiserror::Error)]
pub enum SchemeError {
    /// The `{SCHEME}` prefix or the crypt(3) `$id$` names a scheme postern does not support.
    #[error("unsupported password scheme {0}")]
    UnknownScheme(String),
    /// The scheme is known but the hash is not well-formed for it.
    #[error("malformed password hash: {0}")]
    Malformed(String),
}

/// Verifies a password against a stored hash with optional Dovecot `{SCHEME}` prefix.
///
/// Returns `Ok(false)` for a wrong password and an error when the stored hash cannot be used.
/// Slow by design (the hashes are): call it off the async runtime.
pub fn verify(stored: &str, password: &str) -> Result<bool, SchemeError> {
    let (scheme, hash) = split_scheme(stored)?;
    match scheme {
        Scheme::Plain if hash.is_empty() => Err(SchemeError::Malformed(
            "an empty {PLAIN} password would let anyone in".into(),
        )),
        Scheme::Plain => Ok(verify_plain(hash, password)),
        Scheme::Crypt(family) => verify_crypt(family, hash, password),
    }
}

/// A new `{SHA512-CRYPT}$6$SALT$HASH` hash with a random 16-character salt and the default
/// 5000 rounds, in the same form as `openssl passwd -6` or `doveadm pw -s SHA512-CRYPT`.
pub fn hash_sha512_crypt(password: &str) -> String {
    let mut salt = [0u8; 12];
    rand::rng().fill(&mut salt);
    let hash = ShaCrypt::SHA512
        .hash_password_with_salt(password.as_bytes(), &salt)
        // Invariant: hashing fails only for a salt that does not encode as an MCF field, and
        // 12 random bytes always encode as 16 characters of the crypt base64 alphabet.
        .expect("a 12-byte salt is always valid for SHA-512-crypt");
    // sha-crypt always writes `rounds=5000$`; glibc and openssl omit the default, and both
    // forms compute the same hash, so write the shorter, more familiar one.
    let hash = hash.as_str();
    let short = hash
        .strip_prefix(DEFAULT_ROUNDS_PREFIX)
        .map(|rest| format!("$6${rest}"));
    format!("{{SHA512-CRYPT}}{}", short.as_deref().unwrap_or(hash))
}

/// What sha-crypt writes in front of the salt for the default number of rounds.
const DEFAULT_ROUNDS_PREFIX: &str = "$6$rounds=5000$";

/// How a stored value is to be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Plain,
    Crypt(CryptId),
}

/// A crypt(3)-style hash family, named after its `$id$`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CryptId {
    Sha512,
    Sha256,
    Bcrypt,
    Argon2id,
    Argon2i,
    /// `{CRYPT}` or no prefix: the `$id$` decides.
    Any,
}

/// Splits `{SCHEME}hash` into the scheme and the hash; no prefix means crypt(3).
fn split_scheme(stored: &str) -> Result<(Scheme, &str), SchemeError> {
    let Some(rest) = stored.strip_prefix('{') else {
        return Ok((Scheme::Crypt(CryptId::Any), stored));
    };
    let Some((name, hash)) = rest.split_once('}') else {
        return Err(SchemeError::Malformed("'{' without a closing '}'".into()));
    };
    Ok((scheme_by_name(name)?, hash))
}

/// Maps a Dovecot scheme name, case-insensitively.
fn scheme_by_name(name: &str) -> Result<Scheme, SchemeError> {
    let scheme = match name.to_ascii_uppercase().as_str() {
        "SHA512-CRYPT" => Scheme::Crypt(CryptId::Sha512),
        "SHA256-CRYPT" => Scheme::Crypt(CryptId::Sha256),
        "BLF-CRYPT" => Scheme::Crypt(CryptId::Bcrypt),
        "ARGON2ID" => Scheme::Crypt(CryptId::Argon2id),
        "ARGON2I" => Scheme::Crypt(CryptId::Argon2i),
        "CRYPT" => Scheme::Crypt(CryptId::Any),
        "PLAIN" | "CLEAR" | "CLEARTEXT" => Scheme::Plain,
        _ => return Err(SchemeError::UnknownScheme(format!("{{{name}}}"))),
    };
    Ok(scheme)
}

/// Compares a plaintext password in constant time (for equal lengths), and warns.
fn verify_plain(stored: &str, password: &str) -> bool {
    tracing::warn!(
        event = "plain_password",
        "a {{PLAIN}} password was checked: plaintext passwords should be rehashed \
         (`postern user passwd`)"
    );
    stored.as_bytes().ct_eq(password.as_bytes()).into()
}

/// Checks a `$id$…` hash, after making sure its id matches the declared family.
fn verify_crypt(declared: CryptId, hash: &str, password: &str) -> Result<bool, SchemeError> {
    let actual = crypt_id(hash)?;
    if declared != CryptId::Any && declared != actual {
        return Err(SchemeError::Malformed(format!(
            "the {{SCHEME}} prefix says {declared:?} but the hash is {actual:?}"
        )));
    }
    let password = password.as_bytes();
    match actual {
        CryptId::Sha512 | CryptId::Sha256 => verify_sha_crypt(actual, hash, password),
        CryptId::Argon2id | CryptId::Argon2i => verify_argon2(hash, password),
        CryptId::Bcrypt => bcrypt::verify(password, hash)
            .map_err(|e| SchemeError::Malformed(format!("bcrypt: {e}"))),
        // `crypt_id` never answers `Any`.
        CryptId::Any => Err(SchemeError::Malformed("no crypt(3) id".into())),
    }
}

/// Reads the `$id$` of a crypt(3) hash.
fn crypt_id(hash: &str) -> Result<CryptId, SchemeError> {
    let id = hash
        .strip_prefix('$')
        .and_then(|rest| rest.split_once('$'))
        .map(|(id, _)| id);
    let Some(id) = id else {
        return Err(SchemeError::UnknownScheme(
            "(not a {SCHEME} prefix nor a crypt(3) $id$ hash)".into(),
        ));
    };
    let family = match id {
        "6" => CryptId::Sha512,
        "5" => CryptId::Sha256,
        "2y" | "2b" | "2a" => CryptId::Bcrypt,
        "argon2id" => CryptId::Argon2id,
        "argon2i" => CryptId::Argon2i,
        _ => return Err(SchemeError::UnknownScheme(describe_id(id))),
    };
    Ok(family)
}

/// Names an unsupported `$id$` in an error, without echoing anything that could be a secret.
fn describe_id(id: &str) -> String {
    let printable = id.len() <= 12
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if printable {
        format!("crypt(3) ${id}$")
    } else {
        "(unrecognised crypt(3) id)".into()
    }
}

/// Checks a `$6$` or `$5$` hash. The digest length is checked here because sha-crypt reads a
/// short or long digest as a mere mismatch, which would hide a truncated line.
fn verify_sha_crypt(id: CryptId, hash: &str, password: &[u8]) -> Result<bool, SchemeError> {
    let expected_len = if id == CryptId::Sha512 { 86 } else { 43 };
    let digest_len = hash.rsplit('$').next().map_or(0, str::len);
    if digest_len != expected_len {
        return Err(SchemeError::Malformed(format!(
            "the digest has {digest_len} characters, expected {expected_len}"
        )));
    }
    password_hash_outcome(ShaCrypt::default().verify_password(password, hash))
}

/// Checks an Argon2 PHC string. A string without salt or digest is malformed (the
/// `password-hash` crate would report it as a mere mismatch).
fn verify_argon2(hash: &str, password: &[u8]) -> Result<bool, SchemeError> {
    let parsed = PasswordHash::new(hash).map_err(|e| SchemeError::Malformed(e.to_string()))?;
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err(SchemeError::Malformed(
            "the Argon2 string has no salt or no digest".into(),
        ));
    }
    password_hash_outcome(Argon2::default().verify_password(password, &parsed))
}

/// Maps the `password-hash` crate's verification result: a mismatch is `false`, anything
/// else means the stored hash is unusable.
fn password_hash_outcome(result: password_hash::Result<()>) -> Result<bool, SchemeError> {
    match result {
        Ok(()) => Ok(true),
        Err(password_hash::Error::PasswordInvalid) => Ok(false),
        Err(e) => Err(SchemeError::Malformed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Outside vectors. Each was made by another implementation, not by this code:
    // - `openssl passwd -6 -salt saltsalt secret` (OpenSSL 3.0.19)
    const SHA512_SECRET: &str = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
    // - `openssl passwd -6 -salt 'rounds=10000$roundsalt' secret`
    const SHA512_ROUNDS_SECRET: &str = "$6$rounds=10000$roundsalt$FF8gTAPk6fDkzddgXk3ExQY6VseKRuyJ8JlMjEybiRw9QL9Gu2AWV/IurQRsdk76m.WslkHULDeqF37ILdYlb/";
    // - `openssl passwd -6 -salt Zq3kWt8n 'pässwörd with spaces'` (UTF-8)
    const SHA512_UTF8: &str = "$6$Zq3kWt8n$EaHI8GjJFV6q03FjfqHu6Ds/wSTHDNKhmb/BkOeOiBfWF77uh.EICtKVeAWgbSNVYElAXFLDZhMSLQeUdpytR0";
    // - `openssl passwd -5 -salt saltsalt secret`
    const SHA256_SECRET: &str = "$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA";
    // - PHP manual, password_verify() example: password "rasmuslerdorf"
    const BCRYPT_2Y_PHP: &str = "$2y$10$.vGA1O9wmRjrwAVXD98HNOgsNpDczlqm3Jq7KnEd1rVAGv3Fykk1a";
    // - Python bcrypt 5.0.0: hashpw(b"secret", b"$2b$05$abcdefghijklmnopqrstuu")
    const BCRYPT_2B_SECRET: &str = "$2b$05$abcdefghijklmnopqrstuuOQiyCxlgf/oeuTqixKmWdcYUh4Hjl0a";
    // - Python bcrypt 5.0.0: hashpw(b"secret", gensalt(rounds=5, prefix=b"2a"))
    const BCRYPT_2A_SECRET: &str = "$2a$05$hp9472IjfZUR5PcZY1bcSufTW7H41MeUXh2ZyzuVM2eVUHwVH2WsC";
    // - Python argon2-cffi 25.1.0: PasswordHasher(time_cost=2, memory_cost=256,
    //   parallelism=1, type=Type.ID).hash("secret")
    const ARGON2ID_SECRET: &str = "$argon2id$v=19$m=256,t=2,p=1$TzEai7SoivKe0hUIUUsKvg$6wS1Hfula3espLZ8Ss+XPJGcFKnHmNwvz7PBoAFrOzw";
    // - the same with type=Type.I
    const ARGON2I_SECRET: &str = "$argon2i$v=19$m=256,t=2,p=1$KA2u0M6GF2VM22wZ6I8GTg$tVCkEg4tYMqIeQSBN6nOPnZrRRoBLzyUOwb13bT+7U0";
    // - the same with time_cost=1, memory_cost=64, parallelism=2, type=Type.ID
    const ARGON2ID_P2_SECRET: &str = "$argon2id$v=19$m=64,t=1,p=2$N/sbQCcukf/UmEOEUfrJyg$Y7RbgqSDj3C/rc4wg31YxvJnJMoRAwuQrbQy+C/W5KA";

    fn accepts(stored: &str, password: &str) -> bool {
        match verify(stored, password) {
            Ok(ok) => ok,
            Err(e) => panic!("verify({stored:?}) failed: {e}"),
        }
    }

    /// Each outside vector, with the prefix Dovecot would write and without any prefix.
    fn vectors() -> Vec<(&'static str, &'static str, &'static str)> {
        vec![
            ("SHA512-CRYPT", SHA512_SECRET, "secret"),
            ("SHA512-CRYPT", SHA512_ROUNDS_SECRET, "secret"),
            ("SHA512-CRYPT", SHA512_UTF8, "pässwörd with spaces"),
            ("SHA256-CRYPT", SHA256_SECRET, "secret"),
            ("BLF-CRYPT", BCRYPT_2B_SECRET, "secret"),
            ("BLF-CRYPT", BCRYPT_2A_SECRET, "secret"),
            ("ARGON2ID", ARGON2ID_SECRET, "secret"),
            ("ARGON2ID", ARGON2ID_P2_SECRET, "secret"),
            ("ARGON2I", ARGON2I_SECRET, "secret"),
        ]
    }

    #[test]
    fn outside_vectors_accept_the_right_password_with_and_without_prefix() {
        for (scheme, hash, password) in vectors() {
            assert!(accepts(hash, password), "bare {hash}");
            assert!(
                accepts(&format!("{{{scheme}}}{hash}"), password),
                "{scheme}"
            );
            assert!(
                accepts(&format!("{{CRYPT}}{hash}"), password),
                "CRYPT {hash}"
            );
        }
    }

    #[test]
    fn outside_vectors_reject_wrong_passwords() {
        for (scheme, hash, password) in vectors() {
            let prefixed = format!("{{{scheme}}}{hash}");
            for wrong in ["", "Secret", "secret ", "wrong", &format!("{password}x")] {
                assert!(!accepts(hash, wrong), "bare {hash} with {wrong:?}");
                assert!(!accepts(&prefixed, wrong), "{prefixed} with {wrong:?}");
            }
        }
    }

    #[test]
    fn php_manual_bcrypt_2y_vector() {
        assert!(accepts(BCRYPT_2Y_PHP, "rasmuslerdorf"));
        assert!(accepts(
            &format!("{{BLF-CRYPT}}{BCRYPT_2Y_PHP}"),
            "rasmuslerdorf"
        ));
        assert!(!accepts(BCRYPT_2Y_PHP, "rasmuslerdorF"));
    }

    #[test]
    fn scheme_names_are_case_insensitive() {
        let lower = format!("{{sha512-crypt}}{SHA512_SECRET}");
        let mixed = format!("{{Blf-Crypt}}{BCRYPT_2B_SECRET}");
        let argon = format!("{{argon2id}}{ARGON2ID_SECRET}");
        assert!(accepts(&lower, "secret"));
        assert!(accepts(&mixed, "secret"));
        assert!(accepts(&argon, "secret"));
        assert!(accepts("{plain}secret", "secret"));
    }

    #[test]
    fn plain_compares_exactly() {
        assert!(accepts("{PLAIN}secret", "secret"));
        assert!(accepts("{CLEAR}secret", "secret"));
        assert!(accepts("{CLEARTEXT}secret", "secret"));
        assert!(!accepts("{PLAIN}secret", "Secret"));
        assert!(!accepts("{PLAIN}secret", "secre"));
        assert!(!accepts("{PLAIN}secret", "secrets"));
        assert!(!accepts("{PLAIN}secret", ""));
    }

    #[test]
    fn unknown_schemes_are_errors() {
        for stored in [
            "{SSHA}abcdef",
            "{MD5-CRYPT}$1$salt$hash",
            "$1$saltsalt$qjQvpuGvlkq5u4DpV7R0u.",
            "$2x$05$abcdefghijklmnopqrstuuOQiyCxlgf/oeuTqixKmWdcYUh4Hjl0a",
            "$argon2d$v=19$m=256,t=2,p=1$TzEai7SoivKe0hUIUUsKvg$6wS1Hfula3espLZ8Ss+XPJGcFKnHmNwvz7PBoAFrOzw",
            "abJnggxhB/yWI",
            "secret",
            "",
        ] {
            assert!(
                matches!(verify(stored, "secret"), Err(SchemeError::UnknownScheme(_))),
                "{stored:?}"
            );
        }
    }

    #[test]
    fn unknown_scheme_errors_do_not_echo_a_bare_value() {
        let err = verify("hunter2hunter2", "x").map(|_| ()).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = verify("$hunter2 hunter2$x", "x").map(|_| ()).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn malformed_hashes_are_errors_not_panics() {
        for stored in [
            "{SHA512-CRYPT",
            "{PLAIN}",
            "{SHA512-CRYPT}$6$",
            "{SHA512-CRYPT}$6$saltsalt",
            "$6$saltsalt$",
            "$6$saltsalt$tooshort",
            "$6$salt salt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1",
            "$6$rounds=12$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1",
            "$6$a$b$c$d",
            "$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sAAAAA",
            "$2y$10$short",
            "$2y$99$abcdefghijklmnopqrstuuOQiyCxlgf/oeuTqixKmWdcYUh4Hjl0a",
            "$2y$xx$abcdefghijklmnopqrstuuOQiyCxlgf/oeuTqixKmWdcYUh4Hjl0a",
            "$2b$05$abcdefghijklmnopqrstuuOQiyCxlgf/oeuTqixKmWdcYUh4Hjlé",
            "$argon2id$v=19$m=256,t=2,p=1$TzEai7SoivKe0hUIUUsKvg",
            "$argon2id$v=19$m=1,t=2,p=1$TzEai7SoivKe0hUIUUsKvg$6wS1Hfula3espLZ8Ss+XPJGcFKnHmNwvz7PBoAFrOzw",
            "$argon2id$v=19$m=256,t=0,p=1$TzEai7SoivKe0hUIUUsKvg$6wS1Hfula3espLZ8Ss+XPJGcFKnHmNwvz7PBoAFrOzw",
            "$argon2id$garbage",
            // A prefix that disagrees with the hash's $id$.
            &format!("{{SHA256-CRYPT}}{SHA512_SECRET}"),
            &format!("{{ARGON2I}}{ARGON2ID_SECRET}"),
            &format!("{{BLF-CRYPT}}{SHA512_SECRET}"),
            &format!("{{SHA512-CRYPT}}{BCRYPT_2B_SECRET}"),
        ] {
            assert!(
                matches!(verify(stored, "secret"), Err(SchemeError::Malformed(_))),
                "{stored:?} gave {:?}",
                verify(stored, "secret")
            );
        }
    }

    #[test]
    fn new_hashes_look_like_openssl_passwd_6_and_verify() {
        let stored = hash_sha512_crypt("correct horse");
        let hash = stored.strip_prefix("{SHA512-CRYPT}$6$").unwrap();
        let (salt, digest) = hash.split_once('$').unwrap();
        let crypt64 = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
        };
        assert_eq!(salt.len(), 16);
        assert_eq!(digest.len(), 86);
        assert!(crypt64(salt) && crypt64(digest), "{stored}");
        assert!(accepts(&stored, "correct horse"));
        assert!(!accepts(&stored, "correct horsE"));
    }

    #[test]
    fn new_hashes_use_fresh_salts() {
        assert_ne!(hash_sha512_crypt("same"), hash_sha512_crypt("same"));
    }
}
