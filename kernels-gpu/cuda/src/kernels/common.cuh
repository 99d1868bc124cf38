// Shared helpers for the llamafile-rs CUDA kernels. Compiled at run time by NVRTC, so no
// toolkit headers are used: f16 conversions are done with inline PTX.
// With LLAMAFILE_HOST_TEST defined the same sources compile as C++ on the CPU (g++), after a
// prelude that emulates threads, warps and blocks (tests/host.rs), so every kernel can be
// checked on machines without a GPU.

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#ifndef LLAMAFILE_HOST_TEST
__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#else
// IEEE half <-> float, subnormals included (host test only; the prelude defines the casts).
inline u16 f32_to_f16(float f) {
    const u32 x = __float_as_uint(f);
    const u32 sign = (x >> 16) & 0x8000;
    const int exp = (int)((x >> 23) & 0xFF) - 127 + 15;
    u32 man = x & 0x7FFFFF;
    if (((x >> 23) & 0xFF) == 0xFF) return sign | 0x7C00 | (man ? 0x200 : 0);
    if (exp >= 31) return sign | 0x7C00;
    if (exp <= 0) {
        if (exp < -10) return sign;
        man |= 0x800000;
        const int shift = 14 - exp;
        u32 h = man >> shift;
        const u32 rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1))) h++;
        return sign | h;
    }
    u32 h = sign | ((u32)exp << 10) | (man >> 13);
    const u32 rem = man & 0x1FFF;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return h;
}
inline float f16_to_f32(u16 h) {
    const u32 sign = (u32)(h & 0x8000) << 16;
    u32 exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    if (exp == 0) {
        if (man == 0) return __uint_as_float(sign);
        exp = 127 - 15 + 1;
        while (!(man & 0x400)) { man <<= 1; exp--; }
        man &= 0x3FF;
        return __uint_as_float(sign | (exp << 23) | (man << 13));
    }
    if (exp == 31) return __uint_as_float(sign | 0x7F800000 | (man << 13));
    return __uint_as_float(sign | ((exp + 127 - 15) << 23) | (man << 13));
}
#endif

// Blocks start at any even (or odd) address: read multi-byte fields byte by byte.
__device__ __forceinline__ float ld_f16(const u8* p) {
    return f16_to_f32((u16)p[0] | ((u16)p[1] << 8));
}

__device__ __forceinline__ u32 ld_u32(const u8* p) {
    return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
