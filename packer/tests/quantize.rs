//! `pack --quantize`: the tensor types of each mix are the reference quantizer's (a committed
//! list made by `llama-quantize` on the fixtures below), the quantized values are close to the
//! source, the GGUF packed into a llamafile is the one `--gguf-out` writes, and bad input is
//! refused with one line and nothing written.

use kernels_cpu::types::{dequantize_row, info};
use kernels_cpu::WeightType;
use llamafile_format::gguf::writer::{build, TensorSpec};
use llamafile_format::gguf::{GgufFile, MetaValue};
use packer::quant_mix::{Mix, MIXES};
use packer::quantize::{plan, quantize_to_gguf, QuantizeOptions};
use std::path::{Path, PathBuf};

/// The shape of a fixture model (architecture `llama`, F16 matrices, F32 norms).
struct Shape {
    name: &'static str,
    layers: usize,
    embd: u64,
    ff: u64,
    heads: u32,
    kv_heads: u32,
    vocab: u64,
    /// Without `output.weight` (the token embedding is the output matrix).
    tied: bool,
}

/// 32 layers (every layer-position rule shows), 4 query heads per KV head, an FFN width that is
/// not a multiple of 256 (FFN down falls back to 32-block types).
const DEEP: Shape =
    Shape { name: "deep", layers: 32, embd: 256, ff: 352, heads: 8, kv_heads: 2, vocab: 512, tied: false };
/// Rows of 96 everywhere (every K type falls back), tied embeddings, no grouped heads.
const NARROW: Shape =
    Shape { name: "narrow", layers: 6, embd: 96, ff: 256, heads: 3, kv_heads: 3, vocab: 300, tied: true };

/// Rows that are whole 256-blocks everywhere (no fallback types): for the importance matrix.
const ALIGNED: Shape =
    Shape { name: "aligned", layers: 4, embd: 256, ff: 512, heads: 8, kv_heads: 2, vocab: 512, tied: false };

/// Deterministic values in about [-0.05, 0.05] (a few larger, as real weights have).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            if i % 97 == 0 {
                u * 0.8
            } else {
                u * 0.1
            }
        })
        .collect()
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| half::f16::from_f32(*x).to_bits().to_le_bytes()).collect()
}

/// The fixture model as GGUF bytes (tensors in the converter's order: embedding, layers, then
/// the output norm and matrix).
fn fixture(s: &Shape) -> Vec<u8> {
    let head_dim = s.embd / s.heads as u64;
    let kv = head_dim * s.kv_heads as u64;
    let meta: Vec<(&str, MetaValue)> = vec![
        ("general.architecture", MetaValue::String("llama".into())),
        ("general.name", MetaValue::String(format!("quant-mix-{}", s.name))),
        ("llama.context_length", MetaValue::U32(256)),
        ("llama.embedding_length", MetaValue::U32(s.embd as u32)),
        ("llama.block_count", MetaValue::U32(s.layers as u32)),
        ("llama.feed_forward_length", MetaValue::U32(s.ff as u32)),
        ("llama.attention.head_count", MetaValue::U32(s.heads)),
        ("llama.attention.head_count_kv", MetaValue::U32(s.kv_heads)),
        ("llama.rope.dimension_count", MetaValue::U32(head_dim as u32)),
        ("llama.attention.layer_norm_rms_epsilon", MetaValue::F32(1e-5)),
        ("general.file_type", MetaValue::U32(1)),
    ];
    let mut shapes: Vec<(String, Vec<u64>)> = vec![("token_embd.weight".into(), vec![s.embd, s.vocab])];
    for b in 0..s.layers {
        for (n, dims) in [
            ("attn_norm.weight", vec![s.embd]),
            ("attn_q.weight", vec![s.embd, s.embd]),
            ("attn_k.weight", vec![s.embd, kv]),
            ("attn_v.weight", vec![s.embd, kv]),
            ("attn_output.weight", vec![s.embd, s.embd]),
            ("ffn_norm.weight", vec![s.embd]),
            ("ffn_gate.weight", vec![s.embd, s.ff]),
            ("ffn_up.weight", vec![s.embd, s.ff]),
            ("ffn_down.weight", vec![s.ff, s.embd]),
        ] {
            shapes.push((format!("blk.{b}.{n}"), dims));
        }
    }
    shapes.push(("output_norm.weight".into(), vec![s.embd]));
    if !s.tied {
        shapes.push(("output.weight".into(), vec![s.embd, s.vocab]));
    }
    let data: Vec<(u32, Vec<u8>)> = shapes
        .iter()
        .enumerate()
        .map(|(i, (_, dims))| {
            let n = dims.iter().product::<u64>() as usize;
            if dims.len() == 1 {
                (0, vec![1.0f32; n].iter().flat_map(|x| x.to_le_bytes()).collect())
            } else {
                (1, f16_bytes(&values(n, i as u64 + 1)))
            }
        })
        .collect();
    let specs: Vec<TensorSpec> = shapes
        .iter()
        .zip(&data)
        .map(|((n, d), (t, b))| TensorSpec { name: n, dims: d, ggml_type: *t, data: b })
        .collect();
    build(&meta, &specs, 32)
}

