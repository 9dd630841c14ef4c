//! Secure Boot state: the firmware's flags and the certificates and hashes enrolled in
//! PK, KEK, db and dbx (EFI signature lists, read through [`crate::platform::efi`]).

use serde::Serialize;
use sha2::{Digest as _, Sha256};
use x509_parser::prelude::*;

use crate::platform::efi;
use crate::platform::kernel::KernelFiles;

/// The signature databases, in the order they are listed.
pub const DATABASES: [&str; 4] = ["PK", "KEK", "db", "dbx"];

/// `EFI_CERT_X509_GUID` as stored (little-endian fields).
const CERT_X509: [u8; 16] = guid(
    0xa5c059a1,
    0x94e4,
    0x4aa7,
    [0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72],
);

/// Hash signature types: (GUID, name, digest length; the `X509_*` ones are followed by a
/// 16-byte revocation time).
const HASH_TYPES: [([u8; 16], &str, usize); 8] = [
    (
        guid(
            0xc1c41626,
            0x504c,
            0x4092,
            [0xac, 0xa9, 0x41, 0xf9, 0x36, 0x93, 0x43, 0x28],
        ),
        "sha256",
        32,
    ),
    (
        guid(
            0x826ca512,
            0xcf10,
            0x4ac9,
            [0xb1, 0x87, 0xbe, 0x01, 0x49, 0x66, 0x31, 0xbd],
        ),
        "sha1",
        20,
    ),
    (
        guid(
            0x0b6e5233,
            0xa65c,
            0x44c9,
            [0x94, 0x07, 0xd9, 0xab, 0x83, 0xbf, 0xc8, 0xbd],
        ),
        "sha224",
        28,
    ),
    (
        guid(
            0xff3e5307,
            0x9fd0,
            0x48c9,
            [0x85, 0xf1, 0x8a, 0xd5, 0x6c, 0x70, 0x1e, 0x01],
        ),
        "sha384",
        48,
    ),
    (
        guid(
            0x093e0fae,
            0xa6c4,
            0x4f50,
            [0x9f, 0x1b, 0xd4, 0x1e, 0x2b, 0x89, 0xc1, 0x9a],
        ),
        "sha512",
        64,
    ),
    (
        guid(
            0x3bd2a492,
            0x96c0,
            0x4079,
            [0xb4, 0x20, 0xfc, 0xf9, 0x8e, 0xf1, 0x03, 0xed],
        ),
        "x509-sha256",
        32,
    ),
    (
        guid(
            0x7076876e,
            0x80c2,
            0x4ee6,
            [0xaa, 0xd2, 0x28, 0xb3, 0x49, 0xa6, 0x86, 0x5b],
        ),
        "x509-sha384",
        48,
    ),
    (
        guid(
            0x446dbf63,
            0x2502,
            0x4cda,
            [0xbc, 0xfa, 0x24, 0x65, 0xd2, 0xb0, 0xfe, 0x9d],
        ),
        "x509-sha512",
        64,
    ),
];

/// The on-disk (mixed-endian) bytes of a GUID.
pub const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// The `EFI_CERT_X509_GUID` signature type (for building lists in tests and tools).
pub const X509_TYPE: [u8; 16] = CERT_X509;
/// The `EFI_CERT_SHA256_GUID` signature type.
pub const SHA256_TYPE: [u8; 16] = HASH_TYPES[0].0;

/// One entry of a signature list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// An X.509 certificate (DER).
    Certificate { owner: [u8; 16], der: Vec<u8> },
    /// A hash (of an EFI binary, or of a certificate's to-be-signed part).
    Hash {
        owner: [u8; 16],
        kind: &'static str,
        digest: Vec<u8>,
    },
}

