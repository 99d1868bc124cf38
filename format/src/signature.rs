//! Signed llamafiles: what `pack --sign` signs and what `--verify --pubkey` checks.
//!
//! A signed llamafile holds two more stored entries, last in the zip:
//! - [`MANIFEST_ENTRY`]: a text manifest of the file: the SHA-256 of the runtime (the bytes
//!   before the zip) and of every other entry, by name (format below);
//! - [`SIGNATURE_ENTRY`]: a minisign signature of the manifest's bytes (prehashed Ed25519 over
//!   BLAKE2b-512, what `minisign -S` writes by default), so that
//!   `unzip -p F .manifest > m; unzip -p F .signature > m.minisig; minisign -Vm m -p KEY.pub`
//!   verifies it with minisign's own tool.
//!
//! Manifest format (UTF-8 text, `\n` after every line, nothing else):
//! ```text
//! llamafile manifest 1
//! runtime <bytes> <sha256 hex>
//! entry <bytes> <sha256 hex> <name>
//! ...
//! ```
//! `runtime` covers the first `<bytes>` bytes of the file (the executable `pack` was given);
//! between them and the first zip header there are only zeros (the padding that aligns the
//! weights), which the check requires. One `entry` line per zip entry in central-directory
//! order, the manifest and signature excluded; names are written with every byte outside
//! `!`..`~` and every `%` as `%XX` (uppercase hex), so a line is one name, whatever it holds.
//! The zip's own headers are not signed: the check finds every entry through them and compares
//! the names, sizes and hashes it reads with the signed ones, so no entry can be added, removed,
//! renamed or altered.

use crate::bundle::ZipEntry;
use crate::escape::{escape, escape_path};
use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The manifest entry (what is signed).
pub const MANIFEST_ENTRY: &str = ".manifest";
/// The minisign signature of the manifest.
pub const SIGNATURE_ENTRY: &str = ".signature";
/// The manifest's first line.
pub const MANIFEST_HEADER: &str = "llamafile manifest 1";
/// Largest manifest or key file read (a line per entry: far below this).
const MAX_TEXT: u64 = 1 << 20;

/// Whether `name` is one of the entries a signature adds (left out of the manifest, dropped
/// when a file is re-signed or upgraded).
pub fn is_signature_entry(name: &str) -> bool {
    name == MANIFEST_ENTRY || name == SIGNATURE_ENTRY
}

/// `name` as the manifest writes it (see the module doc).
pub fn manifest_name(name: &str) -> String {
    let mut s = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'%' {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// SHA-256 of `len` bytes of `file` from `offset`.
pub fn sha256_of(file: &File, offset: u64, len: u64) -> std::io::Result<[u8; 32]> {
    const CHUNK: u64 = 4 << 20;
    let mut buf = vec![0u8; CHUNK.min(len) as usize];
    let mut h = Sha256::new();
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK) as usize;
        file.read_exact_at(&mut buf[..n], offset + done)?;
        h.update(&buf[..n]);
        done += n as u64;
    }
    Ok(h.finalize().into())
}

/// One entry as the manifest sees it: its name and where its bytes are.
#[derive(Clone, Debug)]
pub struct Part<'a> {
    pub name: &'a str,
    pub data_offset: u64,
    pub size: u64,
}

/// The manifest of `file`: its first `runtime_len` bytes, then `entries` (signature entries
/// skipped) in the order given.
pub fn manifest(file: &File, runtime_len: u64, entries: &[Part]) -> std::io::Result<String> {
    let mut s = String::new();
    let _ = writeln!(s, "{MANIFEST_HEADER}");
    let _ = writeln!(s, "runtime {runtime_len} {}", hex(&sha256_of(file, 0, runtime_len)?));
    for e in entries.iter().filter(|e| !is_signature_entry(e.name)) {
        let _ =
            writeln!(s, "entry {} {} {}", e.size, hex(&sha256_of(file, e.data_offset, e.size)?), manifest_name(e.name));
    }
    Ok(s)
}

/// A minisign key or signature's key ID as minisign prints it: its 8 bytes read as a
/// little-endian number, in 16 uppercase hex digits.
fn key_id_of(bin: &[u8]) -> Option<String> {
    let id: [u8; 8] = bin.get(2..10)?.try_into().ok()?;
    Some(format!("{:016X}", u64::from_le_bytes(id)))
}

