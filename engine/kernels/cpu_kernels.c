/* CPU kernels for the engine: paged attention for short queries, the sampler's
 * filter-and-race, few-row linear layers over bf16 weights, and the whole decoder stack of a
 * short-query step built from them. Built at first use by engine/kernels/cpu.py and called through
 * ctypes on raw tensor pointers; each has a PyTorch reference it is tested against
 * (engine/attention/torch_ref.py, engine/sampler.py). OpenMP shares torch's runtime. */
#include <math.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ attention */

typedef struct {
    const float *k_cache, *v_cache;
    int64_t num_heads, num_kv_heads, head_dim, block_size;
} Cache;

static inline const float *cache_row(const Cache *c, const float *base, const int64_t *table, int64_t h,
                                     int64_t pos) {
    return base + ((table[pos / c->block_size] * c->num_kv_heads + h) * c->block_size + pos % c->block_size)
                  * c->head_dim;
}

/* Query rows [r0, r1) against the keys at positions [p0, p1) of one block table, block by
 * block: a block's keys are read once for all the rows (which stay in L1 meanwhile). Row r
 * sees positions up to last[r]. */
#if defined(__AVX2__) && defined(__FMA__)
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(s);
}

/* q . k[j] for 8 keys at stride D: 8 vector accumulators, then one transposing reduction. */
static inline __m256 dots8(const float *q, const float *k, int64_t D) {
    __m256 a[8];
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++) a[j] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d += 8) {
        const __m256 qv = _mm256_loadu_ps(q + d);
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) a[j] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + j * D + d), a[j]);
    }
    const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

static inline float dot1(const float *q, const float *k, int64_t D) {
    __m256 a = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(k + d), a);
    return hsum8(a);
}

static inline void scores_block(const float *q, const float *k, int64_t D, int64_t m, float *dst) {
    int64_t j = 0;
    for (; j + 8 <= m; j += 8) _mm256_storeu_ps(dst + j, dots8(q, k + j * D, D));
    for (; j < m; j++) dst[j] = dot1(q, k + j * D, D);
}

/* acc[0, 8 nv) += sum_j p[j] v[j] over m values at stride D, with acc in registers. */
static inline __attribute__((always_inline)) void axpy_fixed(const float *p, const float *v, int64_t D, int64_t m,
                                                             const int nv, float *acc) {
    __m256 a[8];
#pragma GCC unroll 8
    for (int i = 0; i < nv; i++) a[i] = _mm256_loadu_ps(acc + 8 * i);
    for (int64_t j = 0; j < m; j++) {
        const __m256 pj = _mm256_broadcast_ss(p + j);
#pragma GCC unroll 8
        for (int i = 0; i < nv; i++) a[i] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + j * D + 8 * i), a[i]);
    }
#pragma GCC unroll 8
    for (int i = 0; i < nv; i++) _mm256_storeu_ps(acc + 8 * i, a[i]);
}

static inline void values_block(const float *p, const float *v, int64_t D, int64_t m, float *acc) {
    for (int64_t d0 = 0; d0 < D; d0 += 64) {
        switch ((D - d0) / 8 < 8 ? (D - d0) / 8 : 8) {  /* constant vector counts: registers, no spills */
        case 1: axpy_fixed(p, v + d0, D, m, 1, acc + d0); break;
        case 2: axpy_fixed(p, v + d0, D, m, 2, acc + d0); break;
        case 3: axpy_fixed(p, v + d0, D, m, 3, acc + d0); break;
        case 4: axpy_fixed(p, v + d0, D, m, 4, acc + d0); break;
        case 5: axpy_fixed(p, v + d0, D, m, 5, acc + d0); break;
        case 6: axpy_fixed(p, v + d0, D, m, 6, acc + d0); break;
        case 7: axpy_fixed(p, v + d0, D, m, 7, acc + d0); break;
        default: axpy_fixed(p, v + d0, D, m, 8, acc + d0); break;
        }
    }
}
#define ATTN_AVX 1
#else
#define ATTN_AVX 0
#endif

