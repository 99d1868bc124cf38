// y[t][r] = dot(W[r], x[t]): one warp per weight row, up to MM_TOKENS tokens per warp.
// Each lane takes whole 32-element sub-blocks of the row (ggml's block layouts), dequantizes
// its 32 weights into registers once and multiplies them with every token of its tile, so
// the weights are read once per tile of tokens.
//
// dequant_<type>(row, sub, w): the 32 weights of sub-block `sub` of a row (ggml block layout).

#define MM_TOKENS 8
#define MM_ROWS_PER_BLOCK 4

__device__ __forceinline__ void dequant_f32(const u8* row, int sub, float* w) {
    const float* p = (const float*)row + sub * 32;  // F32 rows are 4-byte aligned (cols % 32 == 0)
    for (int l = 0; l < 32; l++) w[l] = p[l];
}

__device__ __forceinline__ void dequant_f16(const u8* row, int sub, float* w) {
    const u8* p = row + sub * 64;
    for (int l = 0; l < 32; l++) w[l] = ld_f16(p + 2 * l);
}

__device__ __forceinline__ void dequant_bf16(const u8* row, int sub, float* w) {
    const u8* p = row + sub * 64;
    for (int l = 0; l < 32; l++) w[l] = __uint_as_float(((u32)p[2 * l] | ((u32)p[2 * l + 1] << 8)) << 16);
}

// Q4_0: 18 bytes: d (f16), qs[16]; element i: (nibble - 8) * d, low nibbles first.
__device__ __forceinline__ void dequant_q4_0(const u8* row, int sub, float* w) {
    const u8* b = row + sub * 18;
    const float d = ld_f16(b);
    const u8* qs = b + 2;
    for (int l = 0; l < 16; l++) {
        w[l] = ((int)(qs[l] & 0xF) - 8) * d;
        w[l + 16] = ((int)(qs[l] >> 4) - 8) * d;
    }
}

// Q4_1: 20 bytes: d, m (f16), qs[16]; element: nibble * d + m.
__device__ __forceinline__ void dequant_q4_1(const u8* row, int sub, float* w) {
    const u8* b = row + sub * 20;
    const float d = ld_f16(b), m = ld_f16(b + 2);
    const u8* qs = b + 4;
    for (int l = 0; l < 16; l++) {
        w[l] = (qs[l] & 0xF) * d + m;
        w[l + 16] = (qs[l] >> 4) * d + m;
    }
}

// Q5_0: 22 bytes: d (f16), qh (u32: 5th bits), qs[16]; element: (5-bit value - 16) * d.
__device__ __forceinline__ void dequant_q5_0(const u8* row, int sub, float* w) {
    const u8* b = row + sub * 22;
    const float d = ld_f16(b);
    const u32 qh = ld_u32(b + 2);
    const u8* qs = b + 6;
    for (int l = 0; l < 16; l++) {
        const int h0 = ((qh >> l) << 4) & 0x10;
        const int h1 = (qh >> (l + 12)) & 0x10;
        w[l] = ((int)((qs[l] & 0xF) | h0) - 16) * d;
        w[l + 16] = ((int)((qs[l] >> 4) | h1) - 16) * d;
    }
}

// Q5_1: 24 bytes: d, m (f16), qh (u32), qs[16]; element: 5-bit value * d + m.
__device__ __forceinline__ void dequant_q5_1(const u8* row, int sub, float* w) {
    const u8* b = row + sub * 24;
    const float d = ld_f16(b), m = ld_f16(b + 2);
    const u32 qh = ld_u32(b + 4);
    const u8* qs = b + 8;
    for (int l = 0; l < 16; l++) {
        const int h0 = ((qh >> l) << 4) & 0x10;
        const int h1 = (qh >> (l + 12)) & 0x10;
        w[l] = ((qs[l] & 0xF) | h0) * d + m;
        w[l + 16] = ((qs[l] >> 4) | h1) * d + m;
    }
}

// Q8_0: 34 bytes: d (f16), qs[32] (int8).
__device__ __forceinline__ void dequant_q8_0(const u8* row, int sub, float* w) {
    const u8* b = row + sub * 34;
    const float d = ld_f16(b);
    const i8* qs = (const i8*)(b + 2);
    for (int l = 0; l < 32; l++) w[l] = qs[l] * d;
}

