//! The deployment's certificate authority and per-node certificates (mutual TLS).
//!
//! `shikaku ca init` makes a CA (ECDSA P-256 key + self-signed certificate); `shikaku ca issue`
//! gives a node a TLS key and a certificate signed by that CA whose subject alternative names
//! say who the node is:
//!
//! - DNS `shikaku-hub` or `shikaku-clinic` (what the clinic verifies as the server name), and
//! - URI `shikaku:<role>.<name>.<node id as 64 hex digits>` (formerly, and still read,
//!   `urn:shikaku:node:<role>:<name>:<node id>`): the role, the name and
//!   the ed25519 key the node signs events and receipts with. The CA's signature binds the
//!   three, so a hub knows which clinic namespace a connection may write.
//!
//! rustls uses the `ring` provider only (one provider in the tree, installed once).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use shikaku_core::NodeId;
use shikaku_node::{PeerIdentity, Role};

/// CA certificate file name.
pub const CA_CERT_FILE: &str = "ca.pem";
/// CA key file name.
pub const CA_KEY_FILE: &str = "ca.key.pem";
/// Folder of a node's TLS files inside its data directory.
pub const TLS_DIR: &str = "tls";
/// A node's certificate file.
pub const CERT_FILE: &str = "cert.pem";
/// A node's TLS key file.
pub const KEY_FILE: &str = "key.pem";
const CA_NAME: &str = "shikaku deployment CA";
/// Identity SAN of certificates issued before version 2 (still read).
const URI_PREFIX: &str = "urn:shikaku:node:";
/// Identity SAN, version 2: `shikaku:<role>.<name>.<node id hex>` — one colon, so RFC 6125
/// checkers that read every URI SAN as `scheme:host` (Python's service_identity, hence
/// aioquic) accept the certificate; names hold no dots, so it splits unambiguously.
const URI_SCHEME_V2: &str = "shikaku:";

/// Installs the ring provider as the process default (idempotent).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Creates a CA in `dir` (refuses to overwrite one).
pub fn ca_init(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cert_path = dir.join(CA_CERT_FILE);
    if cert_path.exists() || dir.join(CA_KEY_FILE).exists() {
        bail!("{} already holds a CA; refusing to overwrite it", dir.display());
    }
    let key = KeyPair::generate().context("generating the CA key")?;
    let cert = ca_params()?.self_signed(&key).context("self-signing the CA certificate")?;
    write_private(&dir.join(CA_KEY_FILE), &key.serialize_pem())?;
    std::fs::write(&cert_path, cert.pem())?;
    Ok(cert_path)
}

/// Checks a node name: 1–63 characters of `a-z`, `0-9` and `-`.
pub fn check_name(name: &str) -> Result<()> {
    if !shikaku_protocol::wire::is_valid_node_name(name) {
        bail!("node name {name:?} must be 1-63 characters of a-z, 0-9 and '-'");
    }
    Ok(())
}

/// The node's TLS files from `<data-dir>/tls/`, refused unless the certificate is for `role`.
pub fn load_for(data_dir: &Path, role: Role) -> Result<TlsFiles> {
    let dir = data_dir.join(TLS_DIR);
    let tls_files = load(&dir)?;
    if tls_files.identity.role != role {
        bail!(
            "the certificate in {} is for a {}, not a {}",
            dir.display(),
            tls_files.identity.role.name(),
            role.name()
        );
    }
    Ok(tls_files)
}

