//! Certificate authentication: the simulator's own CA, client certificates it mints, and the
//! check of a `CACertificate` login.
//!
//! A login is accepted when the certificate (the first of the PEM chain in the header, or the
//! DER) chains to a trusted CA at the simulated time, allows client use (no extended key usage,
//! or client authentication, or e-mail protection as on S/MIME certificates), its subject
//! names a configured login (`emailAddress`, else `CN`), and `encodedSignedData` is the RSA
//! PKCS#1 v1.5 SHA-512 signature of the `encodedData` bytes with the certificate's key.

use std::fmt;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RsaKeyPair, RSA_PKCS1_SHA512};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, RsaKeySize, SanType,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::Deserialize;
use serde_json::{json, Value};
use webpki::{
    EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeIdIter, KeyUsage,
    RequiredEkuNotFoundContext,
};

/// `emailAddress` (PKCS #9) as OID arcs and as DER content bytes.
const EMAIL_ARCS: &[u64] = &[1, 2, 840, 113_549, 1, 9, 1];
const EMAIL_OID: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x01];
/// `commonName` as DER content bytes.
const CN_OID: &[u8] = &[0x55, 0x04, 0x03];
/// Bytes of random data [`ClientCertificate::login_body`] signs (as the SDK and Java client).
const NONCE_LEN: usize = 150;
/// The shortest `encodedData` accepted ("100+ bytes").
const MIN_NONCE_LEN: usize = 100;
/// How far the timestamp of a `v2` payload may be from the simulated clock.
const V2_SKEW_SECS: i64 = 300;

/// A client certificate and its private key, issued by a simulator's CA for one login.
/// `Debug` leaves the key out.
#[derive(Clone)]
pub struct ClientCertificate {
    email: String,
    certificate_pem: String,
    certificate_der: Vec<u8>,
    private_key_pem: String,
    private_key_der: Vec<u8>,
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

impl ClientCertificate {
    /// The login the certificate names (subject `CN` and `emailAddress`, and an e-mail SAN).
    pub fn email(&self) -> &str {
        &self.email
    }

    /// The certificate, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate_der
    }

    /// The RSA-2048 private key, PKCS #8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn private_key_pem(&self) -> &str {
        &self.private_key_pem
    }

    /// The private key, PKCS #8 DER.
    pub fn private_key_der(&self) -> &[u8] {
        &self.private_key_der
    }

    /// RSA PKCS#1 v1.5 SHA-512 signature of `data`: what Anaplan expects in
    /// `encodedSignedData` (before base64).
    pub fn sign(&self, data: &[u8]) -> Vec<u8> {
        let key = RsaKeyPair::from_pkcs8(&self.private_key_der)
            .expect("the simulator minted a valid RSA key");
        let mut signature = vec![0; key.public_modulus_len()];
        key.sign(
            &RSA_PKCS1_SHA512,
            &SystemRandom::new(),
            data,
            &mut signature,
        )
        .expect("RSA signing does not fail for a valid key");
        signature
    }

    /// The `Authorization` header value of a certificate login: `CACertificate ` followed by
    /// the base64 of the PEM text (as anaplan-sdk and the Java client send it).
    pub fn authorization_header(&self) -> String {
        format!(
            "CACertificate {}",
            STANDARD.encode(self.certificate_pem.as_bytes())
        )
    }

    /// A login body over fresh random data: `{"encodedData", "encodedSignedData"}`.
    pub fn login_body(&self) -> Value {
        let data: [u8; NONCE_LEN] = rand::random();
        json!({
            "encodedData": STANDARD.encode(data),
            "encodedSignedData": STANDARD.encode(self.sign(&data)),
        })
    }
}