static void scores_range(const Cache *c, const int64_t *table, int64_t h, int64_t p0, int64_t p1, int64_t r0,
                         int64_t r1, const float *qs, const int64_t *last, const int64_t *row_off, float *scores) {
    const int64_t D = c->head_dim, bs = c->block_size;
    for (int64_t pos = p0; pos < p1;) {
        const int64_t off = pos % bs, n = bs - off < p1 - pos ? bs - off : p1 - pos;
        const float *kb = cache_row(c, c->k_cache, table, h, pos);
        for (int64_t r = r0; r < r1; r++) {
            const int64_t m = last[r] + 1 - pos < n ? last[r] + 1 - pos : n;  /* causal */
            if (m <= 0) continue;
            const float *qr = qs + r * D;
            float *dst = scores + row_off[r] + pos;
#if ATTN_AVX
            if (D % 8 == 0) {
                scores_block(qr, kb, D, m, dst);
                continue;
            }
#endif
            for (int64_t j = 0; j < m; j++) {
                float dot = 0.f;
                for (int64_t d = 0; d < D; d++) dot += qr[d] * kb[j * D + d];
                dst[j] = dot;
            }
        }
        pos += n;
    }
}

static void values_range(const Cache *c, const int64_t *table, int64_t h, int64_t p0, int64_t p1, int64_t r0,
                         int64_t r1, const int64_t *last, const int64_t *row_off, const float *scores, float *acc) {
    const int64_t D = c->head_dim, bs = c->block_size;
    for (int64_t pos = p0; pos < p1;) {
        const int64_t off = pos % bs, n = bs - off < p1 - pos ? bs - off : p1 - pos;
        const float *vb = cache_row(c, c->v_cache, table, h, pos);
        for (int64_t r = r0; r < r1; r++) {
            const int64_t m = last[r] + 1 - pos < n ? last[r] + 1 - pos : n;
            if (m <= 0) continue;
            const float *p = scores + row_off[r] + pos;
            float *a = acc + r * D;
#if ATTN_AVX
            if (D % 8 == 0) {
                values_block(p, vb, D, m, a);
                continue;
            }
#endif
            for (int64_t j = 0; j < m; j++)
                for (int64_t d = 0; d < D; d++) a[d] += p[j] * vb[j * D + d];
        }
        pos += n;
    }
}

/* One kv head of a group of sequences whose block tables start with the same `shared`
 * positions (siblings of one prompt): those keys and values are read once for the
 * whole group, the rest once per sequence. A group of one is plain paged attention. */
static void attend_group(const Cache *c, const float *q, const int64_t *block_tables, int64_t table_stride,
                         const int64_t *members, int64_t count, int64_t shared, const int32_t *cu_seqlens,
                         const int32_t *context_lens, int64_t h, float scale, float *out) {
    const int64_t rep = c->num_heads / c->num_kv_heads, D = c->head_dim;
    int64_t rows = 0, cells = 0;
    for (int64_t m = 0; m < count; m++) {
        const int64_t s = members[m];
        rows += (cu_seqlens[s + 1] - cu_seqlens[s]) * rep;
        cells += (cu_seqlens[s + 1] - cu_seqlens[s]) * rep * context_lens[s];
    }
    float *qs = malloc(sizeof(float) * rows * D), *acc = calloc(rows * D, sizeof(float));
    float *scores = malloc(sizeof(float) * cells), *sums = malloc(sizeof(float) * rows);
    int64_t *last = malloc(sizeof(int64_t) * rows), *row_off = malloc(sizeof(int64_t) * rows);
    int64_t *first_row = malloc(sizeof(int64_t) * (count + 1));
    int64_t r = 0, off = 0;
    for (int64_t m = 0; m < count; m++) {
        const int64_t s = members[m], start = cu_seqlens[s], q_len = cu_seqlens[s + 1] - start;
        const int64_t ctx = context_lens[s];
        first_row[m] = r;
        for (int64_t j = 0; j < q_len; j++) {
            for (int64_t k = 0; k < rep; k++, r++) {
                const float *src = q + ((start + j) * c->num_heads + h * rep + k) * D;
                for (int64_t d = 0; d < D; d++) qs[r * D + d] = src[d] * scale;
                last[r] = ctx - q_len + j;
                row_off[r] = off;
                off += ctx;
            }
        }
    }
    first_row[count] = r;
    const int64_t *table0 = block_tables + members[0] * table_stride;
    scores_range(c, table0, h, 0, shared, 0, rows, qs, last, row_off, scores);
    for (int64_t m = 0; m < count; m++)
        scores_range(c, block_tables + members[m] * table_stride, h, shared, context_lens[members[m]],
                     first_row[m], first_row[m + 1], qs, last, row_off, scores);
    for (int64_t i = 0; i < rows; i++) {
        float *row = scores + row_off[i], mx = -INFINITY, sum = 0.f;
        for (int64_t pos = 0; pos <= last[i]; pos++) mx = row[pos] > mx ? row[pos] : mx;
        for (int64_t pos = 0; pos <= last[i]; pos++) { row[pos] = expf(row[pos] - mx); sum += row[pos]; }
        sums[i] = sum;
    }
    values_range(c, table0, h, 0, shared, 0, rows, last, row_off, scores, acc);
    for (int64_t m = 0; m < count; m++)
        values_range(c, block_tables + members[m] * table_stride, h, shared, context_lens[members[m]],
                     first_row[m], first_row[m + 1], last, row_off, scores, acc);
    for (int64_t m = 0; m < count; m++) {
        const int64_t start = cu_seqlens[members[m]];
        for (int64_t i = first_row[m]; i < first_row[m + 1]; i++) {
            const int64_t j = (i - first_row[m]) / rep, k = (i - first_row[m]) % rep;
            float *dst = out + ((start + j) * c->num_heads + h * rep + k) * D;
            const float inv = 1.f / sums[i];
            for (int64_t d = 0; d < D; d++) dst[d] = acc[i * D + d] * inv;
        }
    }
    free(qs); free(acc); free(scores); free(sums); free(last); free(row_off); free(first_row);
}

