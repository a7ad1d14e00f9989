/* One decoding step's attention on the CPU (core/engine/native.py builds and loads this file).

   Each (row, KV head): its query group (the G query heads that share the KV head, one query each) against
   that head's keys and values, read once and in place, in float32 with an online softmax over blocks of 64
   keys counted from the row's first attended key. torch's SDPA kernel read a decoding row's keys at about
   8 GB/s on two cores (a few queries per call: its blocks are made for long queries); this reads them at
   close to the memory's pace. Every (row, KV head) runs the same code over the same blocks whatever the
   other rows are, so a row's numbers do not depend on its batch or on the padding before it.

   Written with GCC vector extensions (16 floats per vector; the compiler maps them onto the machine's
   registers, AVX-512 or narrower), no intrinsics. */
#include <stdint.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));
typedef int32_t i16 __attribute__((vector_size(64)));
typedef int32_t i8 __attribute__((vector_size(32)));
typedef int32_t i4 __attribute__((vector_size(16)));
typedef uint32_t u16 __attribute__((vector_size(64)));
typedef uint16_t h16 __attribute__((vector_size(32)));
typedef uint8_t b16 __attribute__((vector_size(16)));

#define INLINE static inline __attribute__((always_inline))
#define BLOCK 64        /* keys per softmax block */
#define AHEAD 16        /* rows prefetched ahead */
#define NEG (-3.0e38f)  /* the score of a key not attended to (finite: no inf arithmetic) */

INLINE v16 sel(i16 m, v16 a, v16 b) { i16 x, y; memcpy(&x, &a, 64); memcpy(&y, &b, 64); x = (x & m) | (y & ~m); memcpy(&a, &x, 64); return a; }
INLINE v8 sel8(i8 m, v8 a, v8 b) { i8 x, y; memcpy(&x, &a, 32); memcpy(&y, &b, 32); x = (x & m) | (y & ~m); memcpy(&a, &x, 32); return a; }
INLINE v4 sel4(i4 m, v4 a, v4 b) { i4 x, y; memcpy(&x, &a, 16); memcpy(&y, &b, 16); x = (x & m) | (y & ~m); memcpy(&a, &x, 16); return a; }
INLINE v16 splat(float x) { return (v16){0} + x; }

INLINE v16 load_bf16(const uint16_t* p) {
    h16 h; memcpy(&h, p, sizeof h);
    i16 u = __builtin_convertvector(h, i16) << 16;
    v16 f; memcpy(&f, &u, sizeof f); return f;
}
INLINE v16 load_f32(const float* p) { v16 f; memcpy(&f, p, sizeof f); return f; }
INLINE void store_f32(float* p, v16 x) { memcpy(p, &x, sizeof x); }
INLINE void store_bf16(uint16_t* p, v16 x) {  /* round to nearest even, as torch's float -> bfloat16 */
    u16 u; memcpy(&u, &x, sizeof u);
    u16 nan = (u16)((u & 0x7fffffffu) > 0x7f800000u);
    u16 r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    r = (nan & ((u >> 16) | 0x40u)) | (~nan & r);
    h16 h = __builtin_convertvector(r, h16); memcpy(p, &h, sizeof h);
}

INLINE float hmax(v16 x) {
    v8 a = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7), b = __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
    a = sel8(a > b, a, b);
    v4 c = __builtin_shufflevector(a, a, 0, 1, 2, 3), d = __builtin_shufflevector(a, a, 4, 5, 6, 7);
    c = sel4(c > d, c, d);
    float m = c[0];
    for (int i = 1; i < 4; i++) m = c[i] > m ? c[i] : m;
    return m;
}
INLINE float hsum(v16 x) {
    v8 a = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
    v4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    return (b[0] + b[2]) + (b[1] + b[3]);
}
/* 16 vectors' sums as one vector (lane n: the sum of t[n]'s lanes), by pairwise transposing adds: 15 adds for
   16 dot products instead of a horizontal sum each */