/// Why a certificate login failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CertLoginError {
    /// The `Authorization` value is not a certificate (400 `FAILURE_BAD_HEADER`).
    BadHeader(&'static str),
    /// The body is not a valid login payload (400 `FAILURE_BAD_REQUEST`).
    BadBody(&'static str),
    /// Untrusted certificate, wrong signature, stale data (401 `FAILURE_BAD_CREDENTIAL`).
    Rejected(&'static str),
}

/// The JSON body of a certificate login.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoginBody {
    encoded_data: String,
    encoded_signed_data: String,
    #[serde(default)]
    encoded_data_format: Option<String>,
}

/// Accepts the extended key usages a client certificate may carry.
struct ClientUse;

impl ExtendedKeyUsageValidator for ClientUse {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        const CLIENT_AUTH: &[usize] = &[1, 3, 6, 1, 5, 5, 7, 3, 2];
        const EMAIL_PROTECTION: &[usize] = &[1, 3, 6, 1, 5, 5, 7, 3, 4];
        const ANY: &[usize] = &[2, 5, 29, 37, 0];
        let mut present = Vec::new();
        for id in iter {
            let oid = id?.to_decoded_oid();
            if [CLIENT_AUTH, EMAIL_PROTECTION, ANY].contains(&oid.as_slice()) {
                return Ok(());
            }
            present.push(oid);
        }
        if present.is_empty() {
            return Ok(());
        }
        Err(webpki::Error::RequiredEkuNotFoundContext(
            RequiredEkuNotFoundContext {
                required: KeyUsage::client_auth(),
                present,
            },
        ))
    }
}

/// The simulator's CA plus the other CAs it trusts.
pub(crate) struct CertAuthority {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    /// The own CA first, then the configured ones.
    trusted: Vec<CertificateDer<'static>>,
}

impl CertAuthority {
    /// A fresh CA (ECDSA P-256), trusting also `extra_ca_pems`.
    pub(crate) fn new(extra_ca_pems: &[String]) -> Result<Self, String> {
        let key = KeyPair::generate().map_err(|e| format!("generating the CA key: {e}"))?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "auditrelay Anaplan simulator CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let certificate = params
            .self_signed(&key)
            .map_err(|e| format!("signing the CA certificate: {e}"))?;
        let mut trusted = vec![certificate.der().clone()];
        for (index, pem) in extra_ca_pems.iter().enumerate() {
            let der = CertificateDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| format!("trusted_ca_pems[{index}]: {e}"))?;
            webpki::anchor_from_trusted_cert(&der)
                .map_err(|e| format!("trusted_ca_pems[{index}]: {e}"))?;
            trusted.push(der);
        }
        Ok(Self {
            issuer: Issuer::new(params, key),
            ca_pem: certificate.pem(),
            trusted,
        })
    }

    /// The CA certificate, PEM.
    pub(crate) fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A client certificate for `email`, with a fresh RSA-2048 key, signed by this CA.
    pub(crate) fn mint(&self, email: &str) -> Result<ClientCertificate, rcgen::Error> {
        let key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, email);
        params.distinguished_name.push(
            DnType::CustomDnType(EMAIL_ARCS.to_vec()),
            DnValue::Ia5String(email.try_into()?),
        );
        params.subject_alt_names = vec![SanType::Rfc822Name(email.try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::EmailProtection,
        ];
        params.use_authority_key_identifier_extension = true;
        let certificate = params.signed_by(&key, &self.issuer)?;
        Ok(ClientCertificate {
            email: email.to_string(),
            certificate_pem: certificate.pem(),
            certificate_der: certificate.der().to_vec(),
            private_key_pem: key.serialize_pem(),
            private_key_der: key.serialize_der(),
        })
    }

    /// Checks a certificate login at simulated time `now_ms`; returns the login (email) the
    /// certificate names.
    pub(crate) fn verify_login(
        &self,
        header_value: &str,
        body: &[u8],
        now_ms: i64,
    ) -> Result<String, CertLoginError> {
        let raw = STANDARD
            .decode(header_value.trim())
            .map_err(|_| CertLoginError::BadHeader("certificate is not valid base64"))?;
        let chain: Vec<CertificateDer<'static>> = if raw.starts_with(b"-----BEGIN") {
            CertificateDer::pem_slice_iter(&raw)
                .collect::<Result<_, _>>()
                .map_err(|_| CertLoginError::BadHeader("certificate PEM is malformed"))?
        } else {
            vec![CertificateDer::from(raw)]
        };
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(CertLoginError::BadHeader("no certificate in the header"));
        };
        let leaf = EndEntityCert::try_from(leaf)
            .map_err(|_| CertLoginError::BadHeader("certificate is malformed"))?;

        let body: LoginBody = serde_json::from_slice(body).map_err(|_| {
            CertLoginError::BadBody("body must be JSON with encodedData and encodedSignedData")
        })?;
        let data = STANDARD
            .decode(&body.encoded_data)
            .map_err(|_| CertLoginError::BadBody("encodedData is not valid base64"))?;
        let signature = STANDARD
            .decode(&body.encoded_signed_data)
            .map_err(|_| CertLoginError::BadBody("encodedSignedData is not valid base64"))?;
        match body.encoded_data_format.as_deref() {
            None => {
                if data.len() < MIN_NONCE_LEN {
                    return Err(CertLoginError::BadBody(
                        "encodedData must hold at least 100 bytes",
                    ));
                }
            }
            Some("v2") => {
                let stamp = <[u8; 8]>::try_from(data.get(..8).unwrap_or_default())
                    .map(i64::from_be_bytes)
                    .ok()
                    .filter(|_| data.len() == 100);
                let Some(stamp) = stamp else {
                    return Err(CertLoginError::BadBody(
                        "v2 encodedData must hold 100 bytes",
                    ));
                };
                if (stamp - now_ms.div_euclid(1000)).abs() > V2_SKEW_SECS {
                    return Err(CertLoginError::Rejected("v2 timestamp is too far from now"));
                }
            }
            Some(_) => return Err(CertLoginError::BadBody("unknown encodedDataFormat")),
        }

        let anchors = self
            .trusted
            .iter()
            .map(webpki::anchor_from_trusted_cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| CertLoginError::Rejected("trust store is unusable"))?;
        let now = UnixTime::since_unix_epoch(Duration::from_millis(
            u64::try_from(now_ms).unwrap_or_default(),
        ));
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            now,
            ClientUse,
            None,
            None,
        )
        .map_err(|_| CertLoginError::Rejected("certificate is not trusted"))?;
        leaf.verify_signature(
            webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA512,
            &data,
            &signature,
        )
        .map_err(|_| CertLoginError::Rejected("signature does not match the certificate"))?;
        subject_login(leaf.subject()).ok_or(CertLoginError::Rejected("certificate names no login"))
    }
}