/// The fixture written to the test's target folder (where `make_quant_mix_types.py` reads it).
fn fixture_file(s: &Shape) -> PathBuf {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("quant-mix-{}-f16.gguf", s.name));
    let bytes = fixture(s);
    if std::fs::read(&p).ok().as_deref() != Some(&bytes[..]) {
        test_support::write_atomically(&p, &bytes);
    }
    p
}

fn opts(mix: &str) -> QuantizeOptions {
    QuantizeOptions { mix: Mix::parse(mix).unwrap(), imatrix: None, precomputed: None }
}

/// `{"<fixture>": {"<mix>": [[tensor, type], ...]}}`: the reference's output, tensor by tensor
/// in its file order (tests/data/make_quant_mix_types.py).
fn reference_types() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/quant_mix_types.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

#[test]
fn every_mix_chooses_the_reference_types_in_its_order() {
    // The fixtures first: the script that makes the reference list reads them.
    let files = [(&DEEP, fixture_file(&DEEP)), (&NARROW, fixture_file(&NARROW))];
    let _ = (fixture_file(&ALIGNED), imatrix_file());
    let reference = reference_types();
    for (shape, file) in files {
        let g = GgufFile::open(&file).unwrap();
        for mix in MIXES {
            let want = reference[shape.name][mix.name]
                .as_array()
                .unwrap_or_else(|| panic!("no list for {} {}", shape.name, mix.name));
            let p = plan(&g, &opts(mix.name)).unwrap();
            let ours: Vec<(String, String)> = p
                .tensors
                .iter()
                .map(|t| (g.tensors()[t.input].name.clone(), llamafile_format::gguf::ggml_type_name(t.ggml_type)))
                .collect();
            let want: Vec<(String, String)> =
                want.iter().map(|e| (e[0].as_str().unwrap().to_string(), e[1].as_str().unwrap().to_string())).collect();
            assert_eq!(ours, want, "{} {}", shape.name, mix.name);
        }
    }
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn every_mix_writes_the_reference_quantizers_file_byte_for_byte() {
    let reference = &reference_types()["sha256"];
    let dir = tempfile::tempdir().unwrap();
    for shape in [&DEEP, &NARROW] {
        let src = fixture_file(shape);
        for mix in MIXES {
            let out = dir.path().join(format!("{}-{}.gguf", shape.name, mix.name));
            quantize_to_gguf(&src, &opts(mix.name), &out, false, false).unwrap();
            assert_eq!(
                sha256_hex(&out),
                reference[shape.name][mix.name].as_str().unwrap(),
                "{} {}",
                shape.name,
                mix.name
            );
            std::fs::remove_file(&out).unwrap();
        }
    }
    // With an importance matrix (the weighted searches of Q4_K, Q5_K and Q6_K), through the
    // command line: the file records the --imatrix path as given, so both run beside it.
    let (src, im) = (fixture_file(&ALIGNED), imatrix_file());
    for mix in ["Q4_K_M", "Q5_K_S", "Q6_K"] {
        let out = dir.path().join(format!("aligned-{mix}.gguf"));
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_pack"))
            .current_dir(im.parent().unwrap())
            .args(["--gguf", src.file_name().unwrap().to_str().unwrap(), "--quantize", mix, "--imatrix"])
            .arg(im.file_name().unwrap())
            .arg("--gguf-out")
            .arg(&out)
            // one thread writes the same bytes as one per core
            .args(if mix == "Q4_K_M" { &["--threads", "1"][..] } else { &[][..] })
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(
            sha256_hex(&out),
            reference["aligned-imatrix"][mix].as_str().unwrap(),
            "aligned {mix} with --imatrix"
        );
    }
}

/// RMS of `a - b` relative to the RMS of `b`.
fn rel_rms(a: &[f32], b: &[f32]) -> f32 {
    let e: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (e / n).sqrt() as f32
}

fn dequantized(g: &GgufFile, name: &str) -> Vec<f32> {
    let t = g.tensor(name).unwrap();
    let mut v = vec![0f32; t.n_elements() as usize];
    dequantize_row(t.wtype.unwrap(), g.tensor_data(t), &mut v);
    v
}

#[test]
fn quantized_gguf_has_the_mix_metadata_and_close_values() {
    let dir = tempfile::tempdir().unwrap();
    let src_path = fixture_file(&NARROW);
    let src = GgufFile::open(&src_path).unwrap();
    for mix in ["Q4_K_M", "Q8_0", "Q2_K"] {
        let out = dir.path().join(format!("{mix}.gguf"));
        let size = quantize_to_gguf(&src_path, &opts(mix), &out, false, false).unwrap();
        assert_eq!(std::fs::metadata(&out).unwrap().len(), size);
        let q = GgufFile::open(&out).unwrap();
        let m = Mix::parse(mix).unwrap();
        assert_eq!(q.get_u64("general.file_type"), Some(m.file_type as u64), "{mix}");
        assert_eq!(q.get_u64("general.quantization_version"), Some(2));
        assert_eq!(q.get_str("general.name"), Some("quant-mix-narrow"));
        // The input's metadata in its order, then the two keys the quantizer sets.
        let keys: Vec<&str> = q.metadata().iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(&keys[keys.len() - 2..], ["general.quantization_version", "general.file_type"]);
        for t in q.tensors() {
            let ty = t.wtype.unwrap();
            let orig = dequantized(&src, &t.name);
            let ours = dequantized(&q, &t.name);
            // The bounds are for unit gaussians; these values have a few 8x outliers.
            let bound = 1.5 * info(ty).max_rms_error;
            let e = rel_rms(&ours, &orig);
            assert!(e <= bound, "{mix} {} as {ty}: relative RMS error {e} > {bound}", t.name);
            if t.dims.len() == 1 {
                assert_eq!(ty, WeightType::F32);
            }
        }
    }
}

fn runtime() -> PathBuf {
    // Any x86-64/aarch64 executable stands in for the runtime: this test binary.
    std::env::current_exe().unwrap()
}

#[test]
fn the_packed_gguf_is_the_one_gguf_out_writes() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture_file(&NARROW);
    let plain = dir.path().join("m.gguf");
    quantize_to_gguf(&src, &opts("q5_k_m"), &plain, false, false).unwrap();
    let out = dir.path().join("m.Q5_K_M.llamafile");
    let o = packer::PackOptions {
        runtime: runtime(),
        gguf: src,
        out: out.clone(),
        args: None,
        extra: vec![],
        force: false,
        progress: false,
        sign: None,
    };
    let r = packer::pack_with(&o, Some(&opts("q5_k_m"))).unwrap();
    assert_eq!(r.gguf_entry, "m.Q5_K_M.gguf");
    assert_eq!(r.gguf_offset % packer::GGUF_ALIGN, 0);
    let packed = std::fs::read(&out).unwrap();
    let entry = &packed[r.gguf_offset as usize..(r.gguf_offset + r.gguf_size) as usize];
    assert!(entry == std::fs::read(&plain).unwrap(), "the llamafile's GGUF differs from --gguf-out's");
    // The zip's CRC is that of the streamed bytes: the runtime's reader opens it.
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.get_u64("general.file_type"), Some(17));
    let zip = zip::ZipArchive::new(std::fs::File::open(&out).unwrap());
    let mut zip = zip.unwrap();
    let mut e = zip.by_name("m.Q5_K_M.gguf").unwrap();
    std::io::copy(&mut e, &mut std::io::sink()).expect("CRC-32 checked by the zip reader");
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn bad_input_is_one_line_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    // A matrix in a type the kernels cannot dequantize (IQ2_XS, id 17).
    let iq2 = vec![0u8; 74];
    let bytes = build(
        &[("general.architecture", MetaValue::String("llama".into()))],
        &[TensorSpec { name: "blk.0.attn_q.weight", dims: &[256, 1], ggml_type: 17, data: &iq2 }],
        32,
    );
    let src = dir.path().join("in.gguf");
    std::fs::write(&src, bytes).unwrap();
    let out = dir.path().join("out.gguf");
    let e = format!("{:#}", quantize_to_gguf(&src, &opts("Q4_K_M"), &out, false, false).unwrap_err());
    assert_eq!(
        e,
        format!(
            "{}: tensor 'blk.0.attn_q.weight' has type IQ2_XS, which pack cannot dequantize to quantize it again",
            src.display()
        )
    );
    let f16 = fixture_file(&NARROW);
    let im = QuantizeOptions { imatrix: Some(dir.path().join("imatrix.gguf")), ..opts("Q4_K_M") };
    let e = format!("{:#}", quantize_to_gguf(&f16, &im, &out, false, false).unwrap_err());
    assert!(e.starts_with("--imatrix ") && !e.contains('\n'), "{e}");
    let o = packer::PackOptions {
        runtime: runtime(),
        gguf: src.clone(),
        out: dir.path().join("x.llamafile"),
        args: None,
        extra: vec![],
        force: false,
        progress: false,
        sign: None,
    };
    assert!(packer::pack_with(&o, Some(&opts("Q8_0"))).is_err());
    assert_eq!(listing(dir.path()), ["in.gguf"], "nothing written");
}

