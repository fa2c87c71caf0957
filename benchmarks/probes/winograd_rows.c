/* Does Winograd F(2,3) along the rows beat direct 3x3 depthwise convolution on this CPU?
 *
 * Hand-written AVX-512 kernels, one thread, NHWC 56x56x144 fp32 on a pre-padded input (no
 * bounds checks), 16 channels per vector:
 *   direct: 2 output rows x 4 columns of accumulators, 9 FMAs per output vector;
 *   wino:   RR output rows x PP column pairs; per input row and pair 4 adds transform the
 *           input, 4 FMAs per kernel row accumulate, 4 adds per pair make the outputs:
 *           6 FMAs + about 6 adds per output vector (adds and FMAs issue on different pipes).
 * Build and run (gcc 12 has no -march=znver4; x86-64-v4 is AVX-512):
 *   gcc -O3 -march=x86-64-v4 -mtune=znver3 -DRR=2 -DPP=1 winograd_rows.c -o probe -lm && ./probe
 * On the 2-core znver4 VMs Winograd ran 0.42x-0.74x the direct kernel's speed for every
 * (RR, PP) in {(2,1), (4,1), (2,2), (1,4)}: see benchmarks/README.md.
 */
#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#ifndef RR
#define RR 2
#endif
#ifndef PP
#define PP 1
#endif
#define H 56
#define W 56
#define C 144
#define WP (W + 2)
#define UNROLL _Pragma("GCC unroll 8")

static float in[(H + 2) * WP * C] __attribute__((aligned(64)));
static float out_direct[H * W * C] __attribute__((aligned(64)));
static float out_wino[H * W * C] __attribute__((aligned(64)));
static float kern[9 * C] __attribute__((aligned(64)));
static float bias[C] __attribute__((aligned(64)));
static float U[3 * 4 * C] __attribute__((aligned(64)));  /* transformed kernel rows */

static inline const float *at_in(int y, int x, int c) { return in + ((y * WP) + x) * C + c; }
static inline float *at_out(float *o, int y, int x, int c) { return o + ((y * W) + x) * C + c; }

static void direct(float *o) {
  for (int y = 0; y < H; y += 2)
    for (int x = 0; x < W; x += 4)
      for (int c = 0; c < C; c += 16) {
        __m512 acc[2][4];
        __m512 b = _mm512_load_ps(bias + c);
        UNROLL for (int r = 0; r < 2; r++) UNROLL for (int j = 0; j < 4; j++) acc[r][j] = b;
        UNROLL for (int ky = 0; ky < 4; ky++) {
          __m512 v[6];
          UNROLL for (int j = 0; j < 6; j++) v[j] = _mm512_loadu_ps(at_in(y + ky, x + j, c));
          UNROLL for (int r = 0; r < 2; r++) {
            int kh = ky - r;
            if (kh < 0 || kh > 2) continue;
            UNROLL for (int kw = 0; kw < 3; kw++) {
              __m512 w = _mm512_load_ps(kern + (kh * 3 + kw) * C + c);
              UNROLL for (int j = 0; j < 4; j++) acc[r][j] = _mm512_fmadd_ps(v[j + kw], w, acc[r][j]);
            }
          }
        }
        UNROLL for (int r = 0; r < 2; r++) UNROLL for (int j = 0; j < 4; j++)
          _mm512_storeu_ps(at_out(o, y + r, x + j, c), acc[r][j]);
      }
}