/* q, out: [T, num_heads, D]; caches: [num_blocks, num_kv_heads, block_size, D];
 * block_tables: [B, table_stride]. Groups: members[group_offsets[g] .. group_offsets[g+1])
 * are batch indices sharing their first shared_len[g] cached positions. */
void paged_attention(const float *q, const float *k_cache, const float *v_cache, const int64_t *block_tables,
                     int64_t table_stride, const int64_t *members, const int64_t *group_offsets,
                     const int64_t *shared_len, int64_t num_groups, const int32_t *cu_seqlens,
                     const int32_t *context_lens, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                     int64_t block_size, float scale, float *out) {
    const Cache c = {k_cache, v_cache, num_heads, num_kv_heads, head_dim, block_size};
    #pragma omp parallel for schedule(dynamic, 1)
    for (int64_t w = 0; w < num_groups * num_kv_heads; w++) {
        const int64_t g = w / num_kv_heads, h = w % num_kv_heads;
        attend_group(&c, q, block_tables, table_stride, members + group_offsets[g],
                     group_offsets[g + 1] - group_offsets[g], shared_len[g], cu_seqlens, context_lens, h,
                     scale, out);
    }
}

/* ------------------------------------------------------------------ sampling */

static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16; x *= 0x7FEB352Du; x ^= x >> 15; x *= 0x846CA68Bu; return x ^ (x >> 16);
}

/* The same noise as engine/sampler.py uniform_hash: uniform in (0, 1) from (seed, token),
 * 23 bits so that k + 0.5 is exact in float32. */
static inline float uniform_hash(uint32_t seed, uint32_t token) {
    const uint32_t h = mix32(mix32(seed ^ (token * 0x9E3779B1u)) ^ (seed >> 7));
    return ((float)(h >> 9) + 0.5f) * (1.0f / 8388608.0f);
}

typedef struct { float x, w; } Pair;

static int cmp_desc(const void *a, const void *b) {
    const float x = ((const Pair *)a)->x, y = ((const Pair *)b)->x;
    return (x < y) - (x > y);
}

/* The k-th largest value of x (duplicates counted), by quickselect on a copy. */
static float kth_largest(const float *x, int64_t n, int64_t k, float *buf) {
    memcpy(buf, x, sizeof(float) * n);
    int64_t lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        const float pivot = buf[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (buf[i] > pivot) i++;
            while (buf[j] < pivot) j--;
            if (i <= j) { float t = buf[i]; buf[i] = buf[j]; buf[j] = t; i++; j--; }
        }
        if (want <= j) hi = j; else if (want >= i) lo = i; else return buf[want];
    }
    return buf[want];
}

#define BINS 4096
#define SORT_MAX 512

