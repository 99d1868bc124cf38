//! Small valid inputs for every target, made with the project's own writers: a tiny llama model
//! from `gguf::writer`, a llamafile-style zip from the packer's zip writer, `.args` texts, the
//! built-in chat templates and the real models' templates from the shared vocabularies, and
//! sample requests for each route.

use llamafile_engine::tokenizer::chat;
use llamafile_format::gguf::writer::{build, TensorSpec};
use llamafile_format::gguf::{GgufFile, MetaValue};

/// The tiny model's shape: one block, embedding 32 (one Q8_0 block per row), four query heads
/// of 8 over two KV heads, FFN 64, a 12-token SPM vocabulary.
pub const N_EMBD: u64 = 32;
pub const N_FF: u64 = 64;
pub const TOKENS: [&str; 12] = ["<unk>", "<s>", "</s>", "▁", "a", "b", "c", "▁a", "▁b", "▁c", "ab", "▁ab"];

/// The tiny model's metadata, in file order.
pub fn tiny_metadata() -> Vec<(&'static str, MetaValue)> {
    let strs = |v: &[&str]| MetaValue::Array(v.iter().map(|s| MetaValue::String(s.to_string())).collect());
    vec![
        ("general.architecture", MetaValue::String("llama".into())),
        ("general.name", MetaValue::String("tiny fuzz seed".into())),
        ("llama.block_count", MetaValue::U32(1)),
        ("llama.context_length", MetaValue::U32(256)),
        ("llama.embedding_length", MetaValue::U32(N_EMBD as u32)),
        ("llama.feed_forward_length", MetaValue::U32(N_FF as u32)),
        ("llama.attention.head_count", MetaValue::U32(4)),
        ("llama.attention.head_count_kv", MetaValue::U32(2)),
        ("llama.rope.dimension_count", MetaValue::U32(8)),
        ("llama.rope.freq_base", MetaValue::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", MetaValue::F32(1e-5)),
        ("tokenizer.ggml.model", MetaValue::String("llama".into())),
        ("tokenizer.ggml.tokens", strs(&TOKENS)),
        ("tokenizer.ggml.scores", MetaValue::Array((0..TOKENS.len()).map(|i| MetaValue::F32(-(i as f32))).collect())),
        (
            "tokenizer.ggml.token_type",
            MetaValue::Array(
                (0..TOKENS.len())
                    .map(|i| {
                        MetaValue::I32(match i {
                            0 => 2,
                            1 | 2 => 3,
                            _ => 1,
                        })
                    })
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.bos_token_id", MetaValue::U32(1)),
        ("tokenizer.ggml.eos_token_id", MetaValue::U32(2)),
        ("tokenizer.ggml.unknown_token_id", MetaValue::U32(0)),
        ("tokenizer.ggml.add_bos_token", MetaValue::Bool(true)),
        (
            "tokenizer.chat_template",
            MetaValue::String(
                "{% for m in messages %}{{ '<s>' if loop.first }}{{ m.role }}: {{ m.content }}\n{% endfor %}\
                 {% if add_generation_prompt %}assistant:{% endif %}"
                    .into(),
            ),
        ),
    ]
}

/// One tensor of the tiny model: name, dims (ggml order), ggml type, data.
pub struct Tensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub data: Vec<u8>,
}

/// Q8_0 rows with scale 1/16 and small varied quants (deterministic), or f32 ones for norms.
fn q8_0(rows: u64, cols: u64, salt: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for r in 0..rows {
        for b in 0..cols / 32 {
            out.extend_from_slice(&0x2C00u16.to_le_bytes());
            out.extend((0..32u64).map(|i| (((r * 131 + b * 17 + i * 7 + salt) % 15) as i8 - 7) as u8));
        }
    }
    out
}

pub fn tiny_tensors() -> Vec<Tensor> {
    let n_vocab = TOKENS.len() as u64;
    let m = |name: &str, cols: u64, rows: u64, salt: u64| Tensor {
        name: name.into(),
        dims: vec![cols, rows],
        ggml_type: 8,
        data: q8_0(rows, cols, salt),
    };
    let v = |name: &str, n: u64| Tensor {
        name: name.into(),
        dims: vec![n],
        ggml_type: 0,
        data: (0..n).flat_map(|_| 1.0f32.to_le_bytes()).collect(),
    };
    vec![
        m("token_embd.weight", N_EMBD, n_vocab, 1),
        v("output_norm.weight", N_EMBD),
        v("blk.0.attn_norm.weight", N_EMBD),
        m("blk.0.attn_q.weight", N_EMBD, 32, 2),
        m("blk.0.attn_k.weight", N_EMBD, 16, 3),
        m("blk.0.attn_v.weight", N_EMBD, 16, 4),
        m("blk.0.attn_output.weight", 32, N_EMBD, 5),
        v("blk.0.ffn_norm.weight", N_EMBD),
        m("blk.0.ffn_gate.weight", N_EMBD, N_FF, 6),
        m("blk.0.ffn_up.weight", N_EMBD, N_FF, 7),
        m("blk.0.ffn_down.weight", N_FF, N_EMBD, 8),
    ]
}

/// A GGUF from metadata and tensors, with 32-byte alignment.
pub fn gguf_from(metadata: &[(&str, MetaValue)], tensors: &[Tensor]) -> Vec<u8> {
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|t| TensorSpec { name: &t.name, dims: &t.dims, ggml_type: t.ggml_type, data: &t.data })
        .collect();
    build(metadata, &specs, 32)
}

/// The tiny model (about 9 KB): loads, tokenizes, renders its template and generates.
pub fn tiny_gguf() -> Vec<u8> {
    gguf_from(&tiny_metadata(), &tiny_tensors())
}

/// The tiny model with one metadata value replaced (or added when absent).
pub fn tiny_gguf_with(key: &'static str, value: MetaValue) -> Vec<u8> {
    let mut md = tiny_metadata();
    match md.iter_mut().find(|(k, _)| *k == key) {
        Some(kv) => kv.1 = value,
        None => md.push((key, value)),
    }
    gguf_from(&md, &tiny_tensors())
}

/// A llamafile-shaped file: a stand-in executable prefix, then a zip holding `.args` and the
/// model, written by the packer's own zip writer.
pub fn tiny_llamafile(args: &str, gguf: &[u8]) -> Vec<u8> {
    use packer::zip_writer::{Source, ZipWriter};
    let mut f = tempfile::tempfile().expect("temporary file");
    std::io::Write::write_all(&mut f, b"\x7fELF\x02\x01\x01\0fuzz seed: stands for the runtime\n").expect("write");
    let mut z = ZipWriter::new(f).expect("zip writer");
    z.add_stored(".args", Source::Bytes(args.as_bytes()), 1, &mut |_, _| {}).expect(".args entry");
    z.add_stored("tiny.gguf", Source::Bytes(gguf), 32, &mut |_, _| {}).expect("gguf entry");
    let mut f = z.finish().expect("central directory");
    let mut out = Vec::new();
    std::io::Seek::rewind(&mut f).expect("rewind");
    std::io::Read::read_to_end(&mut f, &mut out).expect("read back");
    out
}

/// The first `n` bytes of a shared fixture (its header, metadata and tensor table: what the
/// parser reads), or nothing when the fixtures are absent.
fn fixture_head(rel: &str, n: usize) -> Option<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(test_support::shared().join(rel)).ok()?;
    let mut buf = Vec::new();
    f.take(n as u64).read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// The chat templates of the shared vocabularies (real models' templates).
fn shared_templates() -> Vec<Vec<u8>> {
    ["vocab/gemma-3-270m.vocab.gguf", "vocab/qwen2.5-coder.vocab.gguf", "models/tiny-mistral-q8_0.gguf"]
        .iter()
        .filter_map(|rel| GgufFile::open(&test_support::shared().join(rel)).ok())
        .filter_map(|g| g.get_str("tokenizer.chat_template").map(|s| s.as_bytes().to_vec()))
        .collect()
}

/// `.args` texts (the user's arguments, [`super::USER_ARGS`], come after or at `...`).
pub const ARGS_SEEDS: [&str; 4] = [
    "-m\nmodel.gguf\n-c\n2048\n...\n--top-k\n5\n",
    "# defaults\n-n 30 --top-p 0.9 --system \"say \\\"hi\\\"\" # trailing comment\n",
    "... -s 7 --top-k 40 --min-p 0.1\n",
    "-m x.gguf --system=\"a b\"c' d' -c 512\n",
];

pub const HTTP_SEEDS: [&str; 9] = [
    "POST /v1/chat/completions\n{\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},{\"role\":\"user\",\"content\":\"ab c\"}],\"max_tokens\":4,\"temperature\":0}",
    "POST /v1/chat/completions\n{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"}]}],\"stream\":true,\"stream_options\":{\"include_usage\":true},\"max_tokens\":3,\"stop\":[\"b\"],\"seed\":5,\"top_k\":3,\"top_p\":0.5,\"min_p\":0.1,\"repeat_penalty\":1.1}",
    "POST /v1/completions\n{\"prompt\":\"a b\",\"max_tokens\":3,\"temperature\":0.5,\"stop\":\"c\"}",
    "POST /v1/completions\n{\"prompt\":[1,4,5],\"max_tokens\":2,\"stream\":true}",
    "POST /completion\n{\"prompt\":\"ab\",\"n_predict\":3,\"stream\":false}",
    "POST /tokenize\n{\"content\":\"a <s> b\",\"add_special\":true,\"parse_special\":true,\"with_pieces\":true}",
    "POST /detokenize\n{\"tokens\":[1,4,5,11]}",
    "GET /v1/models\n",
    "GET /props\n",
];

