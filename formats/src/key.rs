//! Node and user keys: OpenSSH ed25519 keys and SSH signatures (SSHSIG),
//! the formats `ssh-keygen` reads and writes, so an existing
//! `~/.ssh/id_ed25519` works and `ssh-keygen -Y verify` checks what utter
//! signs.

use std::path::{Path, PathBuf};

use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

/// What can go wrong with keys and signatures.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or parsed.
    #[error("cannot read the SSH key {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: ssh_key::Error,
    },
    /// The key file could not be written.
    #[error("cannot write the SSH key {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: ssh_key::Error,
    },
    /// A passphrase-protected key.
    #[error(
        "the SSH key {0} is encrypted; utter needs an unencrypted ed25519 key (make one with `utter key gen`)"
    )]
    Encrypted(PathBuf),
    /// Not ed25519.
    #[error("the SSH key {path} is {algorithm}; utter uses ed25519 keys")]
    Algorithm {
        /// The file.
        path: PathBuf,
        /// What it is.
        algorithm: String,
    },
    /// Key generation or signing failed inside the SSH library.
    #[error("ssh key operation failed")]
    Ssh(#[from] ssh_key::Error),
}

/// An ed25519 key pair that signs blocks and transactions.
#[derive(Clone)]
pub struct Keypair {
    key: PrivateKey,
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keypair({})", self.public())
    }
}

impl Keypair {
    /// A fresh key from the operating system's random source.
    pub fn generate(comment: &str) -> Result<Self, KeyError> {
        let mut key = PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519)?;
        key.set_comment(comment);
        Ok(Self { key })
    }

    /// Reads an OpenSSH private key file (as `ssh-keygen -t ed25519` writes).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let key = PrivateKey::read_openssh_file(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if key.is_encrypted() {
            return Err(KeyError::Encrypted(path.to_path_buf()));
        }
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(KeyError::Algorithm {
                path: path.to_path_buf(),
                algorithm: key.algorithm().to_string(),
            });
        }
        Ok(Self { key })
    }

    /// Writes the private key (mode 0600) in OpenSSH format.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        self.key
            .write_openssh_file(path, LineEnding::LF)
            .map_err(|source| KeyError::Write {
                path: path.to_path_buf(),
                source,
            })
    }

    /// The public half.
    pub fn public(&self) -> Signer {
        Signer(self.key.public_key().clone())
    }

    /// The 32-byte ed25519 seed, for a TLS stack that signs with this key
    /// (the node's QUIC identity). Handle it as the key itself.
    pub fn ed25519_seed(&self) -> [u8; 32] {
        self.key
            .key_data()
            .ed25519()
            .expect("only ed25519 keys are loaded or made")
            .private
            .to_bytes()
    }

    /// An armored SSH signature (`-----BEGIN SSH SIGNATURE-----`) over
    /// `msg` in `namespace`, byte-for-byte what `ssh-keygen -Y sign` makes.
    pub fn sign(&self, namespace: &str, msg: &[u8]) -> Result<String, KeyError> {
        let sig = self.key.sign(namespace, HashAlg::Sha512, msg)?;
        Ok(sig.to_pem(LineEnding::LF)?)
    }
}

/// A public key as it appears in transactions and allowed-signers files:
/// `ssh-ed25519 AAAA…` (the comment is not part of its identity).
#[derive(Clone, Debug)]
pub struct Signer(PublicKey);

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Not an armored SSH signature.
    #[error("not an SSH signature (expected -----BEGIN SSH SIGNATURE-----)")]
    Malformed,
    /// Made by another key.
    #[error("signed by another key")]
    WrongKey,
    /// For another purpose.
    #[error("signature is for namespace {found:?}, not {expected:?}")]
    Namespace {
        /// What was required.
        expected: String,
        /// What the signature says.
        found: String,
    },
    /// Does not match the message.
    #[error("signature does not match the signed bytes")]
    Invalid,
}

impl Signer {
    /// Parses `ssh-ed25519 AAAA… [comment]`; only ed25519 keys are signers.
    pub fn parse(text: &str) -> Option<Self> {
        let key = PublicKey::from_openssh(text.trim()).ok()?;
        (key.algorithm() == Algorithm::Ed25519).then_some(Self(key))
    }

    /// The key of these 32 ed25519 public-key bytes (as TLS raw public
    /// keys carry it).
    pub fn from_ed25519(bytes: [u8; 32]) -> Self {
        let data = ssh_key::public::KeyData::Ed25519(ssh_key::public::Ed25519PublicKey(bytes));
        Self(PublicKey::new(data, ""))
    }

    /// The 32 ed25519 public-key bytes.
    pub fn ed25519_bytes(&self) -> [u8; 32] {
        self.0
            .key_data()
            .ed25519()
            .expect("a signer is always ed25519")
            .0
    }

    /// `ssh-ed25519 AAAA…`, without comment.
    pub fn to_openssh(&self) -> String {
        let mut key = self.0.clone();
        key.set_comment("");
        key.to_openssh()
            .expect("an ed25519 public key always encodes")
    }