/// The key ID in the second line (base64) of a minisign public key or signature.
fn key_id_of_text(text: &str) -> Option<String> {
    use ct_codecs::{Base64, Decoder};
    let line = text.lines().nth(1)?;
    key_id_of(&Base64::decode_to_vec(line.trim(), None).ok()?)
}

/// A public key file: the key and its ID.
pub struct PublicKey {
    pub key: minisign_verify::PublicKey,
    pub id: String,
}

/// Read a minisign public key (`NAME.pub`: a comment line and the key in base64).
pub fn read_public_key(path: &Path) -> anyhow::Result<PublicKey> {
    let text = crate::input::read_text_capped(path, MAX_TEXT, "a minisign public key is two short lines")?;
    let bad = || {
        format!("{}: not a minisign public key (expected an 'untrusted comment:' line and the key in base64, as `pack --keygen` and `minisign -G` write)", escape_path(path))
    };
    let key = minisign_verify::PublicKey::decode(&text).map_err(|_| anyhow::anyhow!(bad()))?;
    let id = key_id_of_text(&text).with_context(bad)?;
    Ok(PublicKey { key, id })
}

/// What a valid signature covers.
#[derive(Debug)]
pub struct Signed {
    pub key_id: String,
    pub trusted_comment: String,
    /// The manifest (checked against the file).
    pub manifest: String,
}

/// The text of a small stored entry.
fn read_entry_text(file: &File, path: &Path, e: &ZipEntry) -> anyhow::Result<String> {
    let shown = escape_path(path);
    if !e.stored || e.size > MAX_TEXT {
        bail!("{shown}: entry '{}' is not a stored entry of at most {MAX_TEXT} bytes", escape(&e.name));
    }
    let mut buf = vec![0u8; e.size as usize];
    file.read_exact_at(&mut buf, e.data_offset)
        .with_context(|| format!("{shown}: cannot read entry '{}'", escape(&e.name)))?;
    String::from_utf8(buf).map_err(|_| anyhow::anyhow!("{shown}: entry '{}' is not UTF-8 text", escape(&e.name)))
}

/// The key ID a llamafile's signature names, when it has a signature entry.
pub fn signer(path: &Path, entries: &[ZipEntry]) -> anyhow::Result<Option<String>> {
    let Some(sig) = entries.iter().find(|e| e.name == SIGNATURE_ENTRY) else {
        return Ok(None);
    };
    let file = File::open(path).with_context(|| format!("{}: cannot open", escape_path(path)))?;
    let text = read_entry_text(&file, path, sig)?;
    Ok(Some(key_id_of_text(&text).unwrap_or_else(|| "(unreadable)".into())))
}

