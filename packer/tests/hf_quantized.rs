//! GPTQ and AWQ GEMM checkpoints (written by `hf_quant/make_fixtures.py` from seeded random
//! weights) dequantized by pack, compared bit for bit with `hf_quant/dequant_ref.py`, a numpy
//! reader written from the formats' descriptions.

use kernels_cpu::types::dequantize_row;
use kernels_cpu::WeightType;
use packer::hf::quantized::RawTensor;
use packer::hf::quantized::{dequantize_linear, exact_legacy_q4, is_quantization_tensor, method_from_dir, QuantMethod};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A .safetensors file read whole: (dtype, shape, bytes) by name. The test parses the format
/// itself (8-byte header length, JSON header, data) so that nothing but the dequantizer is shared
/// with the code under test.
struct SafeTensors(BTreeMap<String, (String, Vec<usize>, Vec<u8>)>);

impl SafeTensors {
    fn read(path: &Path) -> Self {
        let raw = std::fs::read(path).unwrap();
        let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
        let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&raw[8..8 + n]).unwrap();
        let data = &raw[8 + n..];
        let mut m = BTreeMap::new();
        for (name, t) in header.into_iter().filter(|(k, _)| k != "__metadata__") {
            let dtype = t["dtype"].as_str().unwrap().to_string();
            let shape = t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            let [a, b] = [0, 1].map(|i| t["data_offsets"][i].as_u64().unwrap() as usize);
            m.insert(name, (dtype, shape, data[a..b].to_vec()));
        }
        SafeTensors(m)
    }
    fn get(&self, name: &str) -> Option<RawTensor<'_>> {
        self.0.get(name).map(|(d, s, b)| RawTensor { dtype: d, shape: s.clone(), data: b })
    }
    fn f32s(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let (d, s, b) = &self.0[name];
        assert_eq!(d, "F32", "{name}");
        (s.clone(), b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
    }
}

/// The fixture checkpoints in a temporary folder, or `None` (the skip recorded) without numpy.
fn fixtures() -> Option<tempfile::TempDir> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hf_quant/make_fixtures.py");
    let have = Command::new("python3").args(["-c", "import numpy"]).output().map(|o| o.status.success());
    if have.ok() != Some(true) {
        test_support::skip("python3 with numpy", "pip install numpy");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("python3").arg(&script).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Some(dir)
}

fn config(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap()
}

