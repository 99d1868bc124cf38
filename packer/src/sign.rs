//! `pack --keygen NAME` and `pack --sign NAME.key`: minisign keys, and the signature entries
//! (`.manifest`, `.signature`; format in `llamafile_format::signature`) added to a llamafile.
//!
//! Keys are minisign's own format, written by the `minisign` crate (the minisign author's Rust
//! implementation): `NAME.pub` is what `minisign -V -p` reads, and `NAME.key` is a secret key
//! with no password (KDF algorithm 0), which `minisign -S -s` also uses without asking. A key
//! made by `minisign -G` (password-protected) works too: the password is asked on the terminal.

use anyhow::{bail, Context};
use llamafile_format::escape::escape_path;
use llamafile_format::signature::{manifest, Part, MANIFEST_ENTRY, SIGNATURE_ENTRY};
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The trusted comment of every signature: fixed, so that it says what was signed and holds no
/// host data or time.
pub const TRUSTED_COMMENT: &str = "llamafile manifest: the runtime and every entry by SHA-256";

/// `NAME.key` and `NAME.pub` for `name` (a path without the extension).
pub fn key_paths(name: &Path) -> (PathBuf, PathBuf) {
    let with = |ext: &str| {
        let mut s = name.as_os_str().to_owned();
        s.push(ext);
        PathBuf::from(s)
    };
    (with(".key"), with(".pub"))
}

/// Write a new key pair to `NAME.key` (mode 0600) and `NAME.pub`; neither may exist. Returns
/// the two paths and the key ID.
pub fn keygen(name: &Path) -> anyhow::Result<(PathBuf, PathBuf, String)> {
    let (key_path, pub_path) = key_paths(name);
    for p in [&key_path, &pub_path] {
        if std::fs::symlink_metadata(p).is_ok() {
            bail!("{} already exists: a key is never overwritten (choose another NAME or remove it)", escape_path(p));
        }
    }
    let minisign::KeyPair { pk, sk } =
        minisign::KeyPair::generate_unencrypted_keypair().context("cannot generate a key")?;
    let id = key_id(pk.keynum());
    let pub_text = pk.to_box().context("cannot encode the public key")?.to_string();
    let key_text = sk
        .to_box(Some(&format!("llamafile pack secret key {id} (no password)")))
        .context("cannot encode the secret key")?
        .to_string();
    // create_new: a file that appeared since the check above is not overwritten either; the
    // secret key is private from its first byte.
    let write = |p: &Path, text: &str, mode: u32| -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(p)
            .with_context(|| format!("{}: cannot create", escape_path(p)))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .with_context(|| format!("{}: cannot write", escape_path(p)))
    };
    write(&key_path, &key_text, 0o600)?;
    if let Err(e) = write(&pub_path, &pub_text, 0o644) {
        let _ = std::fs::remove_file(&key_path);
        return Err(e);
    }
    Ok((key_path, pub_path, id))
}

/// A minisign key ID as minisign prints it (8 bytes, little-endian, uppercase hex).
fn key_id(keynum: &[u8]) -> String {
    let mut b = [0u8; 8];
    b.copy_from_slice(&keynum[..8]);
    format!("{:016X}", u64::from_le_bytes(b))
}

/// A secret key ready to sign.
pub struct SigningKey {
    sk: minisign::SecretKey,
    pk: minisign::PublicKey,
    pub id: String,
}

/// Read a minisign secret key; a password-protected one asks for its password on the terminal.
pub fn read_secret_key(path: &Path) -> anyhow::Result<SigningKey> {
    let shown = escape_path(path);
    let text = llamafile_format::input::read_text_capped(path, 1 << 16, "a minisign secret key is two short lines")?;
    let bad = || {
        format!("{shown}: not a minisign secret key (expected an 'untrusted comment:' line and the key in base64, as `pack --keygen` writes NAME.key)")
    };
    if !text.starts_with("untrusted comment:") {
        bail!(bad());
    }
    let sk = match minisign::SecretKey::from_unencrypted_box(
        minisign::SecretKeyBox::from_string(&text).map_err(|_| anyhow::anyhow!(bad()))?,
    ) {
        Ok(sk) => sk,
        Err(e) if e.to_string().contains("encrypted") => {
            if !std::io::stdin().is_terminal() {
                bail!("{shown}: the key is password-protected and there is no terminal to ask for the password on");
            }
            eprintln!("{shown} is password-protected");
            minisign::SecretKey::from_box(
                minisign::SecretKeyBox::from_string(&text).map_err(|_| anyhow::anyhow!(bad()))?,
                None,
            )
            .map_err(|e| anyhow::anyhow!("{shown}: {}", llamafile_format::escape::escape(&e.to_string())))?
        }
        Err(e) => bail!("{} ({})", bad(), llamafile_format::escape::escape(&e.to_string())),
    };
    let pk = minisign::PublicKey::from_secret_key(&sk)
        .map_err(|e| anyhow::anyhow!("{shown}: {}", llamafile_format::escape::escape(&e.to_string())))?;
    Ok(SigningKey { id: key_id(sk.keynum()), sk, pk })
}

