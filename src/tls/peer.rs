//! Who may connect with a client certificate: `permitted_peers` entries
//! (a DNS name, a one-label wildcard, or a sha256 fingerprint of the
//! leaf), the names a certificate offers (DNS SANs, else the subject CN)
//! and the rustls verifier that checks the chain with webpki first, then
//! the entries. A refusal names the certificate's names, which the
//! handshake's warning then shows.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, UnixTime};

pub use crate::config::PeerPattern;

/// Matching a client certificate against a `permitted_peers` entry
/// (parsed with the config's other parsers, src/config/tls.rs).
impl PeerPattern {
    /// Whether a certificate with these (lower-case) names and this
    /// fingerprint matches. A wildcard in a certificate name matches
    /// nothing.
    fn matches(&self, names: &[String], fingerprint: &[u8]) -> bool {
        let names = names.iter().filter(|n| !n.contains('*'));
        match self {
            PeerPattern::Fingerprint(f) => f[..] == *fingerprint,
            PeerPattern::Name(want) => names.into_iter().any(|n| n == want),
            PeerPattern::Wildcard(suffix) => names.into_iter().any(|n| {
                n.split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix)
            }),
        }
    }
}

/// The names `permitted_peers` compares with: the DNS SANs, or the
/// subject CN when the certificate has no DNS SAN; lower case.
pub fn peer_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(|cn| cn.to_ascii_lowercase()),
        );
    }
    names
}

/// The SHA-256 of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .to_vec()
}

/// A chained client certificate that matches no `permitted_peers` entry.
#[derive(Debug)]
struct NotPermitted(Vec<String>);

impl fmt::Display for NotPermitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "certificate not permitted (names: {})", self.0.join(","))
    }
}

impl std::error::Error for NotPermitted {}

/// webpki's chain check, then `permitted_peers`.
#[derive(Debug)]
pub(super) struct PermittedVerifier {
    pub(super) inner: Arc<dyn ClientCertVerifier>,
    pub(super) permitted: Vec<PeerPattern>,
}

impl ClientCertVerifier for PermittedVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.permitted.is_empty() {
            return Ok(verified);
        }
        let names = peer_names(end_entity);
        let print = fingerprint(end_entity);
        if self.permitted.iter().any(|p| p.matches(&names, &print)) {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(NotPermitted(names))),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn matches(pattern: &str, cert_names: &[&str]) -> bool {
        PeerPattern::parse(pattern)
            .unwrap()
            .matches(&names(cert_names), &[0u8; 32])
    }

    #[test]
    fn wildcard_matches_exactly_one_label() {
        assert!(matches("*.example.net", &["a.example.net"]));
        assert!(!matches("*.example.net", &["example.net"]));
        assert!(!matches("*.example.net", &["a.b.example.net"]));
        assert!(matches("*.Example.NET", &["a.example.net"]));
    }

    #[test]
    fn names_compare_case_insensitively_and_certificate_wildcards_match_nothing() {
        assert!(matches("Host.Example.net", &["host.example.net"]));
        assert!(!matches("host.example.net", &["*.example.net"]));
        assert!(!matches("*.example.net", &["*.example.net"]));
    }

    #[test]
    fn fingerprints_accept_colons_and_either_case() {
        let print: Vec<u8> = (0u8..32).collect();
        let hex: Vec<String> = print.iter().map(|b| format!("{b:02X}")).collect();
        for text in [
            format!("sha256:{}", hex.join(":")),
            format!("SHA256:{}", hex.join("").to_lowercase()),
        ] {
            let p = PeerPattern::parse(&text).unwrap();
            assert!(p.matches(&[], &print), "{text}");
            let mut other = print.clone();
            other[0] ^= 1;
            assert!(!p.matches(&[], &other), "{text}");
        }
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["", "sha256:abcd", "a.*.example.net", "*.", "**.x"] {
            assert!(PeerPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
