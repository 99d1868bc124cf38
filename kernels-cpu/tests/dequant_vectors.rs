//! Dequantization against `../shared/vectors/dequant.json`: for each model file and weight type
//! listed there, the first rows of one tensor as the `gguf` Python package dequantizes them.
//! Every type in the file must match exactly (bit for bit; the file's values are f32 printed
//! in full, so any difference is a real one).

use gguf_rs_lib::reader::GGUFFileReader;
use kernels_cpu::types::{dequantize_row, WeightType};
use std::fs::File;

#[test]
fn dequantize_matches_shared_vectors_for_every_type() {
    let Some(shared) = test_support::require_shared() else { return };
    let path = shared.join("vectors/dequant.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("dequant.json parses");
    let entries = json["entries"].as_array().expect("entries is an array");
    assert!(!entries.is_empty());

    let mut failures = Vec::new();
    let mut checked = std::collections::BTreeSet::new();
    for e in entries {
        let model = e["model"].as_str().unwrap();
        let tensor = e["tensor"].as_str().unwrap();
        let tname = e["type"].as_str().unwrap();
        let row_len = e["row_len"].as_u64().unwrap() as usize;
        let rows = e["rows"].as_u64().unwrap() as usize;
        let want: Vec<f32> = e["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(want.len(), rows * row_len);
        let label = format!("{model} {tensor} ({tname})");

        let file = File::open(shared.join("models").join(model)).unwrap_or_else(|e| panic!("{model}: {e}"));
        let mut reader = GGUFFileReader::new(file).unwrap_or_else(|e| panic!("{model}: {e}"));
        let info = reader.get_tensor_info(tensor).unwrap_or_else(|| panic!("{label}: no such tensor"));
        let ggml_id = info.tensor_type() as u32;
        let Some(ty) = WeightType::from_ggml(ggml_id) else {
            failures.push(format!("{label}: ggml type {ggml_id} unknown to WeightType"));
            continue;
        };
        assert_eq!(ty.name(), tname, "{label}: the file's type id and the vector's type name disagree");
        let data = reader.load_tensor_data(tensor).unwrap().unwrap();
        let bytes = &data.as_slice()[..ty.row_bytes(row_len) * rows];

        let mut got = vec![0f32; rows * row_len];
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dequantize_row(ty, bytes, &mut got)));
        if result.is_err() {
            failures.push(format!("{label}: dequantize panicked (not implemented?)"));
            continue;
        }
        let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i].to_bits() != want[i].to_bits()).collect();
        if let Some(&i) = bad.first() {
            failures.push(format!(
                "{label}: {} of {} values differ, first at {i}: got {} want {}",
                bad.len(),
                got.len(),
                got[i],
                want[i]
            ));
        }
        checked.insert(tname.to_string());
    }
    eprintln!("dequant vectors checked for: {checked:?}");
    assert!(failures.is_empty(), "dequantization mismatches:\n{}", failures.join("\n"));
}