/// Where the mutation fuzzer starts: the seeds, and for `gguf` the first MiB of a shared tiny
/// model (a truncated file, refused, but with the real vocabulary arrays for the parser).
pub fn starts(target: &str) -> Vec<Vec<u8>> {
    let mut v = seeds(target);
    if target == "gguf" {
        v.extend(fixture_head("models/tiny-mistral-q4_k_m.gguf", 1 << 20));
    }
    v
}

/// The seeds of one target: valid inputs, each accepted.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let gguf = tiny_gguf();
    match target {
        "gguf" => vec![gguf],
        "zip_tail" => vec![tiny_llamafile(ARGS_SEEDS[0], &gguf), tiny_llamafile("", &gguf)],
        "args" => ARGS_SEEDS.iter().map(|s| s.as_bytes().to_vec()).collect(),
        "chat_template" => {
            let mut v: Vec<Vec<u8>> = chat::BUILTIN_NAMES
                .iter()
                .filter_map(|n| chat::builtin_source(n))
                .map(|s| s.as_bytes().to_vec())
                .collect();
            v.extend(shared_templates());
            v
        }
        "http" => HTTP_SEEDS.iter().map(|s| s.as_bytes().to_vec()).collect(),
        _ => panic!("unknown fuzz target '{target}'"),
    }
}