/// Parses a variable's EFI signature lists. Data shorter than one list header is an empty
/// database (firmware leaves empty variables around).
pub fn parse_signature_lists(mut data: &[u8]) -> Result<Vec<Entry>, String> {
    let mut out = vec![];
    if data.len() < 28 {
        return Ok(out);
    }
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4"));
    while !data.is_empty() {
        if data.len() < 28 {
            return Err(format!(
                "{} trailing bytes after the last signature list",
                data.len()
            ));
        }
        let sig_type: [u8; 16] = data[..16].try_into().expect("16");
        let list_size = u32_at(data, 16) as usize;
        let header_size = u32_at(data, 20) as usize;
        let sig_size = u32_at(data, 24) as usize;
        if list_size > data.len() || list_size < 28 + header_size {
            return Err(format!(
                "signature list of {list_size} bytes does not fit the {} bytes left",
                data.len()
            ));
        }
        if sig_size <= 16 || !(list_size - 28 - header_size).is_multiple_of(sig_size) {
            return Err(format!(
                "signature size {sig_size} does not divide the list's {} bytes of signatures",
                list_size - 28 - header_size
            ));
        }
        let hash = HASH_TYPES.iter().find(|(g, ..)| *g == sig_type);
        if sig_type != CERT_X509 && hash.is_none() {
            return Err(format!("unknown signature type {}", guid_text(&sig_type)));
        }
        for sig in data[28 + header_size..list_size].chunks(sig_size) {
            let owner: [u8; 16] = sig[..16].try_into().expect("16");
            let body = &sig[16..];
            match hash {
                None => out.push(Entry::Certificate {
                    owner,
                    der: body.to_vec(),
                }),
                Some((_, kind, len)) => {
                    if body.len() < *len {
                        return Err(format!("{kind} entry of {} bytes", body.len()));
                    }
                    out.push(Entry::Hash {
                        owner,
                        kind,
                        digest: body[..*len].to_vec(),
                    })
                }
            }
        }
        data = &data[list_size..];
    }
    Ok(out)
}

/// A GUID in its usual text form.
pub fn guid_text(g: &[u8; 16]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{}-{}",
        u32::from_le_bytes(g[..4].try_into().expect("4")),
        u16::from_le_bytes([g[4], g[5]]),
        u16::from_le_bytes([g[6], g[7]]),
        crate::platform::tpm::hex(&g[8..10]),
        crate::platform::tpm::hex(&g[10..])
    )
}

/// A certificate as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateInfo {
    #[serde(rename = "type")]
    pub kind: String,
    pub fingerprint: String,
    pub subject: String,
    pub issuer: String,
}

/// The certificates of one database: its certificates as DER (unparsable ones skipped with
/// a warning, as upstream); an unreadable or malformed variable is an error.
pub fn database_certificates(kernel: &KernelFiles, db: &str) -> Result<Vec<Vec<u8>>, String> {
    let data = efi::read(kernel, db)
        .map_err(|e| format!("reading {db}: {e}"))?
        .unwrap_or_default();
    let entries = parse_signature_lists(&data).map_err(|e| format!("{db}: {e}"))?;
    let mut out = vec![];
    for (i, e) in entries.into_iter().enumerate() {
        if let Entry::Certificate { der, .. } = e {
            match X509Certificate::from_der(&der) {
                Ok(_) => out.push(der),
                Err(err) => tracing::warn!(
                    variable = db,
                    index = i,
                    error = %err,
                    "skipping a Secure Boot certificate that does not parse"
                ),
            }
        }
    }
    Ok(out)
}

/// Every certificate in PK, KEK, db and dbx, in that order. A database that cannot be read
/// or parsed is left out (logged), as upstream does.
pub fn list_certificates(kernel: &KernelFiles) -> Vec<CertificateInfo> {
    let mut out = vec![];
    for db in DATABASES {
        let certs = match database_certificates(kernel, db) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list Secure Boot certificates");
                continue;
            }
        };
        for der in certs {
            if let Some(info) = describe(db, &der) {
                out.push(info);
            }
        }
    }
    out
}

/// The listing of one certificate: SHA-256 of the DER, subject and issuer.
pub fn describe(kind: &str, der: &[u8]) -> Option<CertificateInfo> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(CertificateInfo {
        kind: kind.to_string(),
        fingerprint: crate::platform::tpm::hex(&Sha256::digest(der)),
        subject: name_text(cert.subject()),
        issuer: name_text(cert.issuer()),
    })
}

/// The SHA-256 hashes enrolled in dbx, hex.
pub fn dbx_hashes(kernel: &KernelFiles) -> Result<Vec<String>, String> {
    let data = efi::read(kernel, "dbx")
        .map_err(|e| format!("reading dbx: {e}"))?
        .unwrap_or_default();
    Ok(parse_signature_lists(&data)
        .map_err(|e| format!("dbx: {e}"))?
        .into_iter()
        .filter_map(|e| match e {
            Entry::Hash {
                kind: "sha256",
                digest,
                ..
            } => Some(crate::platform::tpm::hex(&digest)),
            _ => None,
        })
        .collect())
}

