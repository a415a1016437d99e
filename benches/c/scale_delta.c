/*
 * C -O2 reference loops for benches/compare.py (loaded through ctypes).
 *
 * scale_delta_batch: pvclock_scale_delta (arch/x86/include/asm/pvclock.h) over an array:
 * pre-shift the u64 delta, then bits 32..95 of the 96-bit product with a u32 multiplier,
 * written with unsigned __int128 as an x86-64 compiler turns it into mulq + shrd.
 * copy_u64: the memcpy floor for the same amount of data.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

void scale_delta_batch(const uint64_t *in, uint64_t *out, size_t n, uint32_t mul, int shift)
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

void copy_u64(const uint64_t *in, uint64_t *out, size_t n)
{
	memcpy(out, in, n * sizeof(uint64_t));
}