/// One DER element: tag, contents, and what follows.
fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7F);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[count..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The login a certificate subject (the contents of the `Name` SEQUENCE) names: its
/// `emailAddress`, else its `CN`.
fn subject_login(mut subject: &[u8]) -> Option<String> {
    let (mut email, mut common_name) = (None, None);
    while !subject.is_empty() {
        let (tag, mut set, rest) = read_tlv(subject)?;
        subject = rest;
        if tag != 0x31 {
            return None;
        }
        while !set.is_empty() {
            let (_, attribute, rest) = read_tlv(set)?;
            set = rest;
            let (oid_tag, oid, value) = read_tlv(attribute)?;
            let (_, value, _) = read_tlv(value)?;
            if oid_tag != 0x06 {
                return None;
            }
            let text = String::from_utf8(value.to_vec()).ok();
            if oid == EMAIL_OID {
                email = text;
            } else if oid == CN_OID {
                common_name = text;
            }
        }
    }
    email.or(common_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(data: &[u8], signature: &[u8]) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "encodedData": STANDARD.encode(data),
            "encodedSignedData": STANDARD.encode(signature),
        }))
        .unwrap()
    }

    fn header(cert: &ClientCertificate) -> String {
        cert.authorization_header()
            .strip_prefix("CACertificate ")
            .unwrap()
            .to_string()
    }

    const NOW: i64 = 1_767_225_600_000;

    #[test]
    fn minted_certificates_log_in_and_others_do_not() {
        let ca = CertAuthority::new(&[]).unwrap();
        let cert = ca.mint("auditor@example.com").unwrap();
        assert!(cert
            .private_key_pem()
            .starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(!format!("{cert:?}").contains("PRIVATE"));
        let data = [7u8; 150];
        let good = body(&data, &cert.sign(&data));
        assert_eq!(
            ca.verify_login(&header(&cert), &good, NOW).unwrap(),
            "auditor@example.com"
        );
        // The certificate as base64 DER works as well.
        let der = STANDARD.encode(cert.certificate_der());
        assert!(ca.verify_login(&der, &good, NOW).is_ok());
        // The login body helper signs fresh data.
        let fresh = serde_json::to_vec(&cert.login_body()).unwrap();
        assert!(ca.verify_login(&header(&cert), &fresh, NOW).is_ok());

        // A signature by another key, over other data, or a truncated one.
        let other = ca.mint("auditor@example.com").unwrap();
        let wrong_key = body(&data, &other.sign(&data));
        let rejected = Err(CertLoginError::Rejected(
            "signature does not match the certificate",
        ));
        assert_eq!(ca.verify_login(&header(&cert), &wrong_key, NOW), rejected);
        let wrong_data = body(&[8u8; 150], &cert.sign(&data));
        assert_eq!(ca.verify_login(&header(&cert), &wrong_data, NOW), rejected);

        // A certificate of another CA.
        let stranger = CertAuthority::new(&[])
            .unwrap()
            .mint("auditor@example.com")
            .unwrap();
        let signed = body(&data, &stranger.sign(&data));
        assert_eq!(
            ca.verify_login(&header(&stranger), &signed, NOW),
            Err(CertLoginError::Rejected("certificate is not trusted"))
        );
        // ... unless that CA is configured as trusted.
        let other_ca = CertAuthority::new(&[]).unwrap();
        let trusting = CertAuthority::new(&[other_ca.ca_pem().to_string()]).unwrap();
        let theirs = other_ca.mint("viewer@example.com").unwrap();
        let signed = body(&data, &theirs.sign(&data));
        assert_eq!(
            trusting
                .verify_login(&header(&theirs), &signed, NOW)
                .unwrap(),
            "viewer@example.com"
        );
    }

    #[test]
    fn malformed_logins_are_classified() {
        let ca = CertAuthority::new(&[]).unwrap();
        let cert = ca.mint("auditor@example.com").unwrap();
        let short = [1u8; 99];
        assert!(matches!(
            ca.verify_login(&header(&cert), &body(&short, &cert.sign(&short)), NOW),
            Err(CertLoginError::BadBody(_))
        ));
        assert!(matches!(
            ca.verify_login("%%%", b"{}", NOW),
            Err(CertLoginError::BadHeader(_))
        ));
        assert!(matches!(
            ca.verify_login(&STANDARD.encode(b"not a certificate"), b"{}", NOW),
            Err(CertLoginError::BadHeader(_))
        ));
        assert!(matches!(
            ca.verify_login(&header(&cert), b"not json", NOW),
            Err(CertLoginError::BadBody(_))
        ));

        // v2: 8-byte big-endian seconds, then 92 random bytes.
        let v2 = |secs: i64| {
            let mut data = secs.to_be_bytes().to_vec();
            data.extend([5u8; 92]);
            serde_json::to_vec(&json!({
                "encodedDataFormat": "v2",
                "encodedData": STANDARD.encode(&data),
                "encodedSignedData": STANDARD.encode(cert.sign(&data)),
            }))
            .unwrap()
        };
        assert!(ca
            .verify_login(&header(&cert), &v2(NOW / 1000), NOW)
            .is_ok());
        assert_eq!(
            ca.verify_login(&header(&cert), &v2(NOW / 1000 - 3600), NOW),
            Err(CertLoginError::Rejected("v2 timestamp is too far from now"))
        );
    }

    #[test]
    fn subject_parsing_prefers_the_email() {
        // SEQUENCE contents: SET { SEQ { OID CN, UTF8 "a" } }, SET { SEQ { OID email, IA5 "b@c" } }
        let mut subject = vec![
            0x31, 0x0A, 0x30, 0x08, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0C, 0x01,
        ];
        subject.push(b'a');
        let mut email = vec![0x31, 0x12, 0x30, 0x10, 0x06, 0x09];
        email.extend(EMAIL_OID);
        email.extend([0x16, 0x03, b'b', b'@', b'c']);
        assert_eq!(subject_login(&subject).as_deref(), Some("a"));
        subject.extend(email);
        assert_eq!(subject_login(&subject).as_deref(), Some("b@c"));
        assert_eq!(subject_login(&[0x31, 0x05, 0x30]), None);
    }
}
