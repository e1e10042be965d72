/* Counting kernels of the dissection's threshold passes, compiled on first use by
 * gan_monitor.core.native and called through gan_monitor.dissection.thresholds.kernels. Plain C99,
 * single precision exactly as written (-ffp-contract=off, no fast-math). Each returns 0, or an
 * error code (the caller then discards the outputs and counts with torch).
 *
 * Values come either as upsampled maps, or as *rows*: the first of upsample's two matmuls
 * (featuremaps interpolated along x, [maps, h, width]), from which each output line is mixed
 * here (gm_interpolate): line = rows[lo[Y]] * w_lo + rows[hi[Y]] * w_hi, with each product and
 * the sum rounded ("plain") or the second product added in a fused multiply-add ("fused"), as
 * the BLAS kernel behind upsample's second matmul rounds. The caller checks once per geometry
 * which of the two reproduces upsample bit for bit (kernels.rows_arithmetic) and otherwise
 * upsamples with torch. Fused mixing needs hardware FMA (gm_fused_available).
 *
 * Errors: 1 (too many values for one call), 2 (a label code out of range), 3 (a value in no cell
 * of the level table: its arithmetic differs from the table's), 4 (fused mixing unavailable).
 */
#include <stdint.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define GM_FMA_X86 1
#elif defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
#define GM_FMA_ARM 1
#endif
#if defined(__GNUC__) && !defined(__clang__)
#define GM_VECTORIZE __attribute__((optimize("tree-vectorize"))) /* clang vectorizes at -O2 anyway */
#else
#define GM_VECTORIZE
#endif

/* ---- mixing two rows into an output line ---------------------------------------------- */

GM_VECTORIZE static void mix_plain(const float *lo, const float *hi, float wa, float wb, float *out, int64_t n)
{
    int64_t i;
    for (i = 0; i < n; i++) out[i] = lo[i] * wa + hi[i] * wb;
}

#if defined(GM_FMA_X86)
__attribute__((target("fma"))) GM_VECTORIZE static void mix_fused(const float *lo, const float *hi, float wa, float wb,
                                                     float *out, int64_t n)
{
    int64_t i;
    for (i = 0; i < n; i++) out[i] = __builtin_fmaf(hi[i], wb, lo[i] * wa);
}
#elif defined(GM_FMA_ARM)
GM_VECTORIZE static void mix_fused(const float *lo, const float *hi, float wa, float wb, float *out, int64_t n)
{
    int64_t i;
    for (i = 0; i < n; i++) out[i] = __builtin_fmaf(hi[i], wb, lo[i] * wa);
}
#endif

/* 1 when this CPU has hardware fused multiply-adds (then fused mixing is available). */
int gm_fused_available(void)
{
#if defined(GM_FMA_X86)
    __builtin_cpu_init();
    return __builtin_cpu_supports("fma") ? 1 : 0;
#elif defined(GM_FMA_ARM)
    return 1;
#else
    return 0;
#endif
}

static int mix(const float *rows, int64_t y_lo, int64_t y_hi, int64_t width, const float *weights, int fused,
               float *out)
{
    const float *lo = rows + y_lo * width, *hi = rows + y_hi * width;
    if (!fused) {
        mix_plain(lo, hi, weights[0], weights[1], out, width);
        return 0;
    }
#if defined(GM_FMA_X86) || defined(GM_FMA_ARM)
    mix_fused(lo, hi, weights[0], weights[1], out, width);
    return 0;
#else
    return 4;
#endif
}

/* 1 if one of n values is above level (a line without is skipped). */
GM_VECTORIZE static int any_above(const float *v, int64_t n, float level)
{
    int any = 0;
    int64_t i;
    for (i = 0; i < n; i++) any |= v[i] > level;
    return any;
}

/* rows [maps, h, width] -> out [maps, height, width] (lo, hi: [height] row indices; weights
 * [height, 2]: their weights). Used to check the arithmetic against torch's upsample. */
int gm_interpolate(const float *rows, int64_t maps, int64_t h, int64_t width, int64_t height, const int32_t *lo,
                   const int32_t *hi, const float *weights, int fused, float *out)
{
    int64_t m, y;
    int error;
    for (m = 0; m < maps; m++)
        for (y = 0; y < height; y++)
            if ((error = mix(rows + m * h * width, lo[y], hi[y], width, weights + 2 * y, fused,
                             out + (m * height + y) * width)))
                return error;
    return 0;
}

