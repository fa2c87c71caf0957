/* Do 512-bit additions issue beside 512-bit FMAs on this CPU (separate pipes), or share them?
 *
 * Twelve independent register chains, timed per round of 12 operations: all FMAs, all
 * additions, 6 FMAs + 6 additions, 8 FMAs + 4 additions. If the mixed rounds take the time of
 * their FMAs alone, additions are free beside FMAs: what Winograd F(2,3) relies on (6 FMAs +
 * about 5 additions per output instead of 9 FMAs; see the README's Schedules and targets).
 * Build and run (gcc 12; x86-64-v4 is AVX-512):
 *   gcc -O2 -march=x86-64-v4 fp_pipes.c -o fp_pipes && ./fp_pipes
 * On the 2-core znver4 VMs: FMA 0.274 ns, addition 0.274 ns, 6 + 6 in 1.64 ns = 6 FMAs' time.
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define ROUNDS 50000000L
#define CHAINS __m512 a0 = one, a1 = one, a2 = one, a3 = one, a4 = one, a5 = one, a6 = one, a7 = one, \
                      a8 = one, a9 = one, a10 = one, a11 = one;
#define F(x) x = _mm512_fmadd_ps(x, m, k);
#define A(x) x = _mm512_add_ps(x, k);
/* Keeps the chains in registers and the loop from being folded away. */
#define KEEP __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), "+v"(a6), \
                                   "+v"(a7), "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11));
#define SINK (_mm512_reduce_add_ps(a0) + _mm512_reduce_add_ps(a6) + _mm512_reduce_add_ps(a11))
#define TIME(body, out)                                     \
  {                                                         \
    CHAINS double s = now();                                \
    for (long i = 0; i < ROUNDS; i++) { body KEEP }         \
    out = (now() - s) / ROUNDS * 1e9;                       \
    sink += SINK;                                           \
  }

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
  __m512 one = _mm512_set1_ps(1.0f), m = _mm512_set1_ps(0.9999f), k = _mm512_set1_ps(1e-7f);
  float sink = 0;
  double fma, add, six_six, eight_four;
  TIME(F(a0) F(a1) F(a2) F(a3) F(a4) F(a5) F(a6) F(a7) F(a8) F(a9) F(a10) F(a11), fma)
  TIME(A(a0) A(a1) A(a2) A(a3) A(a4) A(a5) A(a6) A(a7) A(a8) A(a9) A(a10) A(a11), add)
  TIME(F(a0) F(a1) F(a2) F(a3) F(a4) F(a5) A(a6) A(a7) A(a8) A(a9) A(a10) A(a11), six_six)
  TIME(F(a0) F(a1) F(a2) F(a3) F(a4) F(a5) F(a6) F(a7) A(a8) A(a9) A(a10) A(a11), eight_four)
  printf("per operation: FMA %.3f ns, addition %.3f ns\n", fma / 12, add / 12);
  printf("6 FMAs + 6 additions: %.2f ns (6 FMAs alone: %.2f)\n", six_six, fma / 2);
  printf("8 FMAs + 4 additions: %.2f ns (8 FMAs alone: %.2f)  [%g]\n", eight_four, fma * 8 / 12, sink);
  return 0;
}