/* Walks pairs sorted by x descending, in groups of equal x, until `above` reaches target;
 * returns the last group's x (or `cut` if none was needed). */
static float walk_sorted(Pair *p, int64_t cnt, double *above, double target, float cut) {
    qsort(p, cnt, sizeof(Pair), cmp_desc);
    for (int64_t i = 0; i < cnt && *above < target;) {
        double group = 0.0;
        int64_t j = i;
        for (; j < cnt && p[j].x == p[i].x; j++) group += p[j].w;
        cut = p[i].x;
        *above += group;
        i = j;
    }
    return cut;
}

/* Smallest kept value under top-p: token i stays when the weight of the tokens strictly
 * better than it is below `target` (top_p of the total; ties stay or go together), over
 * candidates (x, w) [cnt] that hold more than target. Few: sorted. Many: their weights summed
 * in double into BINS bins spread evenly over the candidates' range of x (the bin index never
 * decreases with x, and equal values share a bin), and only the bin where the mass crosses
 * target is sorted. */
static float nucleus_cut(const float *cx, const float *cw, int64_t cnt, double target, Pair *tmp) {
    double above = 0.0;
    float lo = INFINITY, hi = -INFINITY;
    for (int64_t i = 0; i < cnt; i++) {
        lo = cx[i] < lo ? cx[i] : lo;
        hi = cx[i] > hi ? cx[i] : hi;
    }
    if (cnt <= SORT_MAX || !(hi > lo)) {
        for (int64_t i = 0; i < cnt; i++) tmp[i] = (Pair){cx[i], cw[i]};
        return walk_sorted(tmp, cnt, &above, target, INFINITY);
    }
    const float scale = (float)(BINS - 1) / (hi - lo);
    int32_t *bin = malloc(sizeof(int32_t) * cnt);
    double *mass = calloc(BINS, sizeof(double));
    for (int64_t i = 0; i < cnt; i++) {
        const int64_t b = (int64_t)((cx[i] - lo) * scale);
        bin[i] = (int32_t)(b < BINS ? b : BINS - 1);
    }
    for (int64_t i = 0; i < cnt; i++) mass[bin[i]] += cw[i];
    /* The candidates hold more than target, so the walk ends inside a bin: sorted, it gives the cut. */
    float cut = INFINITY;
    for (int64_t b = BINS - 1; b >= 0 && above < target; b--) {
        if (mass[b] == 0.0) continue;
        if (above + mass[b] < target) {  /* the whole bin stays */
            above += mass[b];
            continue;
        }
        int64_t in_bin = 0;
        for (int64_t i = 0; i < cnt; i++)
            if (bin[i] == b) tmp[in_bin++] = (Pair){cx[i], cw[i]};
        cut = walk_sorted(tmp, in_bin, &above, target, cut);
    }
    free(bin);
    free(mass);
    return cut;
}

/* The first index of the largest of v[0, n). */
static int64_t first_argmax(const float *v, int64_t n) {
    float best = v[0];
    for (int64_t i = 1; i < n; i++) best = v[i] > best ? v[i] : best;  /* vectorizes */
    int64_t i = 0;
    while (v[i] != best) i++;
    return i;
}

/* Per row: x / temperature, top-k, top-p, then the exponential race: the token with the
 * largest w / E, w = exp(x - max) and E = -log(u) with u hashed from (seed, token id),
 * among surviving tokens (the first such token on a tie). logits: [R, V] float32 (penalties
 * already applied). Under top-p only the candidates are ranked and raced: tokens lighter than
 * eps = (1 - top_p) * total / (2V) weigh less than (1 - top_p) * total all together, so each
 * has more than top_p of the total strictly above it and never survives; where the
 * distribution is peaked they are nearly all the vocabulary. */