/// The manifest of the llamafile being written (`file`: its runtime is the first `runtime_len`
/// bytes, `entries` are written) and its minisign signature, as the two entries' texts.
pub fn sign(key: &SigningKey, file: &File, runtime_len: u64, entries: &[Part]) -> anyhow::Result<(String, String)> {
    let text = manifest(file, runtime_len, entries).context("cannot read back the output to sign it")?;
    let untrusted = format!("signature from llamafile pack key {} of {MANIFEST_ENTRY}", key.id);
    let sig = minisign::sign(Some(&key.pk), &key.sk, text.as_bytes(), Some(TRUSTED_COMMENT), Some(&untrusted))
        .map_err(|e| anyhow::anyhow!("cannot sign: {}", llamafile_format::escape::escape(&e.to_string())))?;
    Ok((text, sig.to_string()))
}

/// Add the signature entries to a zip being written (after every other entry).
pub fn add_signature(w: &mut crate::zip_writer::ZipWriter, key: &SigningKey, runtime_len: u64) -> anyhow::Result<()> {
    let infos = w.entries().to_vec();
    let parts: Vec<Part> =
        infos.iter().map(|e| Part { name: &e.name, data_offset: e.data_offset, size: e.size }).collect();
    let (text, sig) = sign(key, w.file(), runtime_len, &parts)?;
    use crate::zip_writer::Source;
    w.add_stored(MANIFEST_ENTRY, Source::Bytes(text.as_bytes()), 1, &mut |_, _| {})?;
    w.add_stored(SIGNATURE_ENTRY, Source::Bytes(sig.as_bytes()), 1, &mut |_, _| {})?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_pair_that_signs_and_verifies_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().join("me");
        let (k, p, id) = keygen(&name).unwrap();
        assert_eq!((k.clone(), p.clone()), (dir.path().join("me.key"), dir.path().join("me.pub")));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&k).unwrap().permissions().mode() & 0o777, 0o600);
        let pub_text = std::fs::read_to_string(&p).unwrap();
        assert!(pub_text.starts_with(&format!("untrusted comment: minisign public key: {id}\n")), "{pub_text}");
        // The secret key has no password: KDF algorithm bytes are 0 ("Ed" then "\0\0").
        use ct_codecs::{Base64, Decoder};
        let key_text = std::fs::read_to_string(&k).unwrap();
        let bin = Base64::decode_to_vec(key_text.lines().nth(1).unwrap(), None).unwrap();
        assert_eq!(&bin[..4], b"Ed\0\0");

        // Signs, and the runtime's verifier (minisign-verify) accepts it with the public key.
        let key = read_secret_key(&k).unwrap();
        assert_eq!(key.id, id);
        let f = tempfile::tempfile().unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"runtime bytes", 0).unwrap();
        let (text, sig) = sign(&key, &f, 13, &[]).unwrap();
        let vk = llamafile_format::signature::read_public_key(&p).unwrap();
        assert_eq!(vk.id, id);
        assert_eq!(llamafile_format::signature::verify_text(&vk, &text, &sig).unwrap(), TRUSTED_COMMENT);
        let e = llamafile_format::signature::verify_text(&vk, &text.replace("runtime 13", "runtime 12"), &sig)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("BAD signature"), "{e}");

        // Again: refused, both files untouched.
        let e = keygen(&name).unwrap_err().to_string();
        assert!(e.contains("me.key already exists"), "{e}");
        assert_eq!(std::fs::read_to_string(&k).unwrap(), key_text);
        std::fs::remove_file(&k).unwrap();
        let e = keygen(&name).unwrap_err().to_string();
        assert!(e.contains("me.pub already exists"), "{e}");
        assert!(!k.exists(), "no half pair");
    }

    #[test]
    fn bad_keys_are_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.key");
        std::fs::write(&p, "not a key\n").unwrap();
        let e = format!("{:#}", read_secret_key(&p).err().unwrap());
        assert!(e.contains("not a minisign secret key") && !e.contains('\n'), "{e}");
        std::fs::write(&p, "untrusted comment: x\nRWQAAAAA\n").unwrap();
        let e = format!("{:#}", read_secret_key(&p).err().unwrap());
        assert!(e.contains("x.key") && !e.contains('\n'), "{e}");
        let e = format!("{:#}", read_secret_key(&dir.path().join("missing.key")).err().unwrap());
        assert!(e.contains("missing.key: cannot open"), "{e}");
    }
}