/// The CA of `ca_dir` as an issuer, and its certificate (PEM, copied beside what it issues).
fn load_ca(ca_dir: &Path) -> Result<(Issuer<'static, KeyPair>, String)> {
    let ca_key_pem = std::fs::read_to_string(ca_dir.join(CA_KEY_FILE)).with_context(|| {
        format!("reading {} (run `shikaku ca init` first)", ca_dir.join(CA_KEY_FILE).display())
    })?;
    let ca_cert_pem = std::fs::read_to_string(ca_dir.join(CA_CERT_FILE))
        .with_context(|| format!("reading {}", ca_dir.join(CA_CERT_FILE).display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).context("the CA key is not a valid PEM key")?;
    Ok((Issuer::new(ca_params()?, ca_key), ca_cert_pem))
}

/// Issues a certificate for a node whose signing key is `node`, writing `cert.pem`, `key.pem`
/// and a copy of `ca.pem` into `out`.
pub fn ca_issue(ca_dir: &Path, role: Role, name: &str, node: NodeId, out: &Path) -> Result<()> {
    check_name(name)?;
    let (issuer, ca_cert_pem) = load_ca(ca_dir)?;
    let key = KeyPair::generate().context("generating the node's TLS key")?;
    let mut params = CertificateParams::new(vec![format!("shikaku-{}", role.name())])?;
    params.distinguished_name.push(DnType::CommonName, format!("{} {name}", role.name()));
    let uri =
        format!("{URI_SCHEME_V2}{}.{name}.{}", role.name(), shikaku_core::hex::encode(&node.0));
    params.subject_alt_names.push(SanType::URI(uri.as_str().try_into()?));
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Subject and authority key identifiers, and an explicit "not a CA": RFC 5280 path
    // validators other than webpki (Python's cryptography, hence aioquic) refuse leaves
    // without them.
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).context("signing the node certificate")?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for file in [CERT_FILE, KEY_FILE] {
        let _ = std::fs::remove_file(out.join(file));
    }
    write_private(&out.join(KEY_FILE), &key.serialize_pem())?;
    std::fs::write(out.join(CERT_FILE), cert.pem())?;
    std::fs::write(out.join(CA_CERT_FILE), ca_cert_pem)?;
    Ok(())
}

/// Reads the identity a certificate states (its URI subject alternative name).
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<PeerIdentity> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| anyhow::anyhow!("certificate does not parse: {e}"))?;
    for uri in parsed.valid_uri_names() {
        let parts: Vec<&str> = if let Some(rest) = uri.strip_prefix(URI_PREFIX) {
            rest.split(':').collect()
        } else if let Some(rest) = uri.strip_prefix(URI_SCHEME_V2) {
            rest.split('.').collect()
        } else {
            continue;
        };
        let [role, name, hex] = parts.as_slice() else { continue };
        let role = match *role {
            "clinic" => Role::Clinic,
            "hub" => Role::Hub,
            _ => continue,
        };
        let Some(node) = shikaku_core::hex::decode_array::<32>(hex) else { continue };
        return Ok(PeerIdentity { role, name: (*name).to_owned(), node: NodeId(node) });
    }
    bail!("certificate carries no shikaku node identity")
}

/// A node's TLS material, loaded.
#[derive(Debug)]
pub struct TlsFiles {
    /// Its certificate chain (just its own certificate).
    pub chain: Vec<CertificateDer<'static>>,
    /// Its TLS key.
    pub key: PrivatePkcs8KeyDer<'static>,
    /// The deployment CA.
    pub ca: CertificateDer<'static>,
    /// The identity its certificate states.
    pub identity: PeerIdentity,
}

fn pem_blocks(text: &str, label: &str) -> Vec<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let after = &rest[start + begin.len()..];
        let Some(stop) = after.find(&end) else { break };
        let b64: String = after[..stop].chars().filter(|c| !c.is_whitespace()).collect();
        if let Some(bytes) = base64_decode(&b64) {
            out.push(bytes);
        }
        rest = &after[stop + end.len()..];
    }
    out
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Loads `cert.pem`, `key.pem` and `ca.pem` from a node's TLS folder.
pub fn load(dir: &Path) -> Result<TlsFiles> {
    let read = |file: &str| {
        std::fs::read_to_string(dir.join(file)).with_context(|| {
            format!("reading {} (issue one with `shikaku ca issue`)", dir.join(file).display())
        })
    };
    let chain: Vec<CertificateDer<'static>> = pem_blocks(&read(CERT_FILE)?, "CERTIFICATE")
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key = pem_blocks(&read(KEY_FILE)?, "PRIVATE KEY")
        .into_iter()
        .next()
        .map(PrivatePkcs8KeyDer::from)
        .with_context(|| format!("{} holds no PKCS#8 private key", dir.join(KEY_FILE).display()))?;
    let ca = pem_blocks(&read(CA_CERT_FILE)?, "CERTIFICATE")
        .into_iter()
        .next()
        .map(CertificateDer::from)
        .with_context(|| format!("{} holds no certificate", dir.join(CA_CERT_FILE).display()))?;
    let first = chain
        .first()
        .with_context(|| format!("{} holds no certificate", dir.join(CERT_FILE).display()))?;
    let identity = identity_of(first)?;
    Ok(TlsFiles { chain, key, ca, identity })
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<rustls::RootCertStore>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).context("the CA certificate is not usable as a trust anchor")?;
    Ok(Arc::new(roots))
}