/// A certificate in PEM.
pub fn pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The short names of the attributes upstream names (Go's `pkix.Name` rendering).
const NAMED: [(&str, &str); 9] = [
    ("2.5.4.6", "C"),
    ("2.5.4.8", "ST"),
    ("2.5.4.7", "L"),
    ("2.5.4.9", "STREET"),
    ("2.5.4.17", "POSTALCODE"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.3", "CN"),
    ("2.5.4.5", "SERIALNUMBER"),
];

/// A distinguished name as upstream prints it: the named attributes grouped by type
/// (C, ST, L, STREET, POSTALCODE, O, OU, then the last CN and SERIALNUMBER), other
/// attributes as `<oid>=#<DER hex>`, the sequence reversed (most specific first) and
/// joined with `,` (values of one type with `+`), RFC 2253 escaping.
pub fn name_text(name: &X509Name<'_>) -> String {
    let mut named: Vec<Vec<String>> = vec![vec![]; NAMED.len()];
    let mut others: Vec<String> = vec![];
    for rdn in name.iter() {
        for attr in rdn.iter() {
            let oid = attr.attr_type().to_id_string();
            let value = attr.attr_value();
            let text = value.as_str().ok().map(str::to_string);
            match (NAMED.iter().position(|(o, _)| *o == oid), text) {
                (Some(i), Some(t)) => {
                    let single = NAMED[i].1 == "CN" || NAMED[i].1 == "SERIALNUMBER";
                    if single {
                        named[i] = vec![t];
                    } else {
                        named[i].push(t);
                    }
                }
                (_, text) => {
                    let der = match text {
                        Some(t) => go_string_der(&t),
                        None => x509_parser::der_parser::asn1_rs::ToDer::to_der_vec(value)
                            .unwrap_or_default(),
                    };
                    others.push(format!("{oid}=#{}", crate::platform::tpm::hex(&der)));
                }
            }
        }
    }
    let mut rdns: Vec<String> = others;
    for (i, values) in named.iter().enumerate() {
        if values.is_empty() || values.iter().all(String::is_empty) && i >= 7 {
            continue;
        }
        let key = NAMED[i].1;
        rdns.push(
            values
                .iter()
                .map(|v| format!("{key}={}", escape(v)))
                .collect::<Vec<_>>()
                .join("+"),
        );
    }
    rdns.reverse();
    rdns.join(",")
}

/// A string re-encoded as Go's marshaller does for an untyped string: PrintableString when
/// every character allows it, else UTF8String.
fn go_string_der(s: &str) -> Vec<u8> {
    let printable = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b" '()+,-./:=?".contains(&b));
    let tag = if printable { 0x13 } else { 0x0c };
    let mut out = vec![tag];
    let len = s.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend(s.as_bytes());
    out
}

/// RFC 2253 escaping of an attribute value.
fn escape(v: &str) -> String {
    let n = v.chars().count();
    let mut out = String::new();
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == ' ' || c == '#'))
            || (i + 1 == n && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esl(sig_type: [u8; 16], entries: &[&[u8]]) -> Vec<u8> {
        let size = 16 + entries[0].len();
        let mut out = sig_type.to_vec();
        out.extend(((28 + size * entries.len()) as u32).to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend((size as u32).to_le_bytes());
        for e in entries {
            out.extend([0x11; 16]);
            out.extend(*e);
        }
        out
    }

    #[test]
    fn guids_print_as_they_are_written() {
        assert_eq!(
            guid_text(&X509_TYPE),
            "a5c059a1-94e4-4aa7-87b5-ab155c2bf072"
        );
        assert_eq!(
            guid_text(&SHA256_TYPE),
            "c1c41626-504c-4092-aca9-41f936934328"
        );
    }

    #[test]
    fn lists_of_hashes_and_certificates_parse_and_bad_ones_are_refused() {
        let mut data = esl(SHA256_TYPE, &[&[1; 32], &[2; 32]]);
        data.extend(esl(X509_TYPE, &[b"not a certificate"]));
        let entries = parse_signature_lists(&data).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(
            entries[1],
            Entry::Hash {
                owner: [0x11; 16],
                kind: "sha256",
                digest: vec![2; 32]
            }
        );
        assert!(
            matches!(&entries[2], Entry::Certificate { der, .. } if der == b"not a certificate")
        );
        assert_eq!(parse_signature_lists(&[0; 10]).unwrap(), vec![]);
        let mut unknown = esl(SHA256_TYPE, &[&[1; 32]]);
        unknown[0] ^= 0xff;
        assert!(parse_signature_lists(&unknown)
            .unwrap_err()
            .starts_with("unknown signature type"));
        let mut short = esl(SHA256_TYPE, &[&[1; 32]]);
        short.truncate(60);
        assert!(parse_signature_lists(&short)
            .unwrap_err()
            .contains("does not fit"));
    }

    #[test]
    fn escaping_follows_rfc_2253() {
        assert_eq!(escape("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape("#x "), "\\#x\\ ");
        assert_eq!(go_string_der("ab"), vec![0x13, 2, b'a', b'b']);
        assert_eq!(go_string_der("a@b"), vec![0x0c, 3, b'a', b'@', b'b']);
    }
}