/// The quantized layers' prefixes of a checkpoint.
fn prefixes(t: &SafeTensors) -> Vec<String> {
    t.0.keys().filter_map(|k| k.strip_suffix(".qweight")).map(str::to_string).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn gptq_and_awq_dequantize_bit_for_bit_as_the_numpy_reader() {
    let Some(root) = fixtures() else { return };
    for (kind, is_gptq) in [("gptq", true), ("gptq-desc-act", true), ("awq", false)] {
        let dir: PathBuf = root.path().join(kind);
        let m = method_from_dir(&dir, &config(&dir)).unwrap().unwrap_or_else(|| panic!("{kind}: not quantized?"));
        assert_eq!(matches!(m, QuantMethod::Gptq(_)), is_gptq, "{kind}");
        let q = SafeTensors::read(&dir.join("model.safetensors"));
        let reference = SafeTensors::read(&root.path().join(format!("{kind}-dequantized/model.safetensors")));
        let layers = prefixes(&q);
        assert_eq!(layers.len(), 14, "{kind}: 7 linear layers in each of 2 blocks");
        for p in &layers {
            let (shape, w) = dequantize_linear(&m, p, &|n| q.get(n)).unwrap();
            let (want_shape, want) = reference.f32s(&format!("{p}.weight"));
            assert_eq!(shape, want_shape, "{kind} {p}");
            assert!(bits(&w) == bits(&want), "{kind} {p}: differs from the numpy reader");
        }
        // Every other tensor is imported as it is, and is in the float twin under its name.
        for name in q.0.keys().filter(|n| !is_quantization_tensor(n)) {
            assert_eq!(q.0[name], reference.0[name], "{kind} {name}");
        }
        assert_eq!(q.0.keys().filter(|n| !is_quantization_tensor(n)).count() + layers.len(), reference.0.len());
    }
    // The float model is not quantized.
    let fp16 = root.path().join("fp16");
    assert_eq!(method_from_dir(&fp16, &config(&fp16)).unwrap(), None);
}

/// `blocks` (rows of `n_in` values as `to`) dequantized as the runtime reads them.
fn dequantize_blocks(blocks: &[u8], to: WeightType, n_in: usize) -> Vec<f32> {
    let rb = to.row_bytes(n_in);
    let mut w = vec![0f32; blocks.len() / rb * n_in];
    for (row, b) in w.chunks_exact_mut(n_in).zip(blocks.chunks_exact(rb)) {
        dequantize_row(to, b, row);
    }
    w
}

#[test]
fn group_32_checkpoints_map_onto_q4_blocks_without_rounding_twice() {
    let Some(root) = fixtures() else { return };
    let mut mapped = BTreeMap::new();
    for kind in ["gptq", "gptq-desc-act", "awq"] {
        let dir = root.path().join(kind);
        let m = method_from_dir(&dir, &config(&dir)).unwrap().unwrap();
        let q = SafeTensors::read(&dir.join("model.safetensors"));
        let reference = SafeTensors::read(&root.path().join(format!("{kind}-dequantized/model.safetensors")));
        for p in prefixes(&q) {
            let (shape, want) = reference.f32s(&format!("{p}.weight"));
            for to in [WeightType::Q4_0, WeightType::Q4_1] {
                let Some(blocks) = exact_legacy_q4(&m, &p, &|n| q.get(n), to).unwrap() else { continue };
                *mapped.entry((kind, to.to_string())).or_insert(0) += 1;
                // Equal as numbers (a mapped zero may be -0.0).
                assert!(dequantize_blocks(&blocks, to, shape[1]) == want, "{kind} {p} {to}: not exact");
            }
        }
    }
    // Symmetric GPTQ (zero point 8, f16 scales, group 32) maps every layer onto both types;
    // desc_act's permuted groups put several scales in each 32-column block, so none maps.
    assert_eq!(mapped.get(&("gptq", "Q4_0".into())), Some(&14), "{mapped:?}");
    assert_eq!(mapped.get(&("gptq", "Q4_1".into())), Some(&14), "{mapped:?}");
    assert!(!mapped.keys().any(|(k, _)| *k == "gptq-desc-act"), "{mapped:?}");
}

/// `pack --hf` on each quantized checkpoint writes the same GGUF tensors, byte for byte, as on
/// its float twin dequantized by numpy: the same F16 weights (the q/k permutation included), so
/// the same logits.
#[test]
fn pack_hf_of_a_quantized_checkpoint_equals_pack_hf_of_its_numpy_dequantized_twin() {
    let Some((root, ckpts)) = fixtures_with_tokenizer() else { return };
    for kind in ["gptq", "gptq-desc-act", "awq"] {
        let convert = |dir: &str| {
            let gguf = root.path().join(format!("{dir}.gguf"));
            packer::hf::convert_to_gguf(&ckpts.join(dir), Default::default(), &gguf, false, false).unwrap();
            llamafile_format::gguf::GgufFile::open(&gguf).unwrap()
        };
        let (q, f) = (convert(kind), convert(&format!("{kind}-dequantized")));
        let names =
            |g: &llamafile_format::gguf::GgufFile| g.tensors().iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&q), names(&f), "{kind}");
        for (a, b) in q.tensors().iter().zip(f.tensors()) {
            assert_eq!((a.ggml_type, &a.dims), (b.ggml_type, &b.dims), "{kind} {}", a.name);
            assert!(q.tensor_data(a) == f.tensor_data(b), "{kind} {}: data differs", a.name);
        }
        assert!(q.tensors().iter().any(|t| t.name == "blk.1.attn_q.weight"), "{kind}");
    }
    // Settings the tensors do not fit, or that are not supported: one line, nothing written.
    let dir = ckpts.join("gptq-desc-act");
    let settings = dir.join("quantize_config.json");
    let original = std::fs::read_to_string(&settings).unwrap();
    for (from, to, want) in [
        ("\"group_size\": 32", "\"group_size\": 48", "tensor 'model.layers.0.mlp.down_proj.qweight': its 128 input features are not a multiple of the group size 48 ("),
        ("\"bits\": 4", "\"bits\": 3", "quantize_config.json: bits is 3; only 4-bit GPTQ is supported"),
    ] {
        std::fs::write(&settings, original.replace(from, to)).unwrap();
        let gguf = root.path().join("refused.gguf");
        let e = format!("{:#}", packer::hf::convert_to_gguf(&dir, Default::default(), &gguf, false, false).unwrap_err());
        assert!(e.contains(want), "{e:?} should contain {want:?}");
        assert!(!e.contains('\n'), "{e:?}");
        assert!(!gguf.exists());
        let left: Vec<_> = std::fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(!left.iter().any(|n| n.to_string_lossy().contains("refused")), "{left:?}");
    }
}