/* ---- gm_count_levels: iqr mode's level count of one unit (thresholds.level_counts) ----------
 * For every upsampled value v above the unit's lowest level, its bucket s (the number of the
 * unit's distinct levels strictly below v) is found exactly as LevelBuckets.bucketize does in
 * torch, with the same single-precision operations in the same order:
 *     t = min(v - lowest, span);  q = (int32) (t * scale);  s = table[q];  s += v > distinct[s];
 * and counts[s * width + code] is incremented, code being the pixel's label code. Values at or
 * below the lowest level are bucket 0, which is never needed and not counted. Four int32
 * sub-histograms (scratch, 4 * buckets * width values) take alternate pixels, so that runs of
 * neighbouring pixels with the same bucket and label do not wait on one memory cell; they are
 * added to the int64 counts at the end (fewer than 2^31 values per call).
 */
typedef struct {
    float lowest, span, scale;
    const int32_t *table;
    int64_t cells;
    const float *distinct;
    int64_t width;
    int32_t *h[4];
} level_count;

static int count_levels_of(const level_count *c, const float *values, const int32_t *codes, int64_t n)
{
    /* locals: the compiler keeps them in registers across the histogram stores */
    const float lowest = c->lowest, span = c->span, scale = c->scale;
    const int32_t *table = c->table;
    const float *distinct = c->distinct;
    const int64_t cells = c->cells, width = c->width;
    int32_t *h0 = c->h[0], *h1 = c->h[1], *h2 = c->h[2], *h3 = c->h[3];
    int64_t i = 0;
#define GM_COUNT(k, h)                                      \
    {                                                       \
        const float v = values[i + k];                      \
        if (v > lowest) {                                   \
            float t = v - lowest;                           \
            int32_t q, s, code;                             \
            if (t > span) t = span;                         \
            q = (int32_t)(t * scale);                       \
            if (q < 0 || q >= cells) return 3;              \
            s = table[q];                                   \
            s += v > distinct[s];                           \
            code = codes[i + k];                            \
            if (code < 0 || code >= width) return 2;        \
            h[(int64_t)s * width + code]++;                 \
        }                                                   \
    }
    for (; i + 4 <= n; i += 4) {
        GM_COUNT(0, h0) GM_COUNT(1, h1) GM_COUNT(2, h2) GM_COUNT(3, h3)
    }
    for (; i < n; i++) GM_COUNT(0, h0)
#undef GM_COUNT
    return 0;
}

static void level_count_start(level_count *c, float lowest, float span, float scale, const int32_t *table,
                              int64_t cells, const float *distinct, int64_t buckets, int64_t width,
                              int32_t *scratch)
{
    const int64_t size = buckets * width;
    int k;
    c->lowest = lowest;
    c->span = span;
    c->scale = scale;
    c->table = table;
    c->cells = cells;
    c->distinct = distinct;
    c->width = width;
    for (k = 0; k < 4; k++) c->h[k] = scratch + k * size;
    memset(scratch, 0, (size_t)(4 * size) * sizeof(int32_t));
}

static void level_count_finish(const level_count *c, int64_t buckets, int64_t *counts)
{
    const int64_t size = buckets * c->width;
    int64_t j;
    for (j = 0; j < size; j++) counts[j] += (int64_t)c->h[0][j] + c->h[1][j] + c->h[2][j] + c->h[3][j];
}

/* values [n] (upsampled), codes [n]. */
int gm_count_levels(const float *values, int64_t n, float lowest, float span, float scale,
                    const int32_t *table, int64_t cells, const float *distinct, int64_t buckets,
                    const int32_t *codes, int64_t width, int64_t *counts, int32_t *scratch)
{
    level_count c;
    int error;
    if (n < 0 || n > INT32_MAX) return 1;
    level_count_start(&c, lowest, span, scale, table, cells, distinct, buckets, width, scratch);
    if ((error = count_levels_of(&c, values, codes, n))) return error;
    level_count_finish(&c, buckets, counts);
    return 0;
}

/* The same from rows [maps, h, width] mixed into lines of an upsampled [maps, height, width]
 * (codes [maps * height * width]); line: a buffer of width floats. */