void sample_rows(const float *logits, int64_t num_rows, int64_t vocab, const float *temperature,
                 const int64_t *top_k, const double *top_p, const int64_t *seeds, int64_t *tokens) {
    #pragma omp parallel for schedule(dynamic, 1) if (num_rows > 1)
    for (int64_t r = 0; r < num_rows; r++) {
        float *x = malloc(sizeof(float) * vocab), *w = malloc(sizeof(float) * vocab);
        float *buf = malloc(sizeof(float) * vocab), *cx = malloc(sizeof(float) * vocab);
        float *cw = malloc(sizeof(float) * vocab);
        int32_t *ci = malloc(sizeof(int32_t) * vocab);
        Pair *tmp = malloc(sizeof(Pair) * vocab);
        const float t = temperature[r];
        for (int64_t i = 0; i < vocab; i++) x[i] = logits[r * vocab + i] / t;
        if (top_k[r] > 0 && top_k[r] < vocab) {
            const float kth = kth_largest(x, vocab, top_k[r], buf);
            for (int64_t i = 0; i < vocab; i++) if (x[i] < kth) x[i] = -INFINITY;
        }
        float m = -INFINITY;
        for (int64_t i = 0; i < vocab; i++) m = x[i] > m ? x[i] : m;
        for (int64_t i = 0; i < vocab; i++) w[i] = expf(x[i] - m);
        const uint32_t seed = (uint32_t)seeds[r];
        if (top_p[r] < 1.0) {
            double total = 0.0;
            for (int64_t i = 0; i < vocab; i++) total += w[i];
            const float eps = (float)((1.0 - top_p[r]) * total / (2.0 * (double)vocab));
            int64_t n = 0;
            for (int64_t i = 0; i < vocab; i++) {  /* branch-free compaction (n <= i) */
                cx[n] = x[i]; cw[n] = w[i]; ci[n] = (int32_t)i;
                n += w[i] > 0.f && w[i] >= eps;
            }
            const float cut = nucleus_cut(cx, cw, n, top_p[r] * total, tmp);
            for (int64_t j = 0; j < n; j++)
                buf[j] = cx[j] >= cut ? cw[j] / -logf(uniform_hash(seed, (uint32_t)ci[j])) : 0.f;
            tokens[r] = ci[first_argmax(buf, n)];
        } else {
            for (int64_t i = 0; i < vocab; i++)
                buf[i] = w[i] > 0.f ? w[i] / -logf(uniform_hash(seed, (uint32_t)i)) : 0.f;
            tokens[r] = first_argmax(buf, vocab);
        }
        free(x); free(w); free(buf); free(cx); free(cw); free(ci); free(tmp);
    }
}

/* ------------------------------------------------------------------ linear, few rows */

/* out[M][N] = x[M][K] . W[N][K]^T for few rows M (decode and verify steps), W in bf16 (the
 * checkpoint's own values, so nothing is rounded): bf16 halves the weights' read. W comes
 * packed in column tiles of LIN_NR, k-major, the tail tile padded with zeros
 * (engine/kernels/cpu.py `pack_bf16`): w[tile][k][lin_slot(j)] = W[tile * LIN_NR + j][k], the
 * slots interleaving columns j and j + 8 so that one 32-byte load widens into both halves of
 * the tile with one shift and one mask. Each tile is read once per LIN_MR rows of x: per k, the
 * tile's weights, then one broadcast x value and two FMAs per row, so every product is an FMA
 * on a full vector and no horizontal sums are left. Few rows give few independent accumulators;
 * unrolling k (ku) restores enough of them to cover the FMA latency. */
#define LIN_NR 16
#define LIN_MR 6

static inline int lin_slot(int j) { return j < 8 ? 2 * j : 2 * (j - 8) + 1; }

static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}

#if defined(__AVX2__) && defined(__FMA__)
/* The 16 interleaved bf16 weights of one k: columns 0-7 (low halves) and 8-15 (high halves). */
static inline void bf16x16(const uint16_t *p, __m256 *lo, __m256 *hi) {
    const __m256i v = _mm256_loadu_si256((const __m256i *)p);
    *lo = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    *hi = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xFFFF0000u)));
}

/* mr rows of x (mr <= LIN_MR) times one tile: out tile [mr][LIN_NR], row stride ldo. The tile
 * is bf16 (w) or, where many row blocks share it, widened once to float32 (wf). */