/// The fixture checkpoints with the real Mistral SentencePiece tokenizer (so that `pack --hf`
/// converts them): the folder they are in and the folder of checkpoints; `None` (the skip
/// recorded) without the tokenizer or numpy.
fn fixtures_with_tokenizer() -> Option<(tempfile::TempDir, PathBuf)> {
    let spm = test_support::require_model("mistral-7b-v0.1-tokenizer.model")?;
    let have = Command::new("python3").args(["-c", "import numpy"]).output().map(|o| o.status.success());
    if have.ok() != Some(true) {
        test_support::skip("python3 with numpy", "pip install numpy");
        return None;
    }
    let root = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // The tokenizer files of hf's Llama fixture (the real Mistral SentencePiece vocabulary).
    let base = root.path().join("base");
    let out = Command::new("python3")
        .arg(repo.join("tests/fixtures/make_hf_checkpoint.py"))
        .args(["llama".as_ref(), base.as_os_str(), "--tokenizer".as_ref(), spm.as_os_str()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ckpts = root.path().join("ckpts");
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hf_quant/make_fixtures.py"))
        .args([ckpts.as_os_str(), "--tokenizer".as_ref(), base.as_os_str(), "--vocab".as_ref(), "32000".as_ref()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Some((root, ckpts))
}

/// `pack ARGS` (the built binary); panics with its stderr when it fails.
fn pack(args: &[&std::ffi::OsStr]) {
    let out = Command::new(env!("CARGO_BIN_EXE_pack")).args(args).output().unwrap();
    assert!(out.status.success(), "pack {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The GGUF name of the checkpoint's linear layer `prefix` (`model.layers.N.self_attn.q_proj`),
/// written out here rather than taken from the converter, so that the test checks the converter.
fn gguf_name(prefix: &str) -> String {
    let rest = prefix.strip_prefix("model.layers.").unwrap();
    let (layer, part) = rest.split_once('.').unwrap();
    let short = match part {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => panic!("unexpected layer {other}"),
    };
    format!("blk.{layer}.{short}.weight")
}

/// `w` ([rows, cols]) with its rows in the order the Llama GGUF stores q/k weights: in each of
/// `n_head` heads, the two halves of the head's rows interleaved.
fn rope_permuted(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let per_head = rows / n_head;
    let mut out = Vec::with_capacity(w.len());
    for h in 0..n_head {
        for i in 0..per_head / 2 {
            for half in 0..2 {
                let src = h * per_head + half * (per_head / 2) + i;
                out.extend_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// `pack --hf GPTQ --quantize Q4_0|Q4_1` writes the symmetric group-32 checkpoint's layers as
/// blocks that decode to exactly the checkpoint's weights (numpy's reading of them), where
/// converting to F16 and quantizing that does not; the desc_act and AWQ checkpoints, whose
/// blocks do not map, are quantized from F16 as before.
#[test]
fn pack_hf_quantize_q4_writes_the_checkpoints_own_grid() {
    use llamafile_format::gguf::GgufFile;
    let Some((root, ckpts)) = fixtures_with_tokenizer() else { return };
    let tmp = root.path();
    let os = |s: &str| std::ffi::OsString::from(s);
    for (kind, mix) in [("gptq", "Q4_0"), ("gptq", "Q4_1"), ("gptq-desc-act", "Q4_0"), ("awq", "Q4_1")] {
        let dir = ckpts.join(kind);
        let direct = tmp.join(format!("{kind}-{mix}-direct.gguf"));
        let f16 = tmp.join(format!("{kind}-{mix}-f16.gguf"));
        let twice = tmp.join(format!("{kind}-{mix}-twice.gguf"));
        let q = os("--quantize");
        let mix_arg = os(mix);
        let out_arg = os("--gguf-out");
        pack(&[os("--hf").as_ref(), dir.as_os_str(), &q, &mix_arg, &out_arg, direct.as_os_str()]);
        pack(&[os("--hf").as_ref(), dir.as_os_str(), &out_arg, f16.as_os_str()]);
        pack(&[os("--gguf").as_ref(), f16.as_os_str(), &q, &mix_arg, &out_arg, twice.as_os_str()]);
        let (a, b) = (GgufFile::open(&direct).unwrap(), GgufFile::open(&twice).unwrap());
        // One quantizer: the same metadata, names and types either way.
        assert_eq!(a.metadata(), b.metadata(), "{kind} {mix}");
        let infos = |g: &GgufFile| {
            g.tensors().iter().map(|t| (t.name.clone(), t.ggml_type, t.dims.clone())).collect::<Vec<_>>()
        };
        assert_eq!(infos(&a), infos(&b), "{kind} {mix}");

        let reference = SafeTensors::read(&ckpts.join(format!("{kind}-dequantized/model.safetensors")));
        let cfg = config(&dir);
        let heads = |k: &str| cfg[k].as_u64().unwrap() as usize;
        let mut exact = Vec::new();
        let mut twice_exact = 0;
        let mut linear = Vec::new();
        for p in prefixes(&SafeTensors::read(&dir.join("model.safetensors"))) {
            let name = gguf_name(&p);
            linear.push(name.clone());
            let (shape, want) = reference.f32s(&format!("{p}.weight"));
            let want = match name.split('.').nth(2) {
                Some("attn_q") => rope_permuted(&want, shape[0], shape[1], heads("num_attention_heads")),
                Some("attn_k") => rope_permuted(&want, shape[0], shape[1], heads("num_key_value_heads")),
                _ => want,
            };
            let (ta, tb) = (a.tensor(&name).unwrap(), b.tensor(&name).unwrap());
            let to = WeightType::from_ggml(ta.ggml_type).unwrap();
            if !matches!(to, WeightType::Q4_0 | WeightType::Q4_1) {
                continue;
            }
            if dequantize_blocks(a.tensor_data(ta), to, shape[1]) == want {
                exact.push(name.clone());
            } else {
                // Not mapped: the tensor is what quantizing the F16 conversion gives.
                assert!(a.tensor_data(ta) == b.tensor_data(tb), "{kind} {mix} {name}: neither exact nor the F16 route");
            }
            if dequantize_blocks(b.tensor_data(tb), to, shape[1]) == want {
                twice_exact += 1;
            }
        }
        // Every other tensor is the same bytes either way.
        for t in a.tensors().iter().filter(|t| !linear.contains(&t.name)) {
            assert!(a.tensor_data(t) == b.tensor_data(b.tensor(&t.name).unwrap()), "{kind} {mix} {}", t.name);
        }
        if kind == "gptq" {
            assert_eq!(exact.len(), 14, "{kind} {mix}: every linear layer maps: {exact:?}");
            assert_eq!(twice_exact, 0, "{kind} {mix}: rounding to F16 and quantizing again loses the grid");
        } else {
            // desc_act's permuted groups put several scales in a block; every layer of the
            // asymmetric AWQ fixture has some block (zero point and codes) Q4_1 cannot hold.
            assert!(exact.is_empty(), "{kind} {mix}: no layer maps: {exact:?}");
            assert!(
                std::fs::read(&direct).unwrap() == std::fs::read(&twice).unwrap(),
                "{kind} {mix}: not the F16 route"
            );
        }
    }
}