    /// The key a signature claims to be made with (not yet verified).
    pub fn of_signature(armored: &str) -> Result<Self, SignatureError> {
        let sig = SshSig::from_pem(armored).map_err(|_| SignatureError::Malformed)?;
        let key = PublicKey::new(sig.public_key().clone(), "");
        (key.algorithm() == Algorithm::Ed25519)
            .then_some(Self(key))
            .ok_or(SignatureError::Malformed)
    }

    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        self.0.fingerprint(HashAlg::Sha256).to_string()
    }

    /// Checks an armored SSH signature over `msg` in `namespace`.
    pub fn verify(&self, namespace: &str, msg: &[u8], armored: &str) -> Result<(), SignatureError> {
        let sig = SshSig::from_pem(armored).map_err(|_| SignatureError::Malformed)?;
        if sig.public_key() != self.0.key_data() {
            return Err(SignatureError::WrongKey);
        }
        if sig.namespace() != namespace {
            return Err(SignatureError::Namespace {
                expected: namespace.to_string(),
                found: sig.namespace().to_string(),
            });
        }
        self.0
            .verify(namespace, msg, &sig)
            .map_err(|_| SignatureError::Invalid)
    }

    /// A line for an OpenSSH allowed-signers file (`git`'s
    /// `gpg.ssh.allowedSignersFile`, `ssh-keygen -Y verify -f`).
    pub fn allowed_signers_line(&self, principal: &str, namespaces: &[&str]) -> String {
        format!(
            "{principal} namespaces=\"{}\" {}",
            namespaces.join(","),
            self.to_openssh()
        )
    }
}

/// A signer's key made ready to check signatures with: decoded once and
/// its curve point decompressed once, then kept in a process-wide table
/// keyed by its spelling. Every transaction line names its signer as
/// text; parsing it, spelling it again and decompressing the point cost
/// about a tenth of a signature check, paid on every line by every node.
///
/// [`Verifier::verify`] accepts exactly what [`Signer::verify`] accepts:
/// the same SSHSIG parse, key and namespace checks, then the same
/// ed25519 check ssh-key makes (`ed25519_dalek`'s `Verifier`, not
/// `verify_strict`) over the same signed data. A signature with a
/// non-empty reserved field goes through ssh-key itself.
pub struct Verifier {
    data: ssh_key::public::KeyData,
    /// `None`: the 32 bytes are not a curve point, so nothing verifies.
    key: Option<ed25519_dalek::VerifyingKey>,
}

/// How many spellings [`Verifier::of`] keeps before it starts again.
const VERIFIERS_KEPT: usize = 16_384;

static VERIFIERS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<Verifier>>>,
> = std::sync::LazyLock::new(Default::default);

impl Verifier {
    /// The verifier of the key spelled `text`, which must be an ed25519
    /// key in its one spelling (`ssh-ed25519 AAAA…`, no comment, as
    /// [`Signer::to_openssh`] writes it); `None` otherwise.
    pub fn of(text: &str) -> Option<std::sync::Arc<Self>> {
        let table = || {
            VERIFIERS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some(v) = table().get(text) {
            return Some(v.clone());
        }
        let signer = Signer::parse(text)?;
        if signer.to_openssh() != text {
            return None;
        }
        let key = ed25519_dalek::VerifyingKey::from_bytes(&signer.ed25519_bytes()).ok();
        let verifier = std::sync::Arc::new(Self {
            data: signer.0.key_data().clone(),
            key,
        });
        let mut table = table();
        if table.len() >= VERIFIERS_KEPT {
            table.clear();
        }
        table.insert(text.to_string(), verifier.clone());
        Some(verifier)
    }

    /// [`Signer::verify`], with the key decoded already.
    pub fn verify(&self, namespace: &str, msg: &[u8], armored: &str) -> Result<(), SignatureError> {
        use ed25519_dalek::Verifier as _;
        let sig = SshSig::from_pem(armored).map_err(|_| SignatureError::Malformed)?;
        if sig.public_key() != &self.data {
            return Err(SignatureError::WrongKey);
        }
        if sig.namespace() != namespace {
            return Err(SignatureError::Namespace {
                expected: namespace.to_string(),
                found: sig.namespace().to_string(),
            });
        }
        if !sig.reserved().is_empty() {
            return PublicKey::new(self.data.clone(), "")
                .verify(namespace, msg, &sig)
                .map_err(|_| SignatureError::Invalid);
        }
        let key = self.key.as_ref().ok_or(SignatureError::Invalid)?;
        let signed = SshSig::signed_data(namespace, sig.hash_alg(), msg)
            .map_err(|_| SignatureError::Invalid)?;
        let signature = ed25519_dalek::Signature::try_from(sig.signature())
            .map_err(|_| SignatureError::Invalid)?;
        key.verify(&signed, &signature)
            .map_err(|_| SignatureError::Invalid)
    }
}

impl PartialEq for Signer {
    fn eq(&self, other: &Self) -> bool {
        self.0.key_data() == other.0.key_data()
    }
}

impl Eq for Signer {}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_openssh())
    }
}