static inline __attribute__((always_inline)) void lin_block(const float *x, int64_t K, const uint16_t *w,
                                                            const float *wf, const int mr, const int ku,
                                                            float *out, int64_t ldo) {
    __m256 acc[4][LIN_MR][2];
#pragma GCC unroll 4
    for (int u = 0; u < ku; u++)
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) acc[u][r][0] = acc[u][r][1] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k += ku) {
#pragma GCC unroll 4
        for (int u = 0; u < ku; u++) {
            const int64_t at = (k + u) * LIN_NR;
            __m256 w0, w1;
            if (wf) {
                w0 = _mm256_load_ps(wf + at);
                w1 = _mm256_load_ps(wf + at + 8);
            } else {
                bf16x16(w + at, &w0, &w1);
            }
#pragma GCC unroll 6
            for (int r = 0; r < mr; r++) {
                const __m256 xv = _mm256_broadcast_ss(x + r * K + k + u);
                acc[u][r][0] = _mm256_fmadd_ps(xv, w0, acc[u][r][0]);
                acc[u][r][1] = _mm256_fmadd_ps(xv, w1, acc[u][r][1]);
            }
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++) {
        __m256 a0 = acc[0][r][0], a1 = acc[0][r][1];
#pragma GCC unroll 4
        for (int u = 1; u < ku; u++) {
            a0 = _mm256_add_ps(a0, acc[u][r][0]);
            a1 = _mm256_add_ps(a1, acc[u][r][1]);
        }
        _mm256_storeu_ps(out + r * ldo, a0);
        _mm256_storeu_ps(out + r * ldo + 8, a1);
    }
}

static void lin_rows(const float *x, int64_t K, const uint16_t *w, int mr, float *out, int64_t ldo) {
    switch (mr) {  /* constant mr and ku after inlining: the accumulators stay in registers */
    case 1: lin_block(x, K, w, NULL, 1, 4, out, ldo); break;
    case 2: lin_block(x, K, w, NULL, 2, 2, out, ldo); break;
    case 3: lin_block(x, K, w, NULL, 3, 2, out, ldo); break;
    case 4: lin_block(x, K, w, NULL, 4, 1, out, ldo); break;
    case 5: lin_block(x, K, w, NULL, 5, 1, out, ldo); break;
    default: lin_block(x, K, w, NULL, 6, 1, out, ldo); break;
    }
}

static void lin_rows_f32(const float *x, int64_t K, const float *wf, float *out, int64_t ldo) {
    lin_block(x, K, NULL, wf, LIN_MR, 1, out, ldo);
}
#define LIN_WIDEN 1
#else
static void lin_rows(const float *x, int64_t K, const uint16_t *w, int mr, float *out, int64_t ldo) {
    for (int r = 0; r < mr; r++) {
        float acc[LIN_NR] = {0};
        for (int64_t k = 0; k < K; k++)
            for (int j = 0; j < LIN_NR; j++) acc[j] += x[r * K + k] * bf16_to_f32(w[k * LIN_NR + lin_slot(j)]);
        memcpy(out + r * ldo, acc, sizeof acc);
    }
}
#define LIN_WIDEN 0
#endif

static void lin_tile(const float *x, int64_t M, int64_t K, const uint16_t *w, int64_t N, int64_t tile,
                     float *wf, float *out) {
    const int64_t n0 = tile * LIN_NR, tn = N - n0 < LIN_NR ? N - n0 : LIN_NR;
    const uint16_t *wt = w + tile * K * LIN_NR;
#if LIN_WIDEN
    if (wf != NULL)  /* several full row blocks: widen the tile once for all of them */
        for (int64_t k = 0; k < K; k++)
            for (int j = 0; j < LIN_NR; j++) wf[k * LIN_NR + j] = bf16_to_f32(wt[k * LIN_NR + lin_slot(j)]);
#else
    (void)wf;  /* never allocated without AVX2 (LIN_WIDEN 0) */
#endif
    for (int64_t m = 0; m < M; m += LIN_MR) {
        const int mr = M - m < LIN_MR ? (int)(M - m) : LIN_MR;
#if LIN_WIDEN
        if (wf != NULL && mr == LIN_MR && tn == LIN_NR) {
            lin_rows_f32(x + m * K, K, wf, out + m * N + n0, N);
            continue;
        }
#endif
        if (tn == LIN_NR) {
            lin_rows(x + m * K, K, wt, mr, out + m * N + n0, N);
        } else {  /* the padded tail tile: through a buffer, only its real columns kept */
            float buf[LIN_MR * LIN_NR];
            lin_rows(x + m * K, K, wt, mr, buf, LIN_NR);
            for (int r = 0; r < mr; r++) memcpy(out + (m + r) * N + n0, buf + r * LIN_NR, sizeof(float) * tn);
        }
    }
}