/// Check the signature of the llamafile at `path` (whose central directory is `entries`) with
/// `key`: the signature over the manifest, then the manifest against the file's bytes.
pub fn check(path: &Path, entries: &[ZipEntry], key: &PublicKey) -> anyhow::Result<Signed> {
    let shown = escape_path(path);
    let find = |name: &str| entries.iter().find(|e| e.name == name);
    let (Some(man), Some(sig)) = (find(MANIFEST_ENTRY), find(SIGNATURE_ENTRY)) else {
        bail!("{shown}: not signed (no {MANIFEST_ENTRY} and {SIGNATURE_ENTRY} entries; `pack --sign KEY` adds them)");
    };
    let file = File::open(path).with_context(|| format!("{shown}: cannot open"))?;
    let manifest = read_entry_text(&file, path, man)?;
    let sig_text = read_entry_text(&file, path, sig)?;
    let trusted_comment = verify_text(key, &manifest, &sig_text).with_context(|| shown.clone())?;
    // The manifest is the signer's: now every claim in it is checked against the file.
    let runtime_len = manifest
        .lines()
        .nth(1)
        .and_then(|l| l.strip_prefix("runtime "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|_| manifest.lines().next() == Some(MANIFEST_HEADER))
        .with_context(|| {
            format!("{shown}: the signed manifest is not a '{MANIFEST_HEADER}' (made by a newer pack?)")
        })?;
    let first_header = entries.iter().map(|e| e.header_offset).min().unwrap_or(0);
    if runtime_len > first_header {
        bail!("{shown}: the signed runtime is {runtime_len} bytes, but the zip starts at byte {first_header}");
    }
    if !all_zero(&file, runtime_len, first_header - runtime_len)? {
        bail!("{shown}: bytes {runtime_len}..{first_header} between the signed runtime and the zip are not the zero padding `pack` writes");
    }
    let parts: Vec<Part> =
        entries.iter().map(|e| Part { name: &e.name, data_offset: e.data_offset, size: e.size }).collect();
    let actual = self::manifest(&file, runtime_len, &parts).with_context(|| format!("{shown}: cannot read"))?;
    if actual != manifest {
        bail!("{shown}: {}", first_difference(&manifest, &actual));
    }
    Ok(Signed { key_id: key.id.clone(), trusted_comment, manifest })
}

/// Check the minisign signature `sig_text` of `data` with `key`; the signature's trusted comment.
pub fn verify_text(key: &PublicKey, data: &str, sig_text: &str) -> anyhow::Result<String> {
    let signature = minisign_verify::Signature::decode(sig_text)
        .map_err(|_| anyhow::anyhow!("entry '{SIGNATURE_ENTRY}' is not a minisign signature"))?;
    let sig_id = key_id_of_text(sig_text).unwrap_or_else(|| "(unreadable)".into());
    if sig_id != key.id {
        bail!("signed by key {sig_id}, not by the given key {}", key.id);
    }
    key.key.verify(data.as_bytes(), &signature, false).map_err(|e| {
        anyhow::anyhow!("BAD signature: the signature does not match the manifest under key {} ({e})", key.id)
    })?;
    Ok(signature.trusted_comment().to_string())
}

fn all_zero(file: &File, offset: u64, len: u64) -> anyhow::Result<bool> {
    let mut buf = vec![0u8; 65536.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(65536) as usize;
        file.read_exact_at(&mut buf[..n], offset + done)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        done += n as u64;
    }
    Ok(true)
}

/// What differs between the signed manifest and the file's, in words (one line).
fn first_difference(signed: &str, actual: &str) -> String {
    // Lines keyed by what they describe: "runtime" or the entry's name.
    let key = |l: &str| -> (String, String) {
        let f: Vec<&str> = l.splitn(4, ' ').collect();
        match f.as_slice() {
            ["entry", _, _, name] => (format!("entry '{}'", escape(name)), l.to_string()),
            [first, ..] => (first.to_string(), l.to_string()),
            [] => (String::new(), String::new()),
        }
    };
    let s: Vec<_> = signed.lines().map(key).collect();
    let a: Vec<_> = actual.lines().map(key).collect();
    for (k, line) in &a {
        match s.iter().find(|(sk, _)| sk == k) {
            None => return format!("{k} is not in the signed manifest (added after signing)"),
            Some((_, sl)) if sl != line => {
                return format!("{k} differs from the signed manifest (SHA-256 or size changed after signing)");
            }
            _ => {}
        }
    }
    for (k, _) in &s {
        if !a.iter().any(|(ak, _)| ak == k) {
            return format!("{k} is signed but missing from the file");
        }
    }
    "the entries are in another order than the signed manifest lists them".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_token_whatever_they_hold() {
        assert_eq!(manifest_name("gpu/libx.so"), "gpu/libx.so");
        assert_eq!(manifest_name("a b%\nc"), "a%20b%25%0Ac");
        assert_eq!(manifest_name("é"), "%C3%A9");
    }

    #[test]
    fn differences_are_named() {
        let m = "llamafile manifest 1\nruntime 3 aa\nentry 1 bb x.gguf\nentry 2 cc .args\n";
        assert_eq!(
            first_difference(m, &m.replace("bb", "bd")),
            "entry 'x.gguf' differs from the signed manifest (SHA-256 or size changed after signing)"
        );
        assert_eq!(
            first_difference(m, &m.replace("runtime 3 aa", "runtime 3 ab")),
            "runtime differs from the signed manifest (SHA-256 or size changed after signing)"
        );
        assert_eq!(
            first_difference(m, &format!("{m}entry 1 dd gpu/x\n")),
            "entry 'gpu/x' is not in the signed manifest (added after signing)"
        );
        assert_eq!(
            first_difference(m, &m.replace("entry 2 cc .args\n", "")),
            "entry '.args' is signed but missing from the file"
        );
    }
}