/// The hub's server config: TLS 1.3, client certificates required and verified against the CA,
/// ALPN `shikaku/1`.
pub fn server_config(
    tls: &TlsFiles,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig> {
    install_provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder(roots(&tls.ca)?)
        .build()
        .context("building the client certificate verifier")?;
    let mut crypto = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(tls.chain.clone(), PrivateKeyDer::Pkcs8(tls.key.clone_key()))
        .context("the node certificate and key do not match")?;
    crypto.alpn_protocols = vec![shikaku_protocol::wire::ALPN.to_vec()];
    // No 0-RTT: replayable, and 0.5-RTT data would go out before the client is authenticated.
    crypto.max_early_data_size = 0;
    let quic =
        quinn::crypto::rustls::QuicServerConfig::try_from(crypto).context("QUIC server config")?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

/// The clinic's client config: verifies the hub against the CA (server name `shikaku-hub`) and
/// presents the clinic's certificate.
pub fn client_config(
    tls: &TlsFiles,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig> {
    install_provider();
    let mut crypto = rustls::ClientConfig::builder()
        .with_root_certificates(roots(&tls.ca)?)
        .with_client_auth_cert(tls.chain.clone(), PrivateKeyDer::Pkcs8(tls.key.clone_key()))
        .context("the node certificate and key do not match")?;
    crypto.alpn_protocols = vec![shikaku_protocol::wire::ALPN.to_vec()];
    let quic =
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto).context("QUIC client config")?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

/// The peer's identity on an established connection.
pub fn peer_identity(conn: &quinn::Connection) -> Result<PeerIdentity> {
    let any = conn.peer_identity().context("the peer presented no certificate")?;
    let certs = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| anyhow::anyhow!("unexpected peer identity type"))?;
    let first = certs.first().context("the peer presented no certificate")?;
    identity_of(first)
}

/// Issues a certificate for an HTTPS API (the clinic's reception API on the LAN, the hub's
/// insurer API) from the deployment CA: subject alternative names are the DNS names and IP
/// addresses in `hosts`, the key usage server authentication only. Writes `api-cert.pem`,
/// `api-key.pem` (0600) and a copy of `ca.pem` — the file browsers at reception must trust —
/// into `out`.
pub fn ca_issue_api(ca_dir: &Path, hosts: &[String], out: &Path) -> Result<()> {
    if hosts.is_empty() {
        bail!("name the host names or addresses the API is reached by (--host, repeatable)");
    }
    let (issuer, ca_cert_pem) = load_ca(ca_dir)?;
    let key = KeyPair::generate().context("generating the API's TLS key")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    for host in hosts {
        let san =
            match host.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.as_str().try_into().with_context(|| {
                    format!("{host:?} is neither an IP address nor a DNS name")
                })?),
            };
        params.subject_alt_names.push(san);
    }
    params.distinguished_name.push(DnType::CommonName, format!("shikaku API {}", hosts[0]));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).context("signing the API certificate")?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for file in [API_CERT_FILE, API_KEY_FILE] {
        if out.join(file).exists() {
            bail!("{} already exists; refusing to overwrite it", out.join(file).display());
        }
    }
    write_private(&out.join(API_KEY_FILE), &key.serialize_pem())?;
    std::fs::write(out.join(API_CERT_FILE), cert.pem())?;
    std::fs::write(out.join(CA_CERT_FILE), ca_cert_pem)?;
    Ok(())
}

/// An HTTPS API's certificate file (PEM chain).
pub const API_CERT_FILE: &str = "api-cert.pem";
/// An HTTPS API's key file (PEM, PKCS#8).
pub const API_KEY_FILE: &str = "api-key.pem";

/// The server config of an HTTPS API from a PEM certificate chain and PKCS#8 key — one the
/// deployment CA issued ([`ca_issue_api`]) or the clinic's own: TLS 1.2 and 1.3, ALPN
/// `http/1.1`, no client certificates (staff log in).
pub fn https_server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    install_provider();
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    let chain: Vec<CertificateDer<'static>> =
        pem_blocks(&read(cert)?, "CERTIFICATE").into_iter().map(CertificateDer::from).collect();
    if chain.is_empty() {
        bail!("{} holds no PEM certificate", cert.display());
    }
    let key_der = pem_blocks(&read(key)?, "PRIVATE KEY")
        .into_iter()
        .next()
        .map(PrivatePkcs8KeyDer::from)
        .with_context(|| {
            format!("{} holds no PKCS#8 private key (BEGIN PRIVATE KEY)", key.display())
        })?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, PrivateKeyDer::Pkcs8(key_der))
        .with_context(|| {
            format!("{} and {} are not a certificate and its key", cert.display(), key.display())
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