static void linear_threads(const float *x, int64_t M, int64_t K, const uint16_t *w, int64_t N, float *out,
                           int64_t min_work) {
    const int64_t tiles = (N + LIN_NR - 1) / LIN_NR;
    const int widen = LIN_WIDEN && M >= 2 * LIN_MR;
#pragma omp parallel if (N * K * (M + 2) > min_work)
    {
        float *wf = widen ? aligned_alloc(32, sizeof(float) * K * LIN_NR) : NULL;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tiles; t++) lin_tile(x, M, K, w, N, t, wf, out);
        free(wf);
    }
}

void linear_bf16(const float *x, int64_t M, int64_t K, const uint16_t *w, int64_t N, float *out) {
    /* Waking the other threads costs about as much as a small layer's whole product. */
    linear_threads(x, M, K, w, N, out, 1L << 19);
}

/* Between the stack's back-to-back parallel regions the other threads are still spinning, not asleep. */
#define STACK_MIN_WORK (1L << 16)

/* ------------------------------------------------------------------ RMSNorm */

/* out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight, row by row (torch.nn.functional.rms_norm). */
void rms_norm(const float *x, int64_t rows, int64_t dim, const float *weight, float eps, float *out) {
#pragma omp parallel for schedule(static) if (rows * dim > (1L << 16))
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        float *o = out + r * dim;
        float ss = 0.f;
        for (int64_t d = 0; d < dim; d++) ss += xr[d] * xr[d];
        const float inv = 1.f / sqrtf(ss / (float)dim + eps);
        for (int64_t d = 0; d < dim; d++) o[d] = xr[d] * inv * weight[d];
    }
}

/* ------------------------------------------------------------------ the decoder stack */

/* All Llama decoder layers of a step whose queries are all short, in one call: the same
 * kernels as the module path (rms_norm, linear_bf16, paged_attention) with RoPE, the KV-cache
 * write, SiLU-and-multiply and the residual adds between them, so a decode step does not
 * pay Python and PyTorch dispatch for ~15 small ops per layer. Reference: the modules of
 * engine/models/llama.py (tests/engine/models/test_cpu_stack.py).
 *
 * x [T, H] is updated in place. weights: per layer six pointers, in order qkv [Q+2KV, H] bf16,
 * o [H, Q] bf16, gate_up [2I, H] bf16, down [H, I] bf16, input norm [H] and post-attention
 * norm [H] float32. cos, sin [T, D] at each row's position (Hugging Face's half-split layout).
 * kv_caches [L, 2, num_blocks, KVH, block_size, D]; the attention arguments are
 * paged_attention's. */
