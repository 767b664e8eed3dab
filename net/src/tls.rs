//! TLS 1.3 with raw public keys (RFC 7250): a node's TLS key is its
//! OpenSSH ed25519 node key. Both ends present their key and prove it in
//! the handshake; there is no certificate, CA or name. Who may connect is
//! a [`Gate`] over the peer's key; a client may pin the server's key by its
//! `SHA256:…` fingerprint, the way ssh does.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    CryptoProvider, WebPkiSupportedAlgorithms, verify_tls13_signature_with_raw_key,
};
use rustls::pki_types::{
    CertificateDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use utter_formats::{Keypair, Signer};

/// The DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410): the
/// 32-byte key follows.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// The DER prefix of an ed25519 PKCS#8 v1 private key: the seed follows.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The name a client gives the server (raw public keys carry none).
pub const SERVER_NAME: &str = "utter.invalid";

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the configuration or the key.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The SubjectPublicKeyInfo of an ed25519 key.
pub fn spki(key: &Signer) -> Vec<u8> {
    let mut out = SPKI_PREFIX.to_vec();
    out.extend_from_slice(&key.ed25519_bytes());
    out
}

/// The ed25519 key of a SubjectPublicKeyInfo, if that is what it is.
pub fn key_of_spki(spki: &[u8]) -> Option<Signer> {
    let key = spki.strip_prefix(&SPKI_PREFIX[..])?;
    let bytes: [u8; 32] = key.try_into().ok()?;
    Some(Signer::from_ed25519(bytes))
}

/// Whether this CPU has AES instructions; without them ChaCha20-Poly1305
/// is several times faster (a Raspberry Pi 4 has none).
pub fn has_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// ring's provider, its TLS 1.3 suites ordered for this CPU: AES-GCM first
/// where the CPU has AES, else ChaCha20-Poly1305. (QUIC needs AES-128-GCM
/// present for its initial packets either way.)
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    let chacha_first = !has_aes();
    p.cipher_suites.retain(|s| s.tls13().is_some());
    p.cipher_suites.sort_by_key(|s| {
        let chacha = s.suite() == rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256;
        chacha != chacha_first
    });
    Arc::new(p)
}

/// Decides which peer keys may connect (the server side of `--private`).
pub type Gate = Arc<dyn Fn(&Signer) -> bool + Send + Sync>;

/// A gate that lets every key in.
pub fn open_gate() -> Gate {
    Arc::new(|_| true)
}

/// This node's TLS identity: its node key as a raw public key.
#[derive(Clone)]
pub struct Identity {
    key: Signer,
    certified: Arc<CertifiedKey>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.key.fingerprint())
    }
}

impl Identity {
    /// The identity of `keypair`.
    pub fn new(keypair: &Keypair) -> Result<Self, TlsError> {
        let provider = provider();
        let mut pkcs8 = PKCS8_PREFIX.to_vec();
        pkcs8.extend_from_slice(&keypair.ed25519_seed());
        let signing = provider
            .key_provider
            .load_private_key(PrivatePkcs8KeyDer::from(pkcs8).into())?;
        let key = keypair.public();
        let certified = CertifiedKey::new(vec![CertificateDer::from(spki(&key))], signing);
        Ok(Self {
            key,
            certified: Arc::new(certified),
            provider,
        })
    }

    /// The node's public key.
    pub fn key(&self) -> &Signer {
        &self.key
    }

    /// A server configuration offering `alpns`, letting in the keys `gate`
    /// allows.
    pub fn server_config(
        &self,
        alpns: &[&[u8]],
        gate: Gate,
    ) -> Result<rustls::ServerConfig, TlsError> {
        let verifier = Arc::new(PeerKeys {
            gate,
            algorithms: self.provider.signature_verification_algorithms,
        });
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(
                rustls::server::AlwaysResolvesServerRawPublicKeys::new(self.certified.clone()),
            ));
        config.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
        Ok(config)
    }

    /// A client configuration for `alpn`, accepting a server whose key has
    /// fingerprint `pin` (any ed25519 key without one).
    pub fn client_config(
        &self,
        alpn: &[u8],
        pin: Option<String>,
    ) -> Result<rustls::ClientConfig, TlsError> {
        let verifier = Arc::new(ServerKey {
            pin,
            algorithms: self.provider.signature_verification_algorithms,
        });
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(
                rustls::client::AlwaysResolvesClientRawPublicKeys::new(self.certified.clone()),
            ));
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    }
}

fn bad_key() -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
}

/// The key a peer presented: one ed25519 raw public key and nothing else.
fn presented_key(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<Signer, rustls::Error> {
    let key = key_of_spki(end_entity).ok_or_else(bad_key)?;
    if !intermediates.is_empty() {
        return Err(bad_key());
    }
    Ok(key)
}

/// A well-formed key this end does not accept (gate or pin).
fn not_accepted() -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)
}

/// TLS 1.2 is never offered, so never verified.
fn no_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls12NotOffered,
    ))
}

fn verify_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    verify_tls13_signature_with_raw_key(
        message,
        &SubjectPublicKeyInfoDer::from(cert.as_ref()),
        dss,
        algorithms,
    )
}

/// The server's check of a client: an ed25519 raw public key the gate lets
/// in.
struct PeerKeys {
    gate: Gate,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for PeerKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerKeys")
    }
}

impl ClientCertVerifier for PeerKeys {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let key = presented_key(end_entity, intermediates)?;
        if !(self.gate)(&key) {
            return Err(not_accepted());
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

/// The client's check of a server: an ed25519 raw public key, with the
/// pinned fingerprint when there is one.
struct ServerKey {
    pin: Option<String>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerKey({:?})", self.pin)
    }
}

impl ServerCertVerifier for ServerKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let key = presented_key(end_entity, intermediates)?;
        if let Some(pin) = &self.pin
            && key.fingerprint() != *pin
        {
            return Err(not_accepted());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The key a connection's peer proved in the handshake.
pub fn peer_key(conn: &quinn::Connection) -> Option<Signer> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    key_of_spki(certs.first()?.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_round_trips_and_rejects_other_keys() {
        let key = Keypair::generate("t").unwrap();
        let der = spki(&key.public());
        assert_eq!(der.len(), 44);
        assert_eq!(key_of_spki(&der), Some(key.public()));
        assert_eq!(key_of_spki(&der[..43]), None);
        let mut other = der.clone();
        other[7] = 0x71; // not the ed25519 OID
        assert_eq!(key_of_spki(&other), None);
        Identity::new(&key).unwrap();
    }

    #[test]
    fn cipher_suites_follow_the_cpu() {
        let p = provider();
        let first = p.cipher_suites[0].suite();
        if has_aes() {
            assert_ne!(first, rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
        } else {
            assert_eq!(first, rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
        }
        assert!(
            p.cipher_suites
                .iter()
                .any(|s| s.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256),
            "QUIC's initial packets need AES-128-GCM"
        );
    }
}