#[test]
fn thread_counts_that_are_not_a_positive_number_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture_file(&NARROW);
    let out = dir.path().join("out.gguf");
    for bad in ["0", "-2", "many", "100000"] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_pack"))
            .arg("--gguf")
            .arg(&src)
            .args(["--quantize", "Q8_0", &format!("--threads={bad}"), "--gguf-out"])
            .arg(&out)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "--threads {bad}: {e}");
        assert!(e.contains("--threads"), "--threads {bad}: {e}");
    }
    assert!(listing(dir.path()).is_empty(), "nothing written");
}

#[test]
fn quantized_input_is_requantized_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let q8 = dir.path().join("q8.gguf");
    quantize_to_gguf(&fixture_file(&NARROW), &opts("Q8_0"), &q8, false, false).unwrap();
    let g = GgufFile::open(&q8).unwrap();
    let p = plan(&g, &opts("Q4_0")).unwrap();
    // Every matrix but the tied embedding (Q8_0 in both mixes, copied) is converted again.
    let matrices = g.tensors().iter().filter(|t| t.dims.len() == 2).count();
    assert_eq!(p.requantized.len(), matrices - 1);
    assert!(p.requantized.iter().all(|n| n.ends_with("(Q8_0)")), "{:?}", p.requantized);
    let out = dir.path().join("q4.gguf");
    quantize_to_gguf(&q8, &opts("Q4_0"), &out, false, false).unwrap();
    let q4 = GgufFile::open(&out).unwrap();
    assert_eq!(q4.tensor("blk.0.attn_q.weight").unwrap().wtype, Some(WeightType::Q4_0));
    assert_eq!(q4.tensor("token_embd.weight").unwrap().wtype, Some(WeightType::Q8_0));
}

