//! TLS for syslog (RFC 5425): the server is verified by default, against
//! the system's roots or a configured CA; a client certificate is optional.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// What the TLS connection needs, checked when the configuration loads.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub client: Arc<ClientConfig>,
    /// The name the server's certificate must carry.
    pub server_name: ServerName<'static>,
}

/// TLS options as configured.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Verify the server against this CA bundle instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Present this certificate (chain) to the server.
    pub cert_file: Option<PathBuf>,
    /// The key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Expected server name; defaults to the host of the address.
    pub server_name: Option<String>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

impl TlsOptions {
    /// Builds the client configuration; every error names the file or
    /// setting at fault. `host` is the host part of the sink's address.
    pub fn build(&self, host: &str) -> Result<TlsSettings, String> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &self.ca_file {
            Some(ca_file) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs(ca_file)? {
                    roots.add(cert).map_err(|e| {
                        format!("{} is not a usable CA certificate: {e}", ca_file.display())
                    })?;
                }
                builder.with_root_certificates(roots)
            }
            None => {
                let verifier = rustls_platform_verifier::Verifier::new(provider())
                    .map_err(|e| format!("cannot load the system's root certificates: {e}"))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
            }
        };
        let client = match (&self.cert_file, &self.key_file) {
            (Some(cert_file), Some(key_file)) => {
                let chain = read_certs(cert_file)?;
                let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
                    format!("cannot read a private key from {}: {e}", key_file.display())
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client certificate and key do not fit together: {e}"))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("cert_file and key_file go together".to_string()),
        };
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| host.trim_matches(['[', ']']).to_string());
        let server_name = ServerName::try_from(name.clone())
            .map_err(|_| format!("{name:?} is not a valid server name"))?;
        Ok(TlsSettings {
            client: Arc::new(client),
            server_name,
        })
    }
}
