/*
 * C reference loops for benches/compare.py (built into a shared library, loaded through ctypes).
 *
 * benches/compare.py compiles the file three times: with `-O3 -march=native` (the baselines),
 * with `-O3 -march=native -mprefer-vector-width=256` (only copy_loop is used from that build)
 * and with `-O2` (only scale_delta_int128, the plain loop of the first performance record).
 *
 * scale_same: the formula of rust/core/src/batch.rs (kernel_into) written out in C, bit for bit:
 *   d   = (x - sub) pre-shifted (right by -shift, or left by shift; mod 2**64)
 *   out = add + (d >> 32) * mul + (((d & 0xffffffff) * mul) >> 32)   (all mod 2**64)
 * i.e. pvclock_scale_delta (sub = add = 0) or __pvclock_read_cycles (sub = tsc_timestamp,
 * add = system_time) of arch/x86/include/asm/pvclock.h. Bits 32..95 of the 96-bit product
 * d * mul are (d >> 32) * mul + (((d & 0xffffffff) * mul) >> 32): two 32x32->64 products that
 * a compiler vectorises (AVX2: vpmuludq; gcc 12 with AVX-512 picks vpmullq), and the sum is
 * < 2**64, so nothing is lost. Two loops so the shift direction is loop-invariant, and
 * `restrict` because the Rust slices (&[u64] and &mut [u64]) promise the same absence of
 * aliasing.
 *
 * scale_delta_int128: the plain loop with an unsigned __int128 product (mulq + shrd).
 *
 * copy_loop: out[i] = in[i], one u64 read and one u64 written per element: the same memory
 * traffic as the conversion, the bandwidth reference. The compilers turn such a loop into a
 * call of memcpy; the attributes below keep it a loop (with gcc 12 `-O3 -march=native` on an
 * AVX-512 CPU: a vmovdqu64 zmm load/store loop, checked with objdump -d).
 * copy_memcpy: glibc memcpy of the same data (may use non-temporal stores for large sizes).
 *
 * The *_mt variants split [0, n) into `threads` contiguous ranges, the first on the calling
 * thread and the others on threads created for the call and joined before returning: the
 * policy of rust/core/src/batch.rs par_ranges (std::thread::scope).
 */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__clang__)
#define KEEP_LOOP __attribute__((no_builtin("memcpy")))
#elif defined(__GNUC__)
#define KEEP_LOOP __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define KEEP_LOOP
#endif

void scale_same(const uint64_t *restrict in, uint64_t *restrict out, size_t n, uint32_t mul32,
		int shift, uint64_t sub, uint64_t add)
{
	const uint64_t mul = mul32;
	size_t i;

	if (shift < 0) {
		const unsigned int s = (unsigned int)(-shift) & 63;

		for (i = 0; i < n; i++) {
			const uint64_t d = (in[i] - sub) >> s;

			out[i] = add + (d >> 32) * mul + (((d & 0xffffffffu) * mul) >> 32);
		}
	} else {
		const unsigned int s = (unsigned int)shift & 63;

		for (i = 0; i < n; i++) {
			const uint64_t d = (in[i] - sub) << s;

			out[i] = add + (d >> 32) * mul + (((d & 0xffffffffu) * mul) >> 32);
		}
	}
}

void scale_delta_int128(const uint64_t *in, uint64_t *out, size_t n, uint32_t mul, int shift)
{
	size_t i;

	if (shift < 0) {
		unsigned int s = (unsigned int)(-shift);

		for (i = 0; i < n; i++)
			out[i] = (uint64_t)(((unsigned __int128)(in[i] >> s) * mul) >> 32);
	} else {
		unsigned int s = (unsigned int)shift;

		for (i = 0; i < n; i++)
			out[i] = (uint64_t)(((unsigned __int128)(in[i] << s) * mul) >> 32);
	}
}

KEEP_LOOP void copy_loop(const uint64_t *restrict in, uint64_t *restrict out, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		out[i] = in[i];
}

void copy_memcpy(const uint64_t *in, uint64_t *out, size_t n)
{
	memcpy(out, in, n * sizeof(uint64_t));
}

/* ------------------------------------------------------------------ threads */

#define MAX_THREADS 8

struct job {
	const uint64_t *in;
	uint64_t *out;
	size_t n;
	uint32_t mul;
	int shift;
	uint64_t sub, add;
	int copy;
};

static void run_job(const struct job *j)
{
	if (j->copy)
		copy_loop(j->in, j->out, j->n);
	else
		scale_same(j->in, j->out, j->n, j->mul, j->shift, j->sub, j->add);
}

static void *job_thread(void *arg)
{
	run_job(arg);
	return NULL;
}

static void split(struct job whole, int threads)
{
	struct job jobs[MAX_THREADS];
	pthread_t tid[MAX_THREADS];
	int started[MAX_THREADS] = { 0 };
	size_t chunk, start;
	int t;

	if (threads < 1)
		threads = 1;
	if (threads > MAX_THREADS)
		threads = MAX_THREADS;
	if (threads == 1 || whole.n == 0) {
		run_job(&whole);
		return;
	}
	chunk = (whole.n + (size_t)threads - 1) / (size_t)threads;
	for (t = 0; t < threads; t++) {
		start = (size_t)t * chunk;
		jobs[t] = whole;
		jobs[t].in = whole.in + (start < whole.n ? start : whole.n);
		jobs[t].out = whole.out + (start < whole.n ? start : whole.n);
		jobs[t].n = start >= whole.n ? 0 : (whole.n - start < chunk ? whole.n - start : chunk);
	}
	for (t = 1; t < threads; t++) {
		/* like par_ranges: a thread that cannot be created runs its range inline */
		started[t] = pthread_create(&tid[t], NULL, job_thread, &jobs[t]) == 0;
		if (!started[t])
			run_job(&jobs[t]);
	}
	run_job(&jobs[0]);
	for (t = 1; t < threads; t++)
		if (started[t])
			pthread_join(tid[t], NULL);
}

void scale_same_mt(const uint64_t *in, uint64_t *out, size_t n, uint32_t mul, int shift,
		   uint64_t sub, uint64_t add, int threads)
{
	struct job j = { in, out, n, mul, shift, sub, add, 0 };

	split(j, threads);
}

void copy_loop_mt(const uint64_t *in, uint64_t *out, size_t n, int threads)
{
	struct job j = { in, out, n, 0, 0, 0, 0, 1 };

	split(j, threads);
}