/// An importance matrix for `shape` in the reference's GGUF layout: per matrix, `NAME.in_sum2`
/// (column sums of squared activations over `count` activations) and `NAME.counts`; the
/// importances (sum / count) span two orders of magnitude, as real ones do.
fn imatrix_for(shape: &Shape, count: f32) -> Vec<u8> {
    let src = GgufFile::from_bytes("fixture", fixture(shape)).unwrap();
    let (mut sums, mut counts) = (Vec::new(), Vec::new());
    for (k, t) in src.tensors().iter().filter(|t| t.dims.len() == 2 && t.name != "token_embd.weight").enumerate() {
        let s: Vec<f32> =
            values(t.dims[0] as usize, 1000 + k as u64).iter().map(|v| (v * 40.0).exp() * count).collect();
        sums.push((
            format!("{}.in_sum2", t.name),
            vec![t.dims[0], 1],
            s.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
        ));
        counts.push((format!("{}.counts", t.name), vec![1, 1], count.to_le_bytes().to_vec()));
    }
    // The counts first: ggml's reader wants the data section to end on the alignment, and
    // `build` pads between tensors only (the sums are whole 32-byte units).
    let all: Vec<_> = counts.into_iter().chain(sums).collect();
    let specs: Vec<TensorSpec> =
        all.iter().map(|(n, d, b)| TensorSpec { name: n, dims: d, ggml_type: 0, data: b }).collect();
    let meta = [
        ("general.type", MetaValue::String("imatrix".into())),
        ("imatrix.datasets", MetaValue::Array(vec![MetaValue::String("fixture".into())])),
        ("imatrix.chunk_count", MetaValue::U32(1)),
        ("imatrix.chunk_size", MetaValue::U32(512)),
    ];
    build(&meta, &specs, 32)
}

