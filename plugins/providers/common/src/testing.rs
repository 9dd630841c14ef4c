//! Test helpers: a throw-away PKI made with the real `openssl` (a root CA, the "update
//! CA" under it, a signing certificate under that, and a second intermediate with its own
//! signer), and a [`crate::Runner`] that spawns commands directly.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use plugin_api::sdk::Output;
use plugin_api::Result;

/// Runs `argv` with `stdin` on this machine (the unit tests' [`crate::Runner`]).
pub fn spawn(argv: &[&str], stdin: &[u8]) -> Result<Output> {
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| plugin_api::Error::internal(format!("cannot run {}: {e}", argv[0])))?;
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // A command that exits early closes its end: not our failure.
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("stdin writer");
    Ok(Output {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// A root CA, the update CA, a signer under it, and another intermediate with a signer.
pub struct Pki {
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

impl Pki {
    /// Makes the certificates (about a tenth of a second).
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(
            d.join("ca.ext"),
            "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
        )
        .unwrap();
        std::fs::write(
            d.join("leaf.ext"),
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n",
        )
        .unwrap();
        let mut root = vec!["req", "-x509"];
        root.extend(EC);
        root.extend([
            "-nodes",
            "-keyout",
            "root.key",
            "-out",
            "root.pem",
            "-subj",
            "/CN=Test Update Root",
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(d, &root);
        let issue = |name: &str, subject: &str, ca: &str, ext: &str| {
            let (key, csr, pem) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
            );
            let mut req = vec!["req"];
            req.extend(EC);
            req.extend(["-nodes", "-keyout", &key, "-out", &csr, "-subj", subject]);
            openssl(d, &req);
            let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &ca_pem,
                    "-CAkey",
                    &ca_key,
                    "-CAcreateserial",
                    "-out",
                    &pem,
                    "-days",
                    "30",
                    "-extfile",
                    ext,
                ],
            );
        };
        issue("update-ca", "/CN=Test Update CA", "root", "ca.ext");
        issue("signer", "/CN=Test Index Signer", "update-ca", "leaf.ext");
        issue("other-ca", "/CN=Test Other CA", "root", "ca.ext");
        issue(
            "other-signer",
            "/CN=Test Other Signer",
            "other-ca",
            "leaf.ext",
        );
        Pki { dir }
    }

    /// Where the PKI's files are.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).expect("pem")
    }

    /// The root CA (PEM).
    pub fn root_pem(&self) -> String {
        self.read("root.pem")
    }

    /// The update CA (PEM), the intermediate the index must be signed through.
    pub fn update_ca_pem(&self) -> String {
        self.read("update-ca.pem")
    }

    /// The other intermediate (PEM), under the same root.
    pub fn other_ca_pem(&self) -> String {
        self.read("other-ca.pem")
    }

    fn sign_as(&self, content: &[u8], signer: &str, ca: &str) -> Vec<u8> {
        let input: PathBuf = self.dir.path().join("content");
        std::fs::write(&input, content).unwrap();
        let (cert, key, chain) = (
            format!("{signer}.pem"),
            format!("{signer}.key"),
            format!("{ca}.pem"),
        );
        openssl(
            self.dir.path(),
            &[
                "smime",
                "-sign",
                "-text",
                "-in",
                "content",
                "-signer",
                &cert,
                "-inkey",
                &key,
                "-certfile",
                &chain,
                "-out",
                "signed",
            ],
        );
        std::fs::read(self.dir.path().join("signed")).unwrap()
    }

    /// `content` as an S/MIME signed message (`index.sjson`) signed through the update CA.
    pub fn sign(&self, content: &[u8]) -> Vec<u8> {
        self.sign_as(content, "signer", "update-ca")
    }

    /// `content` signed through the other intermediate (same root).
    pub fn sign_with_other_intermediate(&self, content: &[u8]) -> Vec<u8> {
        self.sign_as(content, "other-signer", "other-ca")
    }
}

fn filter(program: &str, args: &[&str], data: &[u8]) -> Vec<u8> {
    let out = spawn(&[&[program], args].concat(), data).expect("runs");
    assert_eq!(out.status, 0, "{program}: {}", out.stderr);
    out.stdout.into_bytes()
}

/// `data` gzipped (by the real `gzip`).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip runs");
    let mut input = child.stdin.take().expect("stdin");
    let data = data.to_vec();
    let writer = std::thread::spawn(move || input.write_all(&data));
    let out = child.wait_with_output().expect("gzip");
    writer.join().expect("writer").expect("gzip stdin");
    assert!(out.status.success());
    out.stdout
}

/// The SHA-256 of `data`, lower-case hex (by the real `sha256sum`).
pub fn sha256_hex(data: &[u8]) -> String {
    let out = filter("sha256sum", &["-"], data);
    String::from_utf8_lossy(&out[..64]).into_owned()
}
