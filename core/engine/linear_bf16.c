/* A bfloat16 linear layer's product for a few rows on the CPU, in float32 arithmetic (core/engine/native.py
   builds and loads this file; core/engine/matmuls.py calls it for decoding steps on CPUs without AMX).

   On CPUs without AMX, torch's bfloat16 matmuls run oneDNN's AVX-512 BF16 kernels, built on the
   VDPBF16PS dot product, which issued at half the rate of float32 FMAs on the Xeon measured (86 against
   175 GFLOP/s per core): a SmolLM2-135M decoding step's linear layers took 66 ms at 24 rows. Here the
   weight stays bfloat16 in memory (half of float32's traffic) and is widened to float32 in registers, two
   columns' pairs at a time (an unpack with zeros), and the rows are multiplied by FMAs: 43 ms.

   Each output is its row's dot product with its weight column, summed in float32 in the order of k, whatever
   the number of rows or the row's place among them: a row's numbers do not depend on its batch. The sum is
   rounded to bfloat16 to nearest even, as torch rounds.

   The weight is packed once (`pack_weight`): per 16 output columns and pair of inputs (k, k + 1), 32
   values, each 128-bit lane l holding columns 4l..4l+3 at k in its low four and at k + 1 in its high four,
   the layout that unpacking with zeros turns into two vectors of floats. Needs AVX-512 BW and BF16 (the
   build fails elsewhere, and the caller keeps oneDNN). */
#include <immintrin.h>
#include <stdint.h>

#if !defined(__AVX512BW__) || !defined(__AVX512BF16__)
#error "needs AVX-512 BW and AVX-512 BF16"
#endif

#define INLINE static inline __attribute__((always_inline))
#define MR 6  /* rows per tile */
#define NR 4  /* vectors of 16 columns per tile */

void pack_weight(const uint16_t* w, uint16_t* p, long n, long k) {
    long half = k / 2;
    for (long v = 0; v < n / 16; v++)
        for (long kk = 0; kk < half; kk++) {
            uint16_t* dst = p + (v * half + kk) * 32;
            for (int l = 0; l < 4; l++)
                for (int i = 0; i < 4; i++) {
                    const uint16_t* src = w + (v * 16 + 4 * l + i) * k + 2 * kk;
                    dst[8 * l + i] = src[0];
                    dst[8 * l + 4 + i] = src[1];
                }
        }
}

/* rows x[0..mr) (float32, stride ldx) times nr vectors of packed columns -> y (bfloat16, stride ldy) */
INLINE void tile(const float* x, long ldx, const uint16_t* p, long k, uint16_t* y, long ldy, const int mr,
                 const int nr) {
    __m512 acc[MR][NR];
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) acc[i][j] = _mm512_setzero_ps();
    const long half = k / 2, stride = half * 32;
    const __m512i zero = _mm512_setzero_si512();
    for (long kk = 0; kk < half; kk++) {
        __m512i raw[NR];
        __m512 w[NR];
        for (int j = 0; j < nr; j++) raw[j] = _mm512_loadu_si512(p + j * stride + kk * 32);
        for (int j = 0; j < nr; j++) w[j] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, raw[j]));
        for (int i = 0; i < mr; i++) {
            __m512 xb = _mm512_set1_ps(x[i * ldx + 2 * kk]);
            for (int j = 0; j < nr; j++) acc[i][j] = _mm512_fmadd_ps(xb, w[j], acc[i][j]);
        }
        for (int j = 0; j < nr; j++) w[j] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, raw[j]));
        for (int i = 0; i < mr; i++) {
            __m512 xb = _mm512_set1_ps(x[i * ldx + 2 * kk + 1]);
            for (int j = 0; j < nr; j++) acc[i][j] = _mm512_fmadd_ps(xb, w[j], acc[i][j]);
        }
    }
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++)
            _mm256_storeu_si256((__m256i*)(y + i * ldy + 16 * j), (__m256i)_mm512_cvtneps_pbh(acc[i][j]));
}

/* one function per tile shape, so that each keeps its accumulators in registers */
typedef void (*tile_fn)(const float*, long, const uint16_t*, long, uint16_t*, long);
#define T(A, B) static void t##A##_##B(const float* x, long ldx, const uint16_t* p, long k, uint16_t* y, long ldy) \
    { tile(x, ldx, p, k, y, ldy, A, B); }
#define ROW(A) T(A, 1) T(A, 2) T(A, 3) T(A, 4)
ROW(1) ROW(2) ROW(3) ROW(4) ROW(5) ROW(6)
#define R(A) {t##A##_1, t##A##_2, t##A##_3, t##A##_4}
static const tile_fn TILES[MR][NR] = {R(1), R(2), R(3), R(4), R(5), R(6)};

/* y [m, n] (bfloat16, rows of n) = x [m, k] (float32, rows `ldx` apart) times the packed weight [n, k];
   n a multiple of 16, k even. The tiles of 64 columns are shared among `threads` threads. */
void linear_bf16(const float* x, long m, long ldx, const uint16_t* p, long n, long k, uint16_t* y, int threads) {
    const long vectors = n / 16, panels = (vectors + NR - 1) / NR, half = k / 2;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (long pn = 0; pn < panels; pn++) {
        int nr = vectors - pn * NR < NR ? (int)(vectors - pn * NR) : NR;
        for (long i0 = 0; i0 < m; i0 += MR) {
            int mr = m - i0 < MR ? (int)(m - i0) : MR;
            TILES[mr - 1][nr - 1](x + i0 * ldx, ldx, p + pn * NR * half * 32, k, y + i0 * n + pn * NR * 16, n);
        }
    }
}