/// ALIGNED's importance matrix, beside the fixture (where `make_quant_mix_types.py` reads it).
fn imatrix_file() -> PathBuf {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join("quant-mix-aligned-imatrix.gguf");
    let bytes = imatrix_for(&ALIGNED, 512.0);
    if std::fs::read(&p).ok().as_deref() != Some(&bytes[..]) {
        test_support::write_atomically(&p, &bytes);
    }
    p
}

/// Σ importance · error² of `ours` against `orig`, over every row.
fn weighted_error(ours: &[f32], orig: &[f32], importance: &[f32]) -> f64 {
    let cols = importance.len();
    ours.iter().zip(orig).enumerate().map(|(i, (a, b))| importance[i % cols] as f64 * ((a - b) as f64).powi(2)).sum()
}

#[test]
fn an_importance_matrix_lowers_the_weighted_error_of_k_quants() {
    let dir = tempfile::tempdir().unwrap();
    let src_path = fixture_file(&ALIGNED);
    let src = GgufFile::open(&src_path).unwrap();
    let im_path = imatrix_file();
    let im = packer::imatrix::load(&im_path).unwrap();
    for mix in ["Q4_K_M", "Q5_K_S", "Q6_K"] {
        let plain = dir.path().join(format!("{mix}.gguf"));
        let weighted = dir.path().join(format!("{mix}-imatrix.gguf"));
        quantize_to_gguf(&src_path, &opts(mix), &plain, false, false).unwrap();
        let with = QuantizeOptions { imatrix: Some(im_path.clone()), ..opts(mix) };
        quantize_to_gguf(&src_path, &with, &weighted, false, false).unwrap();
        let (p, w) = (GgufFile::open(&plain).unwrap(), GgufFile::open(&weighted).unwrap());
        let (mut better, mut total) = (0, 0);
        for t in w.tensors().iter().filter(|t| im.entries.contains_key(&t.name)) {
            let orig = dequantized(&src, &t.name);
            let imp = &im.entries[&t.name];
            let e_plain = weighted_error(&dequantized(&p, &t.name), &orig, imp);
            let e_weighted = weighted_error(&dequantized(&w, &t.name), &orig, imp);
            total += 1;
            better += (e_weighted < e_plain) as usize;
        }
        assert_eq!(total, 4 * 7 + 1, "{mix}: every matrix but the token embedding has importances");
        assert!(better == total, "{mix}: the importance-weighted error is lower on {better} of {total} tensors");
    }
}

#[test]
fn importance_matrices_that_do_not_fit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let im_path = dir.path().join("im.gguf");
    // NARROW's rows of 96 fall back to Q5_0/Q5_1, whose quantizers take no importances here.
    std::fs::write(&im_path, imatrix_for(&NARROW, 4.0)).unwrap();
    let out = dir.path().join("out.gguf");
    let with = |mix: &str| QuantizeOptions { imatrix: Some(im_path.clone()), ..opts(mix) };
    let e = format!("{:#}", quantize_to_gguf(&fixture_file(&NARROW), &with("Q4_K_M"), &out, false, false).unwrap_err());
    assert!(e.starts_with("--imatrix with --quantize Q4_K_M: tensor '") && e.contains("gets type Q5_0"), "{e}");
    let e = format!("{:#}", quantize_to_gguf(&fixture_file(&NARROW), &with("Q4_0"), &out, false, false).unwrap_err());
    assert_eq!(
        e,
        "--imatrix with --quantize Q4_0: importance matrices are taken by the Q4_K_S/M, Q5_K_S/M and Q6_K mixes only"
    );
    // Another model's importances: the column counts differ.
    let e = format!("{:#}", quantize_to_gguf(&fixture_file(&ALIGNED), &with("Q6_K"), &out, false, false).unwrap_err());
    assert!(e.starts_with("--imatrix: '") && e.contains("importances, the tensor needs 256"), "{e}");
    // Not an importance matrix: a model.
    let model = QuantizeOptions { imatrix: Some(fixture_file(&NARROW)), ..opts("Q6_K") };
    let e = format!("{:#}", quantize_to_gguf(&fixture_file(&ALIGNED), &model, &out, false, false).unwrap_err());
    assert!(e.contains("no 'imatrix.datasets' metadata"), "{e}");
    assert_eq!(listing(dir.path()), ["im.gguf"], "nothing written");
}