INLINE v16 sums16(const v16 t[16]) {
    v16 u[8], w[4], x[2];
    for (int i = 0; i < 8; i++)
        u[i] = __builtin_shufflevector(t[2 * i], t[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23)
             + __builtin_shufflevector(t[2 * i], t[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    for (int i = 0; i < 4; i++)
        w[i] = __builtin_shufflevector(u[2 * i], u[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27)
             + __builtin_shufflevector(u[2 * i], u[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    for (int i = 0; i < 2; i++)
        x[i] = __builtin_shufflevector(w[2 * i], w[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29)
             + __builtin_shufflevector(w[2 * i], w[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
    return __builtin_shufflevector(x[0], x[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)
         + __builtin_shufflevector(x[0], x[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}
/* e^x for x <= 0, exactly 0 below -87: 2^(x log2 e), the fraction's power by a degree-6 polynomial (relative
   error ~2e-7) */
INLINE v16 exp_neg(v16 x) {
    i16 keep = x >= -87.0f;
    x = sel(keep, x, splat(-87.0f));
    v16 t = x * 1.44269504088896341f;
    v16 r = (t + 12582912.0f) - 12582912.0f;  /* rounded to the nearest integer */
    v16 f = t - r;
    v16 p = splat(1.5353362e-4f);
    p = p * f + 1.3398874e-3f; p = p * f + 9.6180076e-3f; p = p * f + 5.5503338e-2f;
    p = p * f + 2.4022650e-1f; p = p * f + 6.9314718e-1f; p = p * f + 1.0f;
    i16 e = (__builtin_convertvector(r, i16) + 127) << 23;
    v16 s; memcpy(&s, &e, sizeof s);
    v16 y = p * s;
    i16 yi; memcpy(&yi, &y, sizeof yi); yi &= keep; memcpy(&y, &yi, sizeof y);
    return y;
}

/* One (row b, KV head h), G queries of D dimensions (a multiple of 16). */
#define BODY(T, LOAD, STORE, G, D)                                                                              \
    {                                                                                                           \
        enum { C = D / 16 };                                                                                    \
        const uint8_t* m = mask + b * sm;                                                                       \
        int first = 0;                                                                                          \
        while (first < N && !m[first]) first++;                                                                 \
        v16 qv[G][C], acc[G][C], s[G][BLOCK / 16];                                                              \
        float mx[G], sum[G];                                                                                    \
        const T* qb = q + ((long)b * H + h) * G * D;                                                            \
        for (int g = 0; g < G; g++) {                                                                           \
            mx[g] = NEG; sum[g] = 0.f;                                                                          \
            for (int c = 0; c < C; c++) { qv[g][c] = LOAD(qb + g * D + 16 * c) * scale; acc[g][c] = splat(0.f); } \
        }                                                                                                       \
        const T* kb = k + b * sb + h * sh;                                                                      \
        const T* vb = v + b * sb + h * sh;                                                                      \
        for (int n0 = first; n0 < N; n0 += BLOCK) {                                                             \
            int w = N - n0 < BLOCK ? N - n0 : BLOCK;                                                            \
            for (int j = 0; j < BLOCK / 16; j++) { /* scores of 16 keys */                                      \
                v16 kf[16][C];                                                                                  \
                for (int n = 0; n < 16; n++) {                                                                  \
                    long at = n0 + 16 * j + n;                                                                  \
                    if (16 * j + n < w) {                                                                       \
                        const T* kr = kb + at * sn;                                                             \
                        for (int c = 0; c < (int)(D * sizeof(T)); c += 64) {                                    \
                            __builtin_prefetch((const char*)(kr + AHEAD * sn) + c);                             \
                            __builtin_prefetch((const char*)(vb + at * sn) + c);                                \
                        }                                                                                       \
                        for (int c = 0; c < C; c++) kf[n][c] = LOAD(kr + 16 * c);                               \
                    } else                                                                                      \
                        for (int c = 0; c < C; c++) kf[n][c] = splat(0.f);                                      \
                }                                                                                               \
                b16 mb = {0};                                                                                   \
                for (int n = 0; n < 16; n++) mb[n] = 16 * j + n < w ? m[n0 + 16 * j + n] : 0;                   \
                i16 keep = __builtin_convertvector(mb, i16) != 0;                                               \
                for (int g = 0; g < G; g++) {                                                                   \
                    v16 t[16];                                                                                  \
                    for (int n = 0; n < 16; n++) {                                                              \
                        t[n] = qv[g][0] * kf[n][0];                                                             \
                        for (int c = 1; c < C; c++) t[n] += qv[g][c] * kf[n][c];                                \
                    }                                                                                           \
                    s[g][j] = sel(keep, sums16(t), splat(NEG));                                                 \
                }                                                                                               \
            }                                                                                                   \
            for (int g = 0; g < G; g++) { /* the block's softmax weights, the running sums rescaled */           \
                v16 vm = s[g][0];                                                                               \
                for (int j = 1; j < BLOCK / 16; j++) vm = sel(s[g][j] > vm, s[g][j], vm);                       \
                float bm = hmax(vm);                                                                            \
                bm = bm > mx[g] ? bm : mx[g];                                                                   \
                float cf = exp_neg(splat(mx[g] - bm))[0];                                                       \
                mx[g] = bm; sum[g] *= cf;                                                                       \
                for (int c = 0; c < C; c++) acc[g][c] *= cf;                                                    \
                v16 tot = splat(0.f);                                                                           \
                for (int j = 0; j < BLOCK / 16; j++) { s[g][j] = exp_neg(s[g][j] - bm); tot += s[g][j]; }       \
                sum[g] += hsum(tot);                                                                            \
            }                                                                                                   \
            for (int n = 0; n < w; n++) { /* weighted values */                                                 \
                const T* vr = vb + (long)(n0 + n) * sn;                                                         \
                v16 vv[C];                                                                                      \
                for (int c = 0; c < C; c++) vv[c] = LOAD(vr + 16 * c);                                          \
                for (int g = 0; g < G; g++) {                                                                   \
                    float p = s[g][n / 16][n % 16];                                                             \
                    for (int c = 0; c < C; c++) acc[g][c] += p * vv[c];                                         \
                }                                                                                               \
            }                                                                                                   \
        }                                                                                                       \
        T* ob = out + ((long)b * H + h) * G * D;                                                                \
        for (int g = 0; g < G; g++) {                                                                           \
            float r = sum[g] > 0.f ? 1.f / sum[g] : 0.f;                                                        \
            for (int c = 0; c < C; c++) STORE(ob + g * D + 16 * c, acc[g][c] * r);                              \
        }                                                                                                       \
    }

/* Built once per query group size, head size and element type (core/engine/native.py passes them):
   -DGROUP=G -DHEAD_DIM=D (a multiple of 16) -DBF16=1 for bfloat16, else float32. */
#if BF16
#define T uint16_t
#define LOAD load_bf16
#define STORE store_bf16
#else
#define T float
#define LOAD load_f32
#define STORE store_f32
#endif

/* q [B, H, GROUP, HEAD_DIM] contiguous; keys and values: element (b, h, n, d) at b*sb + h*sh + n*sn + d; mask
   [B, N] bytes (nonzero: attended) at b*sm + n; out like q. */
void decode_attention(const T* q, const T* k, const T* v, const uint8_t* mask, T* out, int B, int H, int N,
                      long sb, long sh, long sn, long sm, float scale, int threads) {
    #pragma omp parallel for schedule(dynamic, 1) collapse(2) num_threads(threads)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            BODY(T, LOAD, STORE, GROUP, HEAD_DIM)
}
