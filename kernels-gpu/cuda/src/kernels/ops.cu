// Element-wise operations, RMSNorm, RoPE, KV-cache writes and attention (see kernels_gpu::abi
// for what each computes). All activations are f32.

// One block of 256 threads per row. In place is fine: each thread rewrites only elements it
// read itself, after the reduction.
extern "C" __global__ void rmsnorm(const float* x, const float* weight, int dim, float eps, float* out) {
    __shared__ float partial[32];
    const u64 off = (u64)blockIdx.x * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += x[off + i] * x[off + i];
    ss = warp_sum(ss);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) partial[warp] = ss;
    __syncthreads();
    if (warp == 0) {
        ss = lane < (int)(blockDim.x / 32) ? partial[lane] : 0.0f;
        ss = warp_sum(ss);
        if (lane == 0) partial[0] = ss;
    }
    __syncthreads();
    const float scale = rsqrtf(partial[0] / dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float w = weight ? weight[i] : 1.0f;
        out[off + i] = x[off + i] * scale * w;
    }
}

// One thread per rotated pair: n_tokens * n_heads * n_rot/2 threads. mode 0 = adjacent pairs,
// 2 = NEOX (i, i + n_rot/2). `ff`: n_rot/2 per-dimension frequency divisors, or null for none
// (the formula of kernels_cpu::ops::Rope: freq_scale * (pos * base^(-2i/n_rot) / ff[i]), its cos
// and sin multiplied by attn_factor).
extern "C" __global__ void rope(float* x, int n_tokens, int n_heads, int head_dim, int n_rot, int pos0,
                                int mode, float freq_base, float freq_scale, const float* ff, float attn_factor) {
    const int half = n_rot / 2;
    const u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)n_tokens * n_heads * half) return;
    const int i = idx % half;
    const int h = (idx / half) % n_heads;
    const int t = idx / ((u64)half * n_heads);
    const float theta_base = (float)(pos0 + t) * powf(freq_base, -2.0f * i / n_rot);
    const float theta = freq_scale * (ff ? theta_base / ff[i] : theta_base);
    float s, c;
    sincosf(theta, &s, &c);
    s *= attn_factor;
    c *= attn_factor;
    float* head = x + ((u64)t * n_heads + h) * head_dim;
    const int a = mode == 2 ? i : 2 * i;
    const int b = mode == 2 ? i + half : 2 * i + 1;
    const float x0 = head[a], x1 = head[b];
    head[a] = x0 * c - x1 * s;
    head[b] = x0 * s + x1 * c;
}

extern "C" __global__ void add(const float* a, const float* b, float* out, u64 n) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}

extern "C" __global__ void mul(const float* a, const float* b, float* out, u64 n) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] * b[i];
}

extern "C" __global__ void add_rows(float* x, const float* bias, int dim, u64 n) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += bias[i % dim];
}

extern "C" __global__ void scale(float* x, float s, u64 n) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= s;
}

__device__ __forceinline__ float f16_round(float x) {
    return f16_to_f32(f32_to_f16(x));
}

// act 0 = SiLU, 1 = GELU (tanh approximation) as the reference engine's CPU evaluates it: 0
// below -10, identity above 10, else its f16 table (input and result rounded to f16).
extern "C" __global__ void glu(const float* gate, const float* up, float* out, u64 n, int act) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = gate[i];
    float a;
    if (act == 0) {
        a = g / (1.0f + expf(-g));
    } else if (g <= -10.0f) {
        a = 0.0f;
    } else if (g >= 10.0f) {
        a = g;
    } else {
        const float x = f16_round(g);
        a = f16_round(0.5f * x * (1.0f + tanhf(0.7978846f * x * (1.0f + 0.044715f * x * x))));
    }
    out[i] = a * up[i];
}

extern "C" __global__ void copy_f32_f16(const float* src, u16* dst, u64 n) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = f32_to_f16(src[i]);
}

extern "C" __global__ void copy_f32_f32(const float* src, float* dst, u64 n) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = src[i];
}

#define ATT_MAX_HEAD_DIM 256

__device__ __forceinline__ float kv_load(const void* base, int kv_f16, u64 i) {
    return kv_f16 ? f16_to_f32(((const u16*)base)[i]) : ((const float*)base)[i];
}

// One warp per (token, query head), online softmax over the visible positions (no scratch
// memory, any context length). Lane l holds output dimensions l, l + 32, ... (head_dim <= 256).
// With an f16 cache the numerics are those of the reference engine's CPU flash attention (and
// of the CPU path): the query rounded to f16, the value accumulator rounded to f16 after every
// update. The score is the same on every lane (the xor reduction is symmetric), so the branches
// below are warp-uniform.
extern "C" __global__ void attention(const float* q, const void* k, const void* v, float* out,
                                     int n_tokens, int pos0, int n_head, int n_head_kv, int head_dim,
                                     int kv_stride, int kv_f16, int window, float scale, float softcap) {
    const int lane = threadIdx.x;
    const int item = blockIdx.x * blockDim.y + threadIdx.y;
    if (item >= n_tokens * n_head) return;
    const int t = item / n_head, h = item % n_head;
    const int g = h / (n_head / n_head_kv);
    const int i = pos0 + t;
    const int first = window > 0 ? max(0, i + 1 - window) : 0;
    const float* qh = q + ((u64)t * n_head + h) * head_dim;
    float qr[ATT_MAX_HEAD_DIM / 32];
    float acc[ATT_MAX_HEAD_DIM / 32];
    const int per_lane = (head_dim + 31) / 32;
    for (int c = 0; c < per_lane; c++) {
        const int d = lane + 32 * c;
        qr[c] = d < head_dim ? (kv_f16 ? f16_round(qh[d]) : qh[d]) : 0.0f;
        acc[c] = 0.0f;
    }
    float m = -__int_as_float(0x7f800000), l = 0.0f;  // -inf without math headers
    for (int j = first; j <= i; j++) {
        const u64 base = (u64)j * kv_stride + (u64)g * head_dim;
        float s = 0.0f;
        for (int c = 0; c < per_lane; c++) {
            const int d = lane + 32 * c;
            if (d < head_dim) s += qr[c] * kv_load(k, kv_f16, base + d);
        }
        s = warp_sum(s) * scale;
        if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
        float ms = 1.0f, vs = 1.0f;
        if (s > m) {
            ms = m == -__int_as_float(0x7f800000) ? 0.0f : expf(m - s);
            m = s;
            if (ms != 1.0f) {
                for (int c = 0; c < per_lane; c++) acc[c] = kv_f16 ? f16_round(acc[c] * ms) : acc[c] * ms;
            }
        } else {
            vs = expf(s - m);
        }
        for (int c = 0; c < per_lane; c++) {
            const int d = lane + 32 * c;
            const float vv = d < head_dim ? kv_load(v, kv_f16, base + d) : 0.0f;
            acc[c] = kv_f16 ? f16_round(acc[c] + vs * vv) : acc[c] + vs * vv;
        }
        l = l * ms + vs;
    }
    float* o = out + ((u64)t * n_head + h) * head_dim;
    for (int c = 0; c < per_lane; c++) {
        const int d = lane + 32 * c;
        if (d < head_dim) o[d] = l == 0.0f ? 0.0f : acc[c] * (1.0f / l);
    }
}
