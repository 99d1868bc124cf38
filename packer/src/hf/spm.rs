//! The pieces of a SentencePiece `tokenizer.model` (a `ModelProto` protobuf): text, score and
//! type of each, read with a minimal protobuf walk (three fields of one message: a protobuf
//! crate and the generated code for the whole schema would be far more than this needs).

use anyhow::{bail, Context};

/// SentencePiece's piece types (`ModelProto.SentencePiece.Type`), which are also GGUF's token
/// types for a `llama` vocabulary.
pub const NORMAL: i32 = 1;
pub const UNKNOWN: i32 = 2;
pub const CONTROL: i32 = 3;
pub const UNUSED: i32 = 5;
pub const BYTE: i32 = 6;

#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub text: String,
    pub score: f32,
    pub kind: i32,
}

fn varint(b: &[u8], i: &mut usize) -> anyhow::Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&x) = b.get(*i) else { bail!("truncated varint") };
        *i += 1;
        v |= u64::from(x & 0x7f) << shift;
        if x < 0x80 {
            return Ok(v);
        }
    }
    bail!("varint longer than 10 bytes")
}

/// Walk one message: call `f(field, wire, payload)` for each field (payload: the bytes of a
/// length-delimited field, the 4 or 8 bytes of a fixed one, empty for a varint whose value is
/// passed as `v`).
/// Called per field: (field number, wire type, payload, varint value).
type OnField<'a> = &'a mut dyn FnMut(u64, u64, &[u8], u64) -> anyhow::Result<()>;

fn fields(b: &[u8], f: OnField) -> anyhow::Result<()> {
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let v = varint(b, &mut i)?;
                f(field, wire, &[], v)?;
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                let Some(p) = b.get(i..i + n) else { bail!("truncated field {field}") };
                i += n;
                f(field, wire, p, 0)?;
            }
            2 => {
                let n = varint(b, &mut i)? as usize;
                let Some(p) = i.checked_add(n).and_then(|e| b.get(i..e)) else { bail!("truncated field {field}") };
                i += n;
                f(field, wire, p, 0)?;
            }
            _ => bail!("unsupported protobuf wire type {wire} (field {field})"),
        }
    }
    Ok(())
}

/// The pieces of a serialized `ModelProto`, in id order.
pub fn pieces(model: &[u8]) -> anyhow::Result<Vec<Piece>> {
    let mut out = Vec::new();
    fields(model, &mut |field, wire, payload, _| {
        if field == 1 && wire == 2 {
            let mut p = Piece { text: String::new(), score: 0.0, kind: NORMAL };
            fields(payload, &mut |f, w, b, v| {
                match (f, w) {
                    (1, 2) => p.text = String::from_utf8(b.to_vec()).context("a piece is not UTF-8")?,
                    (2, 5) => p.score = f32::from_le_bytes(b.try_into().expect("4 bytes")),
                    (3, 0) => p.kind = v as i32,
                    _ => {}
                }
                Ok(())
            })
            .with_context(|| format!("piece {}", out.len()))?;
            out.push(p);
        }
        Ok(())
    })?;
    if out.is_empty() {
        bail!("no pieces (not a SentencePiece model)");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(text: &str, score: f32, kind: i32) -> Vec<u8> {
        let mut p = vec![0x0a, text.len() as u8];
        p.extend_from_slice(text.as_bytes());
        p.push(0x15);
        p.extend_from_slice(&score.to_le_bytes());
        p.extend_from_slice(&[0x18, kind as u8]);
        let mut m = vec![0x0a, p.len() as u8];
        m.extend(p);
        m
    }

    #[test]
    fn reads_pieces_and_skips_other_fields() {
        let mut m = piece("<unk>", 0.0, UNKNOWN);
        m.extend(piece("\u{2581}a", -1.5, NORMAL));
        // trainer_spec (field 2), skipped
        m.extend([0x12, 2, 0x08, 0x01]);
        let p = pieces(&m).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[1], Piece { text: "\u{2581}a".into(), score: -1.5, kind: NORMAL });
        assert_eq!(p[0].kind, UNKNOWN);
    }

    #[test]
    fn refuses_truncated_and_empty() {
        let m = piece("abc", 0.0, NORMAL);
        assert!(pieces(&m[..m.len() - 2]).is_err());
        assert!(pieces(b"").is_err());
        assert!(pieces(b"\x0f").is_err());
    }
}
