use super::*;
use std::collections::HashMap;

/// Tensors by name, as a checkpoint would hand them to [`dequantize_linear`].
#[derive(Default)]
struct Store(HashMap<String, (&'static str, Vec<usize>, Vec<u8>)>);

impl Store {
    fn i32s(&mut self, name: &str, shape: &[usize], v: &[u32]) {
        self.0.insert(name.into(), ("I32", shape.to_vec(), v.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }
    fn f16s(&mut self, name: &str, shape: &[usize], v: &[f32]) {
        self.0.insert(name.into(), ("F16", shape.to_vec(), v.iter().flat_map(|&x| f32_to_f16(x)).collect()));
    }
    fn get(&self, name: &str) -> Option<RawTensor<'_>> {
        self.0.get(name).map(|(d, s, b)| RawTensor { dtype: d, shape: s.clone(), data: b })
    }
    fn dequantize(&self, m: &QuantMethod) -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
        dequantize_linear(m, "l", &|n| self.get(n))
    }
}

fn gptq(group_size: Option<usize>, desc_act: bool) -> QuantMethod {
    QuantMethod::Gptq(GptqConfig {
        group_size,
        desc_act,
        sym: true,
        zeros_minus_one: true,
        source: "quantize_config.json".into(),
    })
}

fn awq(group_size: Option<usize>) -> QuantMethod {
    QuantMethod::Awq(AwqConfig { group_size, source: "quant_config.json".into() })
}

/// A GPTQ layer of 8 inputs x 8 outputs, one group: input column i of output row j has code
/// `(i + j) % 16`... packed by hand below from the format's description.
#[test]
fn gptq_codes_run_along_the_input_lowest_nibble_first_and_zeros_are_stored_minus_one() {
    let mut s = Store::default();
    // qweight[0][j]: nibble k is input k of output j. Output 0 holds 0..7, output 1 holds 8..15.
    let mut words = vec![0u32; 8];
    words[0] = 0x7654_3210;
    words[1] = 0xfedc_ba98;
    s.i32s("l.qweight", &[1, 8], &words);
    // Zero point of output j stored as nibble j of the one word: 7 (real 8) for all but output 1,
    // stored 2 (real 3).
    s.i32s("l.qzeros", &[1, 1], &[0x7777_7727]);
    s.f16s("l.scales", &[1, 8], &[0.5, 0.25, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
    let (shape, w) = s.dequantize(&gptq(None, false)).unwrap();
    assert_eq!(shape, [8, 8]);
    assert_eq!(&w[0..8], &[-4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5]);
    assert_eq!(&w[8..16], &[1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0]);
    assert_eq!(&w[16..24], &[-8.0; 8]);
    // GPTQModel's gptq_v2 stores the zero point itself.
    let v2 = QuantMethod::Gptq(GptqConfig {
        zeros_minus_one: false,
        ..match gptq(None, false) {
            QuantMethod::Gptq(c) => c,
            _ => unreachable!(),
        }
    });
    let (_, w) = s.dequantize(&v2).unwrap();
    assert_eq!(&w[0..8], &[-3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0]);
}

#[test]
fn gptq_g_idx_picks_each_input_columns_group() {
    let mut s = Store::default();
    // 8 inputs, group size 4, so two groups; g_idx puts columns 0, 2, 4, 6 in group 1.
    s.i32s("l.qweight", &[1, 8], &[0x8888_8888; 8]);
    s.i32s("l.qzeros", &[2, 1], &[0x7777_7777, 0x7777_7777]);
    let mut scales = vec![1.0f32; 16];
    scales[8..].fill(2.0);
    s.f16s("l.scales", &[2, 8], &scales);
    s.i32s("l.g_idx", &[8], &[1, 0, 1, 0, 1, 0, 1, 0]);
    // Every code is 8 and every zero 8: all weights 0. Make the codes differ: input k = 9.
    s.i32s("l.qweight", &[1, 8], &[0x9999_9999; 8]);
    let (_, w) = s.dequantize(&gptq(Some(4), true)).unwrap();
    assert_eq!(&w[0..8], &[2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0]);
    // Without g_idx, desc_act needs it; without desc_act the groups follow the columns.
    s.0.remove("l.g_idx");
    let e = s.dequantize(&gptq(Some(4), true)).unwrap_err().to_string();
    assert_eq!(e, "tensor 'l.g_idx' is missing, and quantize_config.json has desc_act true (the columns' groups)");
    let (_, w) = s.dequantize(&gptq(Some(4), false)).unwrap();
    assert_eq!(&w[0..8], &[1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]);
}

#[test]
fn awq_packs_along_the_output_in_its_interleaved_order() {
    let mut s = Store::default();
    // qweight[i][0]: nibble k holds output column [0, 2, 4, 6, 1, 3, 5, 7][k].
    s.i32s("l.qweight", &[2, 1], &[0x7654_3210, 0x0000_0000]);
    // Zero points 1 for columns 0..3 and 0 for 4..7, in the same order: nibbles (0,0,1,1,0,0,1,1)
    // hold columns (0,2,4,6,1,3,5,7), so columns 0..3 need nibbles 0, 4, 1, 5.
    s.i32s("l.qzeros", &[1, 1], &[0x0011_0011]);
    s.f16s("l.scales", &[1, 8], &[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5]);
    let (shape, w) = s.dequantize(&awq(None)).unwrap();
    assert_eq!(shape, [8, 2]);
    // Row j, input 0: code of column j minus its zero; input 1: code 0.
    let col0: Vec<f32> = (0..8).map(|j| w[j * 2]).collect();
    assert_eq!(col0, [-1.0, 3.0, 0.0, 4.0, 2.0, 6.0, 3.0, 3.5]);
    let col1: Vec<f32> = (0..8).map(|j| w[j * 2 + 1]).collect();
    assert_eq!(col1, [-1.0, -1.0, -1.0, -1.0, 0.0, 0.0, 0.0, 0.0]);
}

#[test]
fn tensors_that_do_not_fit_are_refused_naming_them() {
    let base = || {
        let mut s = Store::default();
        s.i32s("l.qweight", &[4, 8], &[0; 32]);
        s.i32s("l.qzeros", &[1, 1], &[0x7777_7777]);
        s.f16s("l.scales", &[1, 8], &[1.0; 8]);
        s
    };
    let m = gptq(Some(32), false);
    assert!(base().dequantize(&m).is_ok());
    type Spoil = Box<dyn Fn(&mut Store)>;
    let cases: Vec<(Spoil, &str)> = vec![
        (Box::new(|s| drop(s.0.remove("l.scales"))), "tensor 'l.scales' is missing"),
        (Box::new(|s| s.f16s("l.scales", &[2, 8], &[1.0; 16])), "tensor 'l.scales' has shape [2, 8], expected [1, 8]"),
        (Box::new(|s| s.f16s("l.qzeros", &[1, 2], &[1.0; 2])), "tensor 'l.qzeros' has dtype F16, expected I32"),
        (
            Box::new(|s| s.i32s("l.qweight", &[4, 4], &[0; 16])),
            "tensor 'l.qweight' has 4 output features, not a multiple of 8",
        ),
        (Box::new(|s| s.i32s("l.qweight", &[4], &[0; 4])), "tensor 'l.qweight' has shape [4], expected two"),
        (
            Box::new(|s| s.i32s("l.qweight", &[5, 8], &[0; 40])),
            "tensor 'l.qweight': its 40 input features are not a multiple of the group size 32 (quantize_config.json)",
        ),
        (Box::new(|s| s.i32s("l.g_idx", &[32], &[1; 32])), "tensor 'l.g_idx': entry 0 is 1, but there are 1 groups"),
        (
            Box::new(|s| s.i32s("l.g_idx", &[32], &[u32::MAX; 32])),
            "tensor 'l.g_idx': entry 0 is -1, but there are 1 groups",
        ),
    ];
    for (spoil, want) in cases {
        let mut s = base();
        spoil(&mut s);
        let e = s.dequantize(&m).unwrap_err().to_string();
        assert!(e.starts_with(want), "{e:?} should start with {want:?}");
        assert!(!e.contains('\n'));
    }
    // A short data buffer is refused, not read past.
    let mut s = base();
    s.0.get_mut("l.scales").unwrap().2.pop();
    let e = s.dequantize(&m).unwrap_err().to_string();
    assert_eq!(e, "tensor 'l.scales' has 15 bytes of data for shape [1, 8] F16");
    // Names from the file are escaped.
    let e = dequantize_linear(&m, "x\x1b[2J", &|_| None).unwrap_err().to_string();
    assert_eq!(e, "tensor 'x\\x1b[2J.qweight' is missing");
}

fn settings(files: &[(&str, &str)], config: &str) -> anyhow::Result<Option<QuantMethod>> {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let r = method_from_dir(dir.path(), &serde_json::from_str(config).unwrap());
    // Messages name the file by its full path: keep the file name only.
    r.map_err(|e| anyhow::anyhow!(e.to_string().replace(&format!("{}/", dir.path().display()), "")))
}

#[test]
fn settings_are_read_from_each_place() {
    assert_eq!(settings(&[], "{}").unwrap(), None);
    let thebloke = r#"{"bits": 4, "group_size": 128, "damp_percent": 0.1, "desc_act": true, "sym": true,
        "true_sequential": true, "model_name_or_path": null, "model_file_base_name": "model"}"#;
    match settings(&[("quantize_config.json", thebloke)], "{}").unwrap() {
        Some(QuantMethod::Gptq(c)) => {
            assert_eq!((c.group_size, c.desc_act, c.sym, c.zeros_minus_one), (Some(128), true, true, true));
            assert!(c.source.ends_with("/quantize_config.json"), "{}", c.source);
        }
        other => panic!("{other:?}"),
    }
    let v2 = r#"{"bits": 4, "group_size": -1, "checkpoint_format": "gptq_v2"}"#;
    match settings(&[("quantize_config.json", v2)], "{}").unwrap() {
        Some(QuantMethod::Gptq(c)) => assert_eq!((c.group_size, c.desc_act, c.zeros_minus_one), (None, false, false)),
        other => panic!("{other:?}"),
    }
    let awq_file = r#"{"zero_point": true, "q_group_size": 128, "w_bit": 4, "version": "GEMM"}"#;
    match settings(&[("quant_config.json", awq_file)], "{}").unwrap() {
        Some(QuantMethod::Awq(c)) => assert_eq!(c.group_size, Some(128)),
        other => panic!("{other:?}"),
    }
    // config.json's quantization_config comes first (transformers reads it).
    let config = r#"{"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 64,
        "zero_point": true, "version": "gemm", "backend": "autoawq"}}"#;
    match settings(&[("quantize_config.json", thebloke)], config).unwrap() {
        Some(QuantMethod::Awq(c)) => {
            assert_eq!(c.group_size, Some(64));
            assert!(c.source.ends_with("/config.json: quantization_config"), "{}", c.source);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unsupported_settings_are_refused_naming_the_file_and_field() {
    let q = "quantize_config.json";
    let a = "quant_config.json";
    /// (files written, config.json, the message).
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        (&[(q, r#"{"bits": 8, "group_size": 128}"#)], "{}", "quantize_config.json: bits is 8; only 4-bit GPTQ is supported"),
        (&[(q, r#"{"group_size": 128}"#)], "{}", "quantize_config.json: no bits field"),
        (&[(q, r#"{"bits": 4}"#)], "{}", "quantize_config.json: no group_size field"),
        (
            &[(q, r#"{"bits": 4, "group_size": 0}"#)],
            "{}",
            "quantize_config.json: group_size is 0; expected a positive number of columns, or -1",
        ),
        (&[(q, r#"{"bits": "4", "group_size": 32}"#)], "{}", "quantize_config.json: bits is \"4\", expected an integer"),
        (
            &[(q, r#"{"bits": 4, "group_size": 32, "checkpoint_format": "marlin"}"#)],
            "{}",
            "quantize_config.json: checkpoint_format is 'marlin': only the gptq and gptq_v2 layouts are supported",
        ),
        (
            &[(q, r#"{"bits": 4, "group_size": 32, "is_marlin_format": true}"#)],
            "{}",
            "quantize_config.json: is_marlin_format is true: the Marlin layout is not supported (the GPTQ layout is)",
        ),
        (
            &[(q, r#"{"bits": 4, "group_size": 32, "quant_method": "awq"}"#)],
            "{}",
            "quantize_config.json: quant_method is \"awq\", expected 'gptq'",
        ),
        (&[(q, "{\"bits\": 4,")], "{}", "quantize_config.json: not valid JSON: EOF while parsing"),
        (&[(q, "[4]")], "{}", "quantize_config.json: not a JSON object"),
        (&[(a, r#"{"w_bit": 3, "q_group_size": 128}"#)], "{}", "quant_config.json: w_bit is 3; only 4-bit AWQ is supported"),
        (
            &[(a, r#"{"w_bit": 4, "q_group_size": 128, "version": "GEMV"}"#)],
            "{}",
            "quant_config.json: version is 'GEMV': only AWQ GEMM checkpoints are supported",
        ),
        (
            &[(a, r#"{"w_bit": 4, "q_group_size": 128, "zero_point": false}"#)],
            "{}",
            "quant_config.json: zero_point is false: AWQ without zero points is not supported",
        ),
        (
            &[(q, r#"{"bits": 4, "group_size": 32}"#), (a, r#"{"w_bit": 4, "q_group_size": 128}"#)],
            "{}",
            ": both quantize_config.json (GPTQ) and quant_config.json (AWQ) are there",
        ),
        (
            &[],
            r#"{"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": true}}"#,
            "config.json: quantization_config.quant_method is 'bitsandbytes': not supported (pack reads 4-bit GPTQ and AWQ GEMM checkpoints)",
        ),
        (
            &[],
            r#"{"quantization_config": {"quant_method": "exl2", "bits": 4.65}}"#,
            "config.json: quantization_config.quant_method is 'exl2': ExLlamaV2's format is not supported",
        ),
        (&[], r#"{"quantization_config": {"bits": 4}}"#, "config.json: quantization_config has no quant_method"),
        (
            &[],
            r#"{"quantization_config": {"quant_method": "gptq", "bits": 2, "group_size": 128}}"#,
            "config.json: quantization_config: bits is 2; only 4-bit GPTQ is supported",
        ),
        (
            &[],
            r#"{"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "backend": "llm-awq"}}"#,
            "config.json: quantization_config: backend is 'llm-awq': only AutoAWQ's packing is supported",
        ),
        (
            &[],
            r#"{"quantization_config": {"quant_method": "\u001b[31mx", "bits": 4}}"#,
            "config.json: quantization_config.quant_method is '\\x1b[31mx': not supported",
        ),
    ];
    for (files, config, want) in cases {
        let e = settings(files, config).unwrap_err().to_string();
        assert!(e.contains(want), "{e:?} should contain {want:?}");
        assert!(!e.contains('\n') && !e.contains('\x1b'), "{e:?}");
    }
}

#[test]
fn quantization_tensors_are_told_apart() {
    for n in ["model.layers.0.mlp.down_proj.qweight", "a.qzeros", "a.scales", "a.g_idx"] {
        assert!(is_quantization_tensor(n), "{n}");
    }
    for n in ["model.layers.0.mlp.down_proj.weight", "model.norm.weight", "a.bias", "lm_head.weight"] {
        assert!(!is_quantization_tensor(n), "{n}");
    }
}

/// A GPTQ layer of 64 inputs x 8 outputs, group size 32, with the given codes and zero points
/// (stored as GPTQ v1 does, minus one) and scales.
fn gptq_layer(code: impl Fn(usize, usize) -> u32, zero: impl Fn(usize, usize) -> u32, scale: f32) -> Store {
    let mut s = Store::default();
    let words: Vec<u32> =
        (0..8 * 8).map(|k| (0..8).map(|n| code(k / 8 * 8 + n, k % 8) << (4 * n)).fold(0, |a, b| a | b)).collect();
    s.i32s("l.qweight", &[8, 8], &words);
    let zeros: Vec<u32> = (0..2).map(|g| (0..8).map(|j| (zero(g, j) - 1) << (4 * j)).fold(0, |a, b| a | b)).collect();
    s.i32s("l.qzeros", &[2, 1], &zeros);
    s.f16s("l.scales", &[2, 8], &(0..16).map(|k| scale * (1.0 + k as f32 / 16.0)).collect::<Vec<_>>());
    s
}

fn legacy(s: &Store, m: &QuantMethod, to: WeightType) -> Option<Vec<f32>> {
    let blocks = exact_legacy_q4(m, "l", &|n| s.get(n), to).unwrap()?;
    let mut w = vec![0f32; 8 * 64];
    for (row, b) in w.chunks_exact_mut(64).zip(blocks.chunks_exact(to.row_bytes(64))) {
        dequantize_row(to, b, row);
    }
    Some(w)
}

/// `w` (rows of 64) through the usual quantizer of `to` and back.
fn requantized(w: &[f32], to: WeightType) -> Vec<f32> {
    let rb = to.row_bytes(64);
    let mut back = vec![0f32; w.len()];
    for (row, out) in w.chunks_exact(64).zip(back.chunks_exact_mut(64)) {
        let mut b = vec![0u8; rb];
        kernels_cpu::types::quantize_weights(to, row, &mut b);
        dequantize_row(to, &b, out);
    }
    back
}

#[test]
fn symmetric_group_32_maps_onto_q4_0_and_q4_1_exactly() {
    let full = gptq_layer(|i, j| ((i * 7 + j * 3) % 16) as u32, |_, _| 8, 0.0123);
    // Codes 1..=14 only: no block holds the extreme code the usual quantizers scale from.
    let inner = gptq_layer(|i, j| (1 + (i * 7 + j * 3) % 14) as u32, |_, _| 8, 0.0123);
    for s in [&full, &inner] {
        let (_, want) = s.dequantize(&gptq(Some(32), false)).unwrap();
        for to in [WeightType::Q4_0, WeightType::Q4_1] {
            let got = legacy(s, &gptq(Some(32), false), to).unwrap_or_else(|| panic!("{to} should map"));
            assert_eq!(got, want, "{to}");
        }
    }
    // What the mapping saves: quantizing the dequantized weights again moves them.
    let (_, want) = inner.dequantize(&gptq(Some(32), false)).unwrap();
    for to in [WeightType::Q4_0, WeightType::Q4_1] {
        assert_ne!(requantized(&want, to), want, "{to}");
    }
}

#[test]
fn blocks_that_cannot_be_exact_are_left_to_the_quantizer() {
    // Zero point 3 and codes spanning 0..=15: q - z spans -3..=12, beyond Q4_0's -8..=7 either way.
    let s = gptq_layer(|i, j| ((i + j) % 16) as u32, |_, _| 3, 0.01);
    assert_eq!(legacy(&s, &gptq(Some(32), false), WeightType::Q4_0), None);
    // Q4_1 needs m = -3s in f16: s = 0.01 * (1 + k/16) rounded to f16 times 3 needs 13 bits for
    // some k (checked by the mapping itself), so some block fails.
    let (_, want) = s.dequantize(&gptq(Some(32), false)).unwrap();
    if let Some(got) = legacy(&s, &gptq(Some(32), false), WeightType::Q4_1) {
        assert_eq!(got, want);
    }
    // Zero point 4 (a power of two): m = -4s is exact, so Q4_1 maps.
    let s = gptq_layer(|i, j| ((i + j) % 16) as u32, |_, _| 4, 0.01);
    let (_, want) = s.dequantize(&gptq(Some(32), false)).unwrap();
    assert_eq!(legacy(&s, &gptq(Some(32), false), WeightType::Q4_1).unwrap(), want);
    // Group size 16: a 32-block spans two groups (two scales): not a Q4 block.
    let mut s = gptq_layer(|i, j| ((i + j) % 16) as u32, |_, _| 8, 0.01);
    s.i32s("l.qzeros", &[4, 1], &[0x7777_7777; 4]);
    s.f16s("l.scales", &[4, 8], &(0..32).map(|k| 0.01 * (1.0 + k as f32)).collect::<Vec<_>>());
    assert_eq!(legacy(&s, &gptq(Some(16), false), WeightType::Q4_0), None);
    // Other types are no 4-bit grid.
    let e = exact_legacy_q4(&gptq(Some(32), false), "l", &|n| s.get(n), WeightType::Q8_0).unwrap_err();
    assert_eq!(e.to_string(), "exact mapping to Q8_0: only Q4_0 and Q4_1 share the 4-bit grid");
}