static void wino(float *o) {
  __m512 half = _mm512_set1_ps(0.5f);
  for (int c = 0; c < C; c += 16)
    for (int kh = 0; kh < 3; kh++) {
      __m512 g0 = _mm512_load_ps(kern + (kh * 3) * C + c), g1 = _mm512_load_ps(kern + (kh * 3 + 1) * C + c);
      __m512 g2 = _mm512_load_ps(kern + (kh * 3 + 2) * C + c);
      _mm512_store_ps(U + (kh * 4) * C + c, g0);
      _mm512_store_ps(U + (kh * 4 + 1) * C + c, _mm512_mul_ps(_mm512_add_ps(_mm512_add_ps(g0, g1), g2), half));
      _mm512_store_ps(U + (kh * 4 + 2) * C + c, _mm512_mul_ps(_mm512_add_ps(_mm512_sub_ps(g0, g1), g2), half));
      _mm512_store_ps(U + (kh * 4 + 3) * C + c, g2);
    }
  for (int y = 0; y < H; y += RR)
    for (int x = 0; x < W; x += 2 * PP)
      for (int c = 0; c < C; c += 16) {
        __m512 m[RR][PP][4];
        __m512 b = _mm512_load_ps(bias + c), z = _mm512_setzero_ps();
        UNROLL for (int r = 0; r < RR; r++) UNROLL for (int p = 0; p < PP; p++) {
          m[r][p][0] = z; m[r][p][1] = b; m[r][p][2] = z; m[r][p][3] = z;  /* m1 feeds both outputs */
        }
        UNROLL for (int ky = 0; ky < RR + 2; ky++) {
          __m512 d[2 * PP + 2], t[PP][4];
          UNROLL for (int j = 0; j < 2 * PP + 2; j++) d[j] = _mm512_loadu_ps(at_in(y + ky, x + j, c));
          UNROLL for (int p = 0; p < PP; p++) {
            t[p][0] = _mm512_sub_ps(d[2 * p], d[2 * p + 2]);
            t[p][1] = _mm512_add_ps(d[2 * p + 1], d[2 * p + 2]);
            t[p][2] = _mm512_sub_ps(d[2 * p + 2], d[2 * p + 1]);
            t[p][3] = _mm512_sub_ps(d[2 * p + 1], d[2 * p + 3]);
          }
          UNROLL for (int r = 0; r < RR; r++) {
            int kh = ky - r;
            if (kh < 0 || kh > 2) continue;
            UNROLL for (int j = 0; j < 4; j++) {
              __m512 u = _mm512_load_ps(U + (kh * 4 + j) * C + c);
              UNROLL for (int p = 0; p < PP; p++) m[r][p][j] = _mm512_fmadd_ps(t[p][j], u, m[r][p][j]);
            }
          }
        }
        UNROLL for (int r = 0; r < RR; r++) UNROLL for (int p = 0; p < PP; p++) {
          __m512 *mm = m[r][p];
          _mm512_storeu_ps(at_out(o, y + r, x + 2 * p, c), _mm512_add_ps(_mm512_add_ps(mm[0], mm[1]), mm[2]));
          _mm512_storeu_ps(at_out(o, y + r, x + 2 * p + 1, c), _mm512_sub_ps(_mm512_sub_ps(mm[1], mm[2]), mm[3]));
        }
      }
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static double best_us(void (*f)(float *), float *o) {
  double best = 1e9;
  for (int rep = 0; rep < 15; rep++) {
    double s = now();
    for (int i = 0; i < 100; i++) f(o);
    double e = (now() - s) / 100;
    if (e < best) best = e;
  }
  return best * 1e6;
}

int main(void) {
  srand(0);
  for (int i = 0; i < (H + 2) * WP * C; i++) in[i] = (float)rand() / RAND_MAX - 0.5f;
  for (int i = 0; i < 9 * C; i++) kern[i] = (float)rand() / RAND_MAX - 0.5f;
  for (int i = 0; i < C; i++) bias[i] = (float)rand() / RAND_MAX;
  direct(out_direct);
  wino(out_wino);
  double err = 0;
  for (int i = 0; i < H * W * C; i++) err = fmax(err, fabs(out_direct[i] - out_wino[i]));
  printf("RR=%d PP=%d max |direct - wino| %.2g\n", RR, PP, err);
  for (int round = 0; round < 3; round++) {  /* interleaved: the VM's speed drifts */
    double a = best_us(direct, out_direct), b = best_us(wino, out_wino);
    printf("direct %.1f us  wino %.1f us  wino speed vs direct %.2fx\n", a, b, a / b);
  }
  return err < 1e-4 ? 0 : 1;
}
