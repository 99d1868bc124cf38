//! IQ4_NL and IQ4_XS against the reference (`tests/data/iq4_vectors.json`, made by
//! `tests/data/make_iq4_vectors.py`): rows of tensors the reference's quantizer wrote from
//! `../shared/models/tiny-mistral-f16.gguf`, as block bytes and as the `gguf` Python package
//! dequantizes them. Dequantizing the bytes must give those values bit for bit, and quantizing
//! the f16 source rows must give those bytes.

use gguf_rs_lib::reader::GGUFFileReader;
use kernels_cpu::types::{dequantize_row, quantize_row, WeightType};
use std::fs::File;
use std::path::PathBuf;

struct Entry {
    label: String,
    tensor: String,
    ty: WeightType,
    row_len: usize,
    rows: usize,
    bytes: Vec<u8>,
    values: Vec<f32>,
}

fn entries() -> Vec<Entry> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/iq4_vectors.json");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["type"].as_str().unwrap();
            let ty = *[WeightType::IQ4_NL, WeightType::IQ4_XS].iter().find(|t| t.name() == name).unwrap();
            let hex = e["bytes"].as_str().unwrap();
            let bytes = (0..hex.len() / 2).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
            let tensor = e["tensor"].as_str().unwrap().to_string();
            Entry {
                label: format!("{tensor} ({name})"),
                tensor,
                ty,
                row_len: e["row_len"].as_u64().unwrap() as usize,
                rows: e["rows"].as_u64().unwrap() as usize,
                bytes,
                values: e["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect(),
            }
        })
        .collect()
}

#[test]
fn both_types_are_covered() {
    let types: std::collections::BTreeSet<_> = entries().iter().map(|e| e.ty).collect();
    assert_eq!(types.len(), 2);
}

#[test]
fn dequantize_matches_the_gguf_package_bit_for_bit() {
    for e in entries() {
        assert_eq!(e.bytes.len(), e.ty.row_bytes(e.row_len) * e.rows, "{}", e.label);
        let mut got = vec![0f32; e.rows * e.row_len];
        dequantize_row(e.ty, &e.bytes, &mut got);
        let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i].to_bits() != e.values[i].to_bits()).collect();
        assert!(
            bad.is_empty(),
            "{}: {} values differ, first at {}: {} vs {}",
            e.label,
            bad.len(),
            bad[0],
            got[bad[0]],
            e.values[bad[0]]
        );
    }
}

#[test]
fn quantize_gives_the_reference_quantizers_bytes() {
    let Some(shared) = test_support::require_shared() else { return };
    let path = shared.join("models/tiny-mistral-f16.gguf");
    let mut reader =
        GGUFFileReader::new(File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap();
    for e in entries() {
        let data = reader.load_tensor_data(&e.tensor).unwrap().unwrap();
        let n = e.rows * e.row_len;
        let src: Vec<f32> =
            data.as_slice()[..2 * n].chunks_exact(2).map(|h| half::f16::from_le_bytes([h[0], h[1]]).to_f32()).collect();
        let mut got = vec![0u8; e.ty.row_bytes(n)];
        quantize_row(e.ty, &src, &mut got);
        let bs = e.ty.type_size();
        let bad: Vec<usize> =
            (0..got.len() / bs).filter(|&b| got[b * bs..(b + 1) * bs] != e.bytes[b * bs..(b + 1) * bs]).collect();
        assert!(
            bad.is_empty(),
            "{}: {} of {} blocks differ from the reference's, first {}",
            e.label,
            bad.len(),
            got.len() / bs,
            bad[0]
        );
    }
}