void decoder_stack(float *x, int64_t T, int64_t H, int64_t I, int64_t num_layers, const int64_t *weights,
                   float eps, const float *cos, const float *sin, float *kv_caches, int64_t num_blocks,
                   const int64_t *slot_mapping, const int64_t *block_tables, int64_t table_stride,
                   const int64_t *members, const int64_t *group_offsets, const int64_t *shared_len,
                   int64_t num_groups, const int32_t *cu_seqlens, const int32_t *context_lens,
                   int64_t num_heads, int64_t num_kv_heads, int64_t D, int64_t block_size, float scale) {
    const int64_t Q = num_heads * D, KV = num_kv_heads * D, QKV = Q + 2 * KV, half = D / 2;
    const int64_t cache_half = num_blocks * num_kv_heads * block_size * D;  /* K to V */
    float *h = malloc(sizeof(float) * T * H), *qkv = malloc(sizeof(float) * T * QKV);
    float *q = malloc(sizeof(float) * T * Q), *attn = malloc(sizeof(float) * T * Q);
    float *gu = malloc(sizeof(float) * T * 2 * I), *act = malloc(sizeof(float) * T * I);
    float *o = malloc(sizeof(float) * T * H);
    for (int64_t l = 0; l < num_layers; l++) {
        const int64_t *w = weights + 6 * l;
        float *k_cache = kv_caches + 2 * l * cache_half, *v_cache = k_cache + cache_half;
        rms_norm(x, T, H, (const float *)w[4], eps, h);
        linear_threads(h, T, H, (const uint16_t *)w[0], QKV, qkv, STACK_MIN_WORK);
        for (int64_t t = 0; t < T; t++) {
            const float *c = cos + t * D, *s = sin + t * D, *row = qkv + t * QKV;
            const int64_t block = slot_mapping[t] / block_size, off = slot_mapping[t] % block_size;
            for (int64_t hd = 0; hd < num_heads + num_kv_heads; hd++) {
                const float *src = row + hd * D;
                float *dst = hd < num_heads ? q + (t * num_heads + hd) * D
                    : k_cache + ((block * num_kv_heads + hd - num_heads) * block_size + off) * D;
                for (int64_t d = 0; d < half; d++) {
                    const float a = src[d] * c[d], b = src[d + half] * s[d];
                    dst[d] = a - b;
                }
                for (int64_t d = half; d < D; d++) {
                    const float a = src[d] * c[d], b = src[d - half] * s[d];
                    dst[d] = a + b;
                }
            }
            for (int64_t hd = 0; hd < num_kv_heads; hd++)
                memcpy(v_cache + ((block * num_kv_heads + hd) * block_size + off) * D, row + Q + KV + hd * D,
                       sizeof(float) * D);
        }
        paged_attention(q, k_cache, v_cache, block_tables, table_stride, members, group_offsets, shared_len,
                        num_groups, cu_seqlens, context_lens, num_heads, num_kv_heads, D, block_size, scale, attn);
        linear_threads(attn, T, Q, (const uint16_t *)w[1], H, o, STACK_MIN_WORK);
        for (int64_t i = 0; i < T * H; i++) x[i] += o[i];
        rms_norm(x, T, H, (const float *)w[5], eps, h);
        linear_threads(h, T, H, (const uint16_t *)w[2], 2 * I, gu, STACK_MIN_WORK);
        for (int64_t t = 0; t < T; t++) {
            const float *g = gu + t * 2 * I, *u = g + I;
            float *a = act + t * I;
            for (int64_t i = 0; i < I; i++) a[i] = g[i] / (1.f + expf(-g[i])) * u[i];
        }
        linear_threads(act, T, I, (const uint16_t *)w[3], H, o, STACK_MIN_WORK);
        for (int64_t i = 0; i < T * H; i++) x[i] += o[i];
    }
    free(h); free(qkv); free(q); free(attn); free(gu); free(act); free(o);
}


/* ------------------------------------------------------------------ entry points taking one struct
 * (engine/kernels/cpu.py fills them by field name: no long positional argument lists). */

typedef struct {
    const float *q, *k_cache, *v_cache;
    const int64_t *block_tables;
    int64_t table_stride;
    const int64_t *members, *group_offsets, *shared_len;
    int64_t num_groups;
    const int32_t *cu_seqlens, *context_lens;
    int64_t num_heads, num_kv_heads, head_dim, block_size;
    float scale;
    float *out;
} AttentionArgs;

void paged_attention_args(const AttentionArgs *a) {
    paged_attention(a->q, a->k_cache, a->v_cache, a->block_tables, a->table_stride, a->members, a->group_offsets,
                    a->shared_len, a->num_groups, a->cu_seqlens, a->context_lens, a->num_heads, a->num_kv_heads,
                    a->head_dim, a->block_size, a->scale, a->out);
}

typedef struct {
    float *x;
    int64_t tokens, hidden, intermediate, num_layers;
    const int64_t *weights;
    float eps;
    const float *cos, *sin;
    float *kv_caches;
    int64_t num_blocks;
    const int64_t *slot_mapping, *block_tables;
    int64_t table_stride;
    const int64_t *members, *group_offsets, *shared_len;
    int64_t num_groups;
    const int32_t *cu_seqlens, *context_lens;
    int64_t num_heads, num_kv_heads, head_dim, block_size;
    float scale;
} StackArgs;

void decoder_stack_args(const StackArgs *a) {
    decoder_stack(a->x, a->tokens, a->hidden, a->intermediate, a->num_layers, a->weights, a->eps, a->cos, a->sin,
                  a->kv_caches, a->num_blocks, a->slot_mapping, a->block_tables, a->table_stride, a->members,
                  a->group_offsets, a->shared_len, a->num_groups, a->cu_seqlens, a->context_lens, a->num_heads,
                  a->num_kv_heads, a->head_dim, a->block_size, a->scale);
}