int gm_count_levels_rows(const float *rows, int64_t maps, int64_t h, int64_t width, int64_t height,
                         const int32_t *lo, const int32_t *hi, const float *weights, int fused, float lowest,
                         float span, float scale, const int32_t *table, int64_t cells, const float *distinct,
                         int64_t buckets, const int32_t *codes, int64_t code_width, int64_t *counts,
                         int32_t *scratch, float *line)
{
    level_count c;
    int64_t m, y;
    int error;
    if (maps * height * width > INT32_MAX) return 1;
    level_count_start(&c, lowest, span, scale, table, cells, distinct, buckets, code_width, scratch);
    for (m = 0; m < maps; m++)
        for (y = 0; y < height; y++) {
            if ((error = mix(rows + m * h * width, lo[y], hi[y], width, weights + 2 * y, fused, line))) return error;
            if (!any_above(line, width, lowest)) continue; /* all in bucket 0 */
            if ((error = count_levels_of(&c, line, codes + (m * height + y) * width, width))) return error;
        }
    level_count_finish(&c, buckets, counts);
    return 0;
}

/* ---- gm_count_above: counts at known thresholds (thresholds.sparse_tally.tally_above) -------
 * For every value above its unit's threshold: per_image[unit * images + image] += 1, and
 * intersection[unit * concepts + label] += 1 for the label of each of the depth maps (labels
 * [images, depth, pixels], repeats already 0). Runs of 16 values with none above are skipped
 * after one comparison pass.
 */
static int count_above_of(const float *v, int64_t n, float level, const int32_t *labels, int64_t depth,
                          int64_t pixels, int64_t concepts, int64_t *row, int64_t *on)
{
    int64_t p, k, d;
    for (p = 0; p < n; p += 16) {
        const int64_t stop = p + 16 < n ? p + 16 : n;
        int any = 0;
        for (k = p; k < stop; k++) any |= v[k] > level;
        if (!any) continue;
        for (k = p; k < stop; k++) {
            if (!(v[k] > level)) continue;
            (*on)++;
            for (d = 0; d < depth; d++) {
                const int32_t c = labels[d * pixels + k];
                if (c < 0 || c >= concepts) return 2;
                row[c]++;
            }
        }
    }
    return 0;
}

/* values [images, units, pixels] (upsampled maps of a group of units). */
int gm_count_above(const float *values, int64_t images, int64_t units, int64_t pixels, const float *thresholds,
                   const int32_t *labels, int64_t depth, int64_t concepts, int64_t *per_image,
                   int64_t *intersection)
{
    int64_t image, unit;
    int error;
    for (image = 0; image < images; image++)
        for (unit = 0; unit < units; unit++) {
            int64_t on = 0;
            if ((error = count_above_of(values + (image * units + unit) * pixels, pixels, thresholds[unit],
                                        labels + image * depth * pixels, depth, pixels, concepts,
                                        intersection + unit * concepts, &on)))
                return error;
            per_image[unit * images + image] += on;
        }
    return 0;
}

/* The same from rows [images, units, h, width] mixed into lines of [images, units, height, width]. */
int gm_count_above_rows(const float *rows, int64_t images, int64_t units, int64_t h, int64_t width,
                        int64_t height, const int32_t *lo, const int32_t *hi, const float *weights, int fused,
                        const float *thresholds, const int32_t *labels, int64_t depth, int64_t concepts,
                        int64_t *per_image, int64_t *intersection, float *line)
{
    const int64_t pixels = height * width;
    int64_t image, unit, y;
    int error;
    for (image = 0; image < images; image++)
        for (unit = 0; unit < units; unit++) {
            const float *maps = rows + (image * units + unit) * h * width;
            int64_t on = 0;
            for (y = 0; y < height; y++) {
                if ((error = mix(maps, lo[y], hi[y], width, weights + 2 * y, fused, line))) return error;
                if (!any_above(line, width, thresholds[unit])) continue; /* nothing on in this line */
                if ((error = count_above_of(line, width, thresholds[unit], labels + image * depth * pixels + y * width,
                                            depth, pixels, concepts, intersection + unit * concepts, &on)))
                    return error;
            }
            per_image[unit * images + image] += on;
        }
    return 0;
}
