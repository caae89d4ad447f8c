//! Certificates made in the test: a private CA and a server certificate it signs, for
//! 127.0.0.1 and localhost (rcgen, ECDSA P-256), written as PEM files a gateway and its
//! clients read (`--tls-cert`, `--tls-key`, `--ca-file`, `SSL_CERT_FILE`).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A private certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// PEM files of one server certificate, and of the CA that signed it.
#[derive(Debug, Clone)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl Ca {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("self-sign the CA"),
        }
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (host names or IP addresses) signed by this CA:
    /// `(certificate PEM, key PEM)`.
    pub fn server(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "toolgate test gateway");
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a server certificate for 127.0.0.1 and localhost, its key and this CA into
    /// `dir` as `<stem>.pem`, `<stem>.key` and `<stem>-ca.pem`.
    pub fn write_server(&self, dir: &Path, stem: &str) -> ServerFiles {
        let (cert, key) = self.server(&["127.0.0.1", "localhost"]);
        let files = ServerFiles {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
            ca: dir.join(format!("{stem}-ca.pem")),
        };
        std::fs::write(&files.cert, cert).expect("write the certificate");
        std::fs::write(&files.key, key).expect("write the key");
        std::fs::write(&files.ca, self.pem()).expect("write the CA");
        files
    }
}