/// The byte position of tensor `name`'s data offset field in a GGUF made by [`gguf_from`].
fn tensor_offset_field(gguf: &[u8], name: &str) -> usize {
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    let at = gguf.windows(key.len()).position(|w| w == key).unwrap_or_else(|| panic!("tensor {name} not in the GGUF"))
        + key.len();
    let n_dims = u32::from_le_bytes(gguf[at..at + 4].try_into().expect("4 bytes")) as usize;
    at + 4 + 8 * n_dims + 4
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The tiny model with tensor `name`'s data offset changed by `f` (given both offsets' fields).
fn tiny_with_offset(name: &str, f: impl Fn(&[u8]) -> u64) -> Vec<u8> {
    let mut g = tiny_gguf();
    let v = f(&g);
    let at = tensor_offset_field(&g, name);
    g[at..at + 8].copy_from_slice(&v.to_le_bytes());
    g
}

/// The tiny model with one extra metadata entry written by hand: `key`, a raw type id and
/// the value's raw bytes (for keys and types the writer would not produce).
fn tiny_with_raw_entry(key: &[u8], type_id: u32, value: &[u8]) -> Vec<u8> {
    let g = tiny_gguf();
    let n_kv = read_u64(&g, 16);
    // Underscores make the entry a multiple of the alignment: everything after it moves by
    // whole aligned blocks, so the tensor table still matches the data.
    let mut key = key.to_vec();
    while !(8 + key.len() + 4 + value.len()).is_multiple_of(32) {
        key.push(b'_');
    }
    let mut out = g[..16].to_vec();
    out.extend_from_slice(&(n_kv + 1).to_le_bytes());
    out.extend_from_slice(&(key.len() as u64).to_le_bytes());
    out.extend_from_slice(&key);
    out.extend_from_slice(&type_id.to_le_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(&g[24..]);
    out
}

fn string_value(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

/// Terminal control sequences a file can carry: retitle, clear the screen, a fake new line.
pub const HOSTILE_TEXT: &str = "\u{1b}]0;pwned\u{7}\u{1b}[2J\u{1b}[31mred\r\nfake: line\0end";

/// Inputs for the committed corpus that reproduce the parser defects of the hardening review
/// and the fuzzer's findings (target, file name, bytes). `.reject`: must be refused with a clean error; `.accept`: must
/// be accepted; no suffix: either, but within the output rules (no raw control characters).
pub fn defect_inputs() -> Vec<(&'static str, String, Vec<u8>)> {
    let s = |x: &str| x.to_string();
    let mut v: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    // A block count no tensor table can back: must not size an allocation from it.
    v.push(("gguf", s("block-count-4294967295.reject"), tiny_gguf_with("llama.block_count", MetaValue::U32(u32::MAX))));
    v.push(("gguf", s("block-count-2-of-1.reject"), tiny_gguf_with("llama.block_count", MetaValue::U32(2))));
    v.push(("gguf", s("context-length-u64-max"), tiny_gguf_with("llama.context_length", MetaValue::U64(u64::MAX))));
    // Overlapping and misplaced tensors.
    let data_offset = |g: &[u8], n: &str| read_u64(g, tensor_offset_field(g, n));
    v.push((
        "gguf",
        s("overlapping-tensors.reject"),
        tiny_with_offset("blk.0.ffn_up.weight", |g| data_offset(g, "blk.0.ffn_gate.weight")),
    ));
    v.push((
        "gguf",
        s("offset-moved-by-32.reject"),
        tiny_with_offset("blk.0.attn_k.weight", |g| data_offset(g, "blk.0.attn_k.weight") + 32),
    ));
    v.push((
        "gguf",
        s("offset-misaligned.reject"),
        tiny_with_offset("blk.0.attn_q.weight", |g| data_offset(g, "blk.0.attn_q.weight") + 1),
    ));
    v.push(("gguf", s("offset-u64-max.reject"), tiny_with_offset("blk.0.attn_q.weight", |_| u64::MAX)));
    // Invalid hyperparameters.
    for (name, key, value) in [
        ("rope-base-nan", "llama.rope.freq_base", MetaValue::F32(f32::NAN)),
        ("rope-base-inf", "llama.rope.freq_base", MetaValue::F32(f32::INFINITY)),
        ("rope-base-0", "llama.rope.freq_base", MetaValue::F32(0.0)),
        ("rope-base-negative", "llama.rope.freq_base", MetaValue::F32(-10000.0)),
        ("rms-eps-nan", "llama.attention.layer_norm_rms_epsilon", MetaValue::F32(f32::NAN)),
        ("rms-eps-0", "llama.attention.layer_norm_rms_epsilon", MetaValue::F32(0.0)),
        ("rms-eps-negative", "llama.attention.layer_norm_rms_epsilon", MetaValue::F32(-1e-5)),
        ("rope-dimension-count-0", "llama.rope.dimension_count", MetaValue::U32(0)),
        ("head-count-0", "llama.attention.head_count", MetaValue::U32(0)),
        ("head-count-kv-0", "llama.attention.head_count_kv", MetaValue::U32(0)),
        ("embedding-length-u32-max", "llama.embedding_length", MetaValue::U32(u32::MAX)),
        ("feed-forward-length-u32-max", "llama.feed_forward_length", MetaValue::U32(u32::MAX)),
    ] {
        v.push(("gguf", format!("{name}.reject"), tiny_gguf_with(key, value)));
    }
    // Huge sizes and counts.
    let mut g = tiny_gguf();
    g[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    v.push(("gguf", s("tensor-count-u64-max.reject"), g));
    let mut g = tiny_gguf();
    g[16..24].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    v.push(("gguf", s("metadata-count-huge.reject"), g));
    v.push((
        "gguf",
        s("string-length-u64-max.reject"),
        tiny_with_raw_entry(b"general.huge", 8, &u64::MAX.to_le_bytes()),
    ));
    let mut arr = 4u32.to_le_bytes().to_vec(); // an array of u32
    arr.extend_from_slice(&(u64::MAX / 4).to_le_bytes());
    v.push(("gguf", s("array-count-huge.reject"), tiny_with_raw_entry(b"general.huge", 9, &arr)));
    let mut g = tiny_gguf();
    let at = tensor_offset_field(&g, "blk.0.ffn_norm.weight") - 12; // its one dimension
    g[at..at + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    v.push(("gguf", s("tensor-dimension-2-pow-62.reject"), g));
    // Control bytes from the file: in a value --info prints, in a key an error names, and a
    // multi-kilobyte key in an error.
    v.push((
        "gguf",
        s("control-bytes-in-name"),
        tiny_gguf_with("general.name", MetaValue::String(HOSTILE_TEXT.into())),
    ));
    let key = format!("evil{HOSTILE_TEXT}");
    v.push((
        "gguf",
        s("control-bytes-in-key-of-unknown-type.reject"),
        tiny_with_raw_entry(key.as_bytes(), 99, &[0; 8]),
    ));
    v.push(("gguf", s("control-bytes-in-key"), tiny_with_raw_entry(key.as_bytes(), 8, &string_value(b"x"))));
    let long = "k".repeat(60_000);
    v.push(("gguf", s("60-kb-key-of-unknown-type.reject"), tiny_with_raw_entry(long.as_bytes(), 99, &[0; 8])));
    // Found by the fuzzer: a tensor name whose length field runs into the fields after it.
    let mut g = tiny_gguf();
    let name = "token_embd.weight";
    let at = tensor_offset_field(&g, name) - 8 - 4 - 8 - 4 - name.len() - 8; // its name's length
    g[at..at + 8].copy_from_slice(&(name.len() as u64 + 12).to_le_bytes());
    v.push(("gguf", s("tensor-name-length-overrun.reject"), g));
    let arch = format!("llama{HOSTILE_TEXT}");
    v.push((
        "gguf",
        s("control-bytes-in-architecture.reject"),
        tiny_gguf_with("general.architecture", MetaValue::String(arch)),
    ));

    // Containers: entry names with control bytes in the "which GGUF?" error, a GGUF entry
    // running past the end, a central directory pointing past the end.
    let gguf = tiny_gguf();
    let two = {
        use packer::zip_writer::{Source, ZipWriter};
        let mut z = ZipWriter::new(tempfile::tempfile().expect("temporary file")).expect("zip writer");
        z.add_stored(&format!("a{HOSTILE_TEXT}.gguf"), Source::Bytes(&gguf), 32, &mut |_, _| {}).expect("entry");
        z.add_stored("b.gguf", Source::Bytes(&gguf), 32, &mut |_, _| {}).expect("entry");
        let mut f = z.finish().expect("central directory");
        let mut out = Vec::new();
        std::io::Seek::rewind(&mut f).expect("rewind");
        std::io::Read::read_to_end(&mut f, &mut out).expect("read back");
        out
    };
    v.push(("zip_tail", s("two-ggufs-with-control-bytes-in-a-name.reject"), two));
    let lf = tiny_llamafile(ARGS_SEEDS[0], &gguf);
    let eocd = lf.len() - 22;
    let mut bad = lf.clone();
    bad[eocd + 16..eocd + 20].copy_from_slice(&u32::MAX.to_le_bytes()); // central directory offset
    v.push(("zip_tail", s("central-directory-offset-past-the-end.reject"), bad));
    let mut cut = lf.clone();
    cut.drain(lf.len() - 22 - 2000..lf.len() - 22 - 1000); // inside the GGUF entry's data
    v.push(("zip_tail", s("gguf-entry-cut-short.reject"), cut));
    v.push(("zip_tail", s("args-with-unclosed-quote.reject"), tiny_llamafile("-n 5 -p 'oops\n", &gguf)));

    // `.args`: defaults the user's arguments override (the README's own example), a flag
    // repeated inside `.args`, control bytes in an unknown argument.
    v.push(("args", s("readme-defaults-then-user-temp.accept"), b"--temp 0\n-n 30\n".to_vec()));
    v.push(("args", s("repeated-flag-in-args.accept"), b"-n 30\n-n 40\n-c 256 -c 512\n".to_vec()));
    v.push(("args", s("unclosed-quote.reject"), b"-p \"never closed\n".to_vec()));
    v.push(("args", s("temp-nan.reject"), b"--temp nan\n".to_vec()));
    v.push(("args", s("min-p-2.reject"), b"--min-p 2\n".to_vec()));
    v.push(("args", s("negative-seed-and-n-predict.accept"), b"-s -1 -n -1\n".to_vec()));
    v.push(("args", s("control-bytes-in-unknown-argument.reject"), format!("--bogus{HOSTILE_TEXT}").into_bytes()));
    // Found by the fuzzer: clap quotes an unknown argument whole, new lines and all.
    v.push(("args", s("5-kb-unknown-argument.reject"), format!("--{}", "x".repeat(5000)).into_bytes()));
    v.push(("args", s("new-line-in-unknown-argument.reject"), b"'--bogus\nfake: line'".to_vec()));

    // Templates: a runaway loop, a string doubled to terabytes, unbounded recursion, deep
    // nesting; each must end in an error quickly, without exhausting memory or the stack.
    for (name, src) in [
        ("nested-loops-10-billion.reject", "{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}".to_string()),
        (
            "string-doubling.reject",
            "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}".to_string(),
        ),
        ("recursive-macro.reject", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}".to_string()),
        ("string-repeat-100-mb.reject", "{{ 'ab' * 50000000 }}".to_string()),
        ("deep-parentheses.reject", format!("{{{{ {}1{} }}}}", "(".repeat(5000), ")".repeat(5000))),
        ("deep-lists.reject", format!("{{{{ {}1{} }}}}", "[".repeat(5000), "]".repeat(5000))),
        ("deep-if-nesting.reject", format!("{}x{}", "{% if true %}".repeat(3000), "{% endif %}".repeat(3000))),
        // Found by the fuzzer: a syntax error past column 65,535 overflowed minijinja's column.
        ("syntax-error-past-column-65535.reject", format!("{{{{ '{}", "x".repeat(65_534))),
        (
            "recursive-loop.reject",
            "{% for m in [1] recursive %}{{ loop([1]) }}{% endfor %}".to_string(),
        ),
    ] {
        v.push(("chat_template", s(name), src.into_bytes()));
    }

    // Requests: nesting past the parser's depth, non-finite and huge numbers, too many stop
    // strings, token ids outside the vocabulary, an unknown role, no messages.
    let deep = format!("POST /v1/chat/completions\n{{\"messages\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let many_stops = format!(
        "POST /v1/completions\n{{\"prompt\":\"a\",\"stop\":[{}]}}",
        (0..10_000).map(|i| format!("\"s{i}\"")).collect::<Vec<_>>().join(",")
    );
    for (name, req) in [
        ("deeply-nested-json.reject", deep),
        ("temperature-1e999.reject", "POST /v1/chat/completions\n{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"temperature\":1e999}".into()),
        ("max-tokens-i64-max.accept", "POST /v1/chat/completions\n{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"max_tokens\":9223372036854775807,\"temperature\":0}".into()),
        ("max-tokens-negative.reject", "POST /v1/completions\n{\"prompt\":\"a\",\"max_tokens\":-5}".into()),
        ("many-stop-strings.reject", many_stops),
        ("prompt-token-outside-vocabulary.reject", "POST /v1/completions\n{\"prompt\":[1,999999],\"max_tokens\":2}".into()),
        ("detokenize-negative-and-huge.reject", "POST /detokenize\n{\"tokens\":[-1,4294967296]}".into()),
        ("unknown-role.reject", "POST /v1/chat/completions\n{\"messages\":[{\"role\":\"robot\",\"content\":\"a\"}]}".into()),
        ("no-messages.reject", "POST /v1/chat/completions\n{\"messages\":[]}".into()),
        ("seed-minus-1.accept", "POST /completion\n{\"prompt\":\"a\",\"n_predict\":2,\"seed\":-1}".into()),
        ("control-bytes-in-content.accept", format!("POST /v1/chat/completions\n{{\"messages\":[{{\"role\":\"user\",\"content\":{}}}],\"max_tokens\":2}}", serde_json::to_string(HOSTILE_TEXT).expect("json"))),
    ] {
        v.push(("http", s(name), req.into_bytes()));
    }
    v
}