// Q2_K: 84 bytes per 256: scales[16] (4-bit scale | 4-bit min), qs[64] (2 bits), d, dmin (f16).
// Sub-block j (32 values): n = j / 4 selects 32 bytes of qs, shift = 2 * (j % 4); each 16
// values have their own scale byte scales[8n + 2(j % 4) + l / 16].
__device__ __forceinline__ void dequant_q2_k(const u8* row, int sub, float* w) {
    const u8* b = row + (sub >> 3) * 84;
    const int j = sub & 7;
    const u8* scales = b;
    const u8* qs = b + 16 + 32 * (j >> 2);
    const float d = ld_f16(b + 80), dmin = ld_f16(b + 82);
    const int shift = 2 * (j & 3);
    for (int h = 0; h < 2; h++) {
        const u8 sc = scales[8 * (j >> 2) + 2 * (j & 3) + h];
        const float dl = d * (sc & 0xF), ml = dmin * (sc >> 4);
        for (int l = 0; l < 16; l++) w[16 * h + l] = dl * ((qs[16 * h + l] >> shift) & 3) - ml;
    }
}

// The 6-bit scale and min of sub-block j of Q4_K/Q5_K (12 packed bytes).
__device__ __forceinline__ void scale_min_k4(int j, const u8* q, int* sc, int* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Q4_K: 144 bytes per 256: d, dmin (f16), scales[12], qs[128]. Sub-blocks 2p and 2p+1 share
// qs[32p..32p+32]: low nibbles then high nibbles.
__device__ __forceinline__ void dequant_q4_k(const u8* row, int sub, float* w) {
    const u8* b = row + (sub >> 3) * 144;
    const int j = sub & 7;
    const float d = ld_f16(b), dmin = ld_f16(b + 2);
    int sc, m;
    scale_min_k4(j, b + 4, &sc, &m);
    const float d1 = d * sc, m1 = dmin * m;
    const u8* qs = b + 16 + 32 * (j >> 1);
    const int shift = (j & 1) * 4;
    for (int l = 0; l < 32; l++) w[l] = d1 * ((qs[l] >> shift) & 0xF) - m1;
}

// Q5_K: 176 bytes per 256: d, dmin, scales[12], qh[32], qs[128]; bit j of qh[l] is the 5th bit
// of value l of sub-block j.
__device__ __forceinline__ void dequant_q5_k(const u8* row, int sub, float* w) {
    const u8* b = row + (sub >> 3) * 176;
    const int j = sub & 7;
    const float d = ld_f16(b), dmin = ld_f16(b + 2);
    int sc, m;
    scale_min_k4(j, b + 4, &sc, &m);
    const float d1 = d * sc, m1 = dmin * m;
    const u8* qh = b + 16;
    const u8* qs = b + 48 + 32 * (j >> 1);
    const int shift = (j & 1) * 4;
    for (int l = 0; l < 32; l++) {
        const int q = ((qs[l] >> shift) & 0xF) | (((qh[l] >> j) & 1) << 4);
        w[l] = d1 * q - m1;
    }
}

// Q6_K: 210 bytes per 256: ql[128], qh[64], scales[16] (int8), d (f16). Sub-block j:
// n = j / 4 (half of the super-block), r = j % 4: low 4 bits from ql[64n + 32(r & 1) + l]
// (high nibble when r >= 2), 2 high bits from qh[32n + l] >> 2r, scale scales[8n + 2r + l/16].
__device__ __forceinline__ void dequant_q6_k(const u8* row, int sub, float* w) {
    const u8* b = row + (sub >> 3) * 210;
    const int j = sub & 7;
    const int n = j >> 2, r = j & 3;
    const u8* ql = b + 64 * n + 32 * (r & 1);
    const u8* qh = b + 128 + 32 * n;
    const i8* sc = (const i8*)(b + 192) + 8 * n + 2 * r;
    const float d = ld_f16(b + 208);
    const int lshift = (r >> 1) * 4;
    for (int l = 0; l < 32; l++) {
        const int q = (((ql[l] >> lshift) & 0xF) | (((qh[l] >> (2 * r)) & 3) << 4)) - 32;
        w[l] = d * sc[l >> 4] * q;
    }
}

// IQ4_NL/IQ4_XS: 4-bit indices into one non-linear table of 16 values (ggml's kvalues_iq4nl),
// spaced more densely near zero where weights cluster. A switch rather than an array keeps it in
// registers and needs no __constant__ memory.
__device__ __forceinline__ float iq4_value(int i) {
    switch (i & 0xF) {
        case 0: return -127.0f; case 1: return -104.0f; case 2: return -83.0f; case 3: return -65.0f;
        case 4: return -49.0f;  case 5: return -35.0f;  case 6: return -22.0f; case 7: return -10.0f;
        case 8: return 1.0f;    case 9: return 13.0f;   case 10: return 25.0f; case 11: return 38.0f;
        case 12: return 53.0f;  case 13: return 69.0f;  case 14: return 89.0f; default: return 113.0f;
    }
}

// IQ4_NL: 18 bytes: d (f16), qs[16]; element i: table[nibble] * d, low nibbles first.
__device__ __forceinline__ void dequant_iq4_nl(const u8* row, int sub, float* w) {
    const u8* b = row + sub * 18;
    const float d = ld_f16(b);
    const u8* qs = b + 2;
    for (int l = 0; l < 16; l++) {
        w[l] = d * iq4_value(qs[l]);
        w[l + 16] = d * iq4_value(qs[l] >> 4);
    }
}

// IQ4_XS: 136 bytes per 256: d (f16), scales_h (u16: 2 high bits per sub-block), scales_l[4]
// (4 low bits per sub-block), qs[128] (16 bytes per sub-block, low nibbles first); sub-block j's
// scale is d * (6-bit value - 32).
__device__ __forceinline__ void dequant_iq4_xs(const u8* row, int sub, float* w) {
    const u8* b = row + (sub >> 3) * 136;
    const int j = sub & 7;
    const float d = ld_f16(b);
    const u32 scales_h = (u32)b[2] | ((u32)b[3] << 8);
    const int ls = ((b[4 + (j >> 1)] >> (4 * (j & 1))) & 0xF) | (((scales_h >> (2 * j)) & 3) << 4);
    const float dl = d * (ls - 32);
    const u8* qs = b + 8 + 16 * j;
    for (int l = 0; l < 16; l++) {
        w[l] = dl * iq4_value(qs[l]);
        w[l + 16] = dl * iq4_value(qs[l] >> 4);
    }
}

#define DEFINE_MATMUL(NAME, DEQUANT)                                                              \
extern "C" __global__ void NAME(const u8* __restrict__ W, u64 row_bytes, int rows, int cols,     \
                                const float* __restrict__ x, int n_tokens, float* __restrict__ y) { \
    const int lane = threadIdx.x;                                                                 \
    const int r = blockIdx.x * MM_ROWS_PER_BLOCK + threadIdx.y;                                   \
    const int t0 = blockIdx.y * MM_TOKENS;                                                        \
    if (r >= rows) return;                                                                        \
    const int nt = min(MM_TOKENS, n_tokens - t0);                                                 \
    const u8* row = W + (u64)r * row_bytes;                                                       \
    float acc[MM_TOKENS];                                                                         \
    for (int t = 0; t < MM_TOKENS; t++) acc[t] = 0.0f;                                            \
    float w[32];                                                                                  \
    const int n_sub = cols / 32;                                                                  \
    for (int sub = lane; sub < n_sub; sub += 32) {                                                \
        DEQUANT(row, sub, w);                                                                     \
        for (int t = 0; t < nt; t++) {                                                            \
            const float* xs = x + (u64)(t0 + t) * cols + sub * 32;                                \
            float s = 0.0f;                                                                       \
            for (int l = 0; l < 32; l++) s += w[l] * xs[l];                                       \
            acc[t] += s;                                                                          \
        }                                                                                         \
    }                                                                                             \
    for (int t = 0; t < nt; t++) {                                                                \
        const float s = warp_sum(acc[t]);                                                         \
        if (lane == 0) y[(u64)(t0 + t) * rows + r] = s;                                           \
    }                                                                                             \
}


DEFINE_MATMUL(matmul_f32, dequant_f32)
DEFINE_MATMUL(matmul_f16, dequant_f16)
DEFINE_MATMUL(matmul_bf16, dequant_bf16)
DEFINE_MATMUL(matmul_q4_0, dequant_q4_0)
DEFINE_MATMUL(matmul_q4_1, dequant_q4_1)
DEFINE_MATMUL(matmul_q5_0, dequant_q5_0)
DEFINE_MATMUL(matmul_q5_1, dequant_q5_1)
DEFINE_MATMUL(matmul_q8_0, dequant_q8_0)
DEFINE_MATMUL(matmul_q2_k, dequant_q2_k)
DEFINE_MATMUL(matmul_q4_k, dequant_q4_k)
DEFINE_MATMUL(matmul_q5_k, dequant_q5_k)
DEFINE_MATMUL(matmul_q6_k, dequant_q6_k)
DEFINE_MATMUL(matmul_iq4_nl, dequant_iq4_nl)
DEFINE_MATMUL(matmul_iq4_xs, dequant_iq4_xs)
