/* The [PART] rows of a Multi-Head Auto-Alignment layer on a CPU as C functions, forward and backward (issue #26).

   What part_rows.part_rows_only computes with ~45 small PyTorch operators per layer, for float32 q, k, v and the
   default assignment (Sinkhorn-Knopp on cosine scores, exp domain, no final column step, argmax rounding per group):
   image by image, ONE pass over the patch keys gives the products q_p . k_n that feed both the assignment and the
   attention logits, then per head the Sinkhorn, the rounding and the softmax over each part's patches, then one
   pass over the values gives the rows. The steps are those of the PyTorch code, so results agree to float rounding;
   see part_rows.py for the why of each. The backward (at the end) recomputes the probabilities. Plain C (no Python
   or PyTorch headers): compiled on first use by the system compiler (cpu_part_rows.py) and called through ctypes,
   which releases the GIL; (image, head) pairs are split over PyTorch's OpenMP threads. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define MAX_PARTS 64

typedef struct {
    const float *q, *k, *v;           /* element (0, 0, 0, 0) of the (B, H, L, d) views; d has stride 1 */
    int64_t q_sb, q_sh, q_sl, k_sb, k_sh, k_sl, v_sb, v_sh, v_sl;
    float *out;                       /* element (0, 0, 0, 0) of the (B, P, H, d) rows written */
    int64_t o_sb, o_sl, o_sh;
    uint8_t *assigned;                /* (B, H, P, N), contiguous */
    const int64_t *group_sizes;       /* parts per group, parts ordered group by group */
    int64_t batch, heads, dim, parts, patches, groups, iters, self_key_always;
    float epsilon, scale;
} Job;

/* exp for x <= 0 (Sinkhorn kernels, softmax numerators): Cody-Waite range reduction and a degree-6 polynomial,
   written branch-free so the compiler vectorises the loops that call it; relative error ~2e-7. Below -87 (and for
   NaN) it gives e^-87 ~ 1.6e-38, never 0 (callers zero what is masked out themselves). */
static inline float exp_nonpositive(float x) {
    x = x >= -87.0f ? x : -87.0f;
    /* round to nearest by the 1.5 * 2^23 trick (exact without -ffast-math), which vectorises where roundf does not */
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3333452301e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale = { .i = ((int32_t)n + 127) << 23 };
    return p * scale.f;
}

/* 8 floats as one vector (GCC / Clang vector extensions: AVX or SSE pairs, whatever the target has), loaded from
   and stored to unaligned addresses */
typedef float Vec8 __attribute__((vector_size(32), aligned(4), may_alias));

static inline float sum8(Vec8 x) {
    return ((x[0] + x[4]) + (x[1] + x[5])) + ((x[2] + x[6]) + (x[3] + x[7]));
}

/* a . b over d floats: eight lanes of partial sums, then the lanes */
static inline float dot(const float *a, const float *b, int64_t d) {
    Vec8 lanes = {0};
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) lanes += *(const Vec8 *)(a + i) * *(const Vec8 *)(b + i);
    float sum = sum8(lanes);
    for (; i < d; i++) sum += a[i] * b[i];
    return sum;
}

/* One part's softmax numerators over its assigned patches (``mask``) and, where ``own_logit`` is finite, its own
   key: ``row`` holds the logits on entry (any value off the mask) and exp(logit - max) on return (0 off the mask).
   Returns their sum; the own key's numerator goes to ``own_weight``. A part with no patch and no own key attends to
   its own key alone (the plain path's rule): any finite logit gives it probability 1. */
static float part_softmax(float *row, const uint8_t *mask, int64_t n, float own_logit, float *own_weight) {
    float top = own_logit;
#pragma omp simd reduction(max:top)
    for (int64_t j = 0; j < n; j++) top = mask[j] && row[j] > top ? row[j] : top;
    if (top == -INFINITY) top = own_logit = 0.0f;
    for (int64_t j = 0; j < n; j++) row[j] = mask[j] ? exp_nonpositive(row[j] - top) : 0.0f;
    float sum = 0.0f;
#pragma omp simd reduction(+:sum)
    for (int64_t j = 0; j < n; j++) sum += row[j];
    *own_weight = own_logit == -INFINITY ? 0.0f : exp_nonpositive(own_logit - top);
    return sum + *own_weight;
}

/* Per head, from its products and key norms: the cosine Sinkhorn-Knopp per group as scaling vectors u (rows) and
   v (columns), the rounding into ``assigned``, then each part's unnormalised softmax weights over its patches in
   ``weights`` (0 elsewhere) and their sum in ``sums``. ``own`` (P): the parts' own-key logits when
   self_key_always; on return their numerators (see part_softmax). */
static void assign_and_weigh(const Job *job, const float *q, const float *products, const float *column_norms,
                             float *weights, float *v_scale, int32_t *best, uint8_t *assigned, float *own,
                             float *sums) {
    const int64_t d = job->dim, parts = job->parts, n = job->patches;
    const float tiny = FLT_MIN;
    float *kernel = weights;  /* the Sinkhorn kernel, then (part by part) the softmax weights */
    int64_t start = 0;
    for (int64_t g = 0; g < job->groups; g++) {
        const int64_t size = job->group_sizes[g];
        const float row_mass = (float)n / (float)size;
        float u[MAX_PARTS];
        for (int64_t p = start; p < start + size; p++) {
            float norm = sqrtf(dot(q + (1 + p) * job->q_sl, q + (1 + p) * job->q_sl, d));
            norm = norm < 1e-12f ? 1e-12f : norm;
            const float row_scale = (1.0f / job->epsilon) / norm;
            float *row = kernel + p * n;
            for (int64_t j = 0; j < n; j++) row[j] = products[p * n + j] * row_scale / column_norms[j];
            float top = -INFINITY;
#pragma omp simd reduction(max:top)
            for (int64_t j = 0; j < n; j++) top = row[j] > top ? row[j] : top;
            for (int64_t j = 0; j < n; j++) row[j] = exp_nonpositive(row[j] - top);
            float sum = 0.0f;
#pragma omp simd reduction(+:sum)
            for (int64_t j = 0; j < n; j++) sum += row[j];
            u[p - start] = row_mass / sum;
        }
        for (int64_t it = 0; it < job->iters; it++) {
            if (it) {
                for (int64_t p = start; p < start + size; p++) {
                    const float *row = kernel + p * n;
                    float sum = 0.0f;
#pragma omp simd reduction(+:sum)
                    for (int64_t j = 0; j < n; j++) sum += row[j] * v_scale[j];
                    u[p - start] = row_mass / (sum < tiny ? tiny : sum);
                }
            }
            if (it < job->iters - 1) {
                for (int64_t j = 0; j < n; j++) v_scale[j] = 0.0f;
                for (int64_t p = start; p < start + size; p++) {
                    const float *row = kernel + p * n;
                    for (int64_t j = 0; j < n; j++) v_scale[j] += u[p - start] * row[j];
                }
                for (int64_t j = 0; j < n; j++) v_scale[j] = 1.0f / (v_scale[j] < tiny ? tiny : v_scale[j]);
            }
        }
        /* rounding: each patch to the part of largest u_p K_pn in this group (the first on a tie) */
        float *best_value = v_scale;  /* the column scaling is not needed any more */
        for (int64_t j = 0; j < n; j++) best_value[j] = u[0] * kernel[start * n + j];
        for (int64_t j = 0; j < n; j++) best[j] = start;
        for (int64_t p = start + 1; p < start + size; p++) {
            const float *row = kernel + p * n;
            const float weight = u[p - start];
            for (int64_t j = 0; j < n; j++) {
                const float value = weight * row[j];
                const int better = value > best_value[j];
                best_value[j] = better ? value : best_value[j];
                best[j] = better ? (int32_t)p : best[j];
            }
        }
        for (int64_t p = start; p < start + size; p++)
            for (int64_t j = 0; j < n; j++) assigned[p * n + j] = best[j] == p;
        start += size;
    }

    /* each part's softmax over its assigned patches (and its own key: always, or when it has none) */
    for (int64_t p = 0; p < parts; p++) {
        float *row = weights + p * n;
        for (int64_t j = 0; j < n; j++) row[j] = products[p * n + j] * job->scale;
        sums[p] = part_softmax(row, assigned + p * n, n, job->self_key_always ? own[p] : -INFINITY, &own[p]);
    }
}

/* All heads [first_head, last_head) of image b. Keys and values are read row by row, every head of a row together
   (a row's heads are adjacent in memory), rather than head by head down the rows. */
static void one_image(const void *job_, int64_t b, int64_t first_head, int64_t last_head, float *scratch) {
    const Job *job = (const Job *)job_;
    const int64_t d = job->dim, parts = job->parts, n = job->patches, heads = last_head - first_head;
    float *products = scratch;                        /* (heads, P, N) */
    float *weights = products + heads * parts * n;    /* (heads, P, N) */
    float *column_norms = weights + heads * parts * n; /* (heads, N) */
    float *rows = column_norms + heads * n;           /* (heads, P, d) */
    float *v_scale = rows + heads * parts * d;        /* (N) */
    float *own = v_scale + n;                         /* (heads, P) */
    float *sums = own + heads * parts;                /* (heads, P) */
    int32_t *best = (int32_t *)(sums + heads * parts); /* (N) */
    const float *q_image = job->q + b * job->q_sb, *k_image = job->k + b * job->k_sb;
    const float *v_image = job->v + b * job->v_sb;

    /* products q_p . k_n of the [PART] queries (rows 1..P) and the patch keys (rows 1+P..), and the key norms */
    for (int64_t j = 0; j < n; j++) {
        const float *key_row = k_image + (1 + parts + j) * job->k_sl;
        for (int64_t h = 0; h < heads; h++) {
            const float *key = key_row + (first_head + h) * job->k_sh;
            const float *q = q_image + (first_head + h) * job->q_sh;
            float norm = sqrtf(dot(key, key, d));
            column_norms[h * n + j] = norm < 1e-12f ? 1e-12f : norm;
            for (int64_t p = 0; p < parts; p++)
                products[(h * parts + p) * n + j] = dot(q + (1 + p) * job->q_sl, key, d);
        }
    }
    for (int64_t h = 0; h < heads; h++) {
        const float *q = q_image + (first_head + h) * job->q_sh;
        if (job->self_key_always)
            for (int64_t p = 0; p < parts; p++)
                own[h * parts + p] = dot(q + (1 + p) * job->q_sl,
                                         k_image + (first_head + h) * job->k_sh + (1 + p) * job->k_sl, d) * job->scale;
        uint8_t *assigned = job->assigned + (b * job->heads + first_head + h) * parts * n;
        assign_and_weigh(job, q, products + h * parts * n, column_norms + h * n, weights + h * parts * n, v_scale,
                         best, assigned, own + h * parts, sums + h * parts);
    }

    /* the rows: each patch's value, row by row, into the parts that weigh it */
    for (int64_t i = 0; i < heads * parts * d; i++) rows[i] = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        const float *value_row = v_image + (1 + parts + j) * job->v_sl;
        for (int64_t h = 0; h < heads; h++) {
            const float *value = value_row + (first_head + h) * job->v_sh;
            for (int64_t p = 0; p < parts; p++) {
                const float w = weights[(h * parts + p) * n + j];
                if (w == 0.0f) continue;
                float *row = rows + (h * parts + p) * d;
                for (int64_t i = 0; i < d; i++) row[i] += w * value[i];
            }
        }
    }
    for (int64_t h = 0; h < heads; h++) {
        for (int64_t p = 0; p < parts; p++) {
            const float *own_value = v_image + (first_head + h) * job->v_sh + (1 + p) * job->v_sl;
            const float sum = sums[h * parts + p], own_weight = own[h * parts + p];
            const float *row = rows + (h * parts + p) * d;
            float *out = job->out + b * job->o_sb + p * job->o_sl + (first_head + h) * job->o_sh;
            for (int64_t i = 0; i < d; i++) out[i] = (row[i] + own_weight * own_value[i]) / sum;
        }
    }
}

/* Runs ``image`` over the (image, head) pairs [first, last), image by image, with one scratch buffer of ``floats``
   floats; 1 when out of memory. */
typedef void (*ImageFunction)(const void *job, int64_t b, int64_t first_head, int64_t last_head, float *scratch);

static int image_by_image(const void *job, int64_t heads, size_t floats, int64_t first, int64_t last,
                          ImageFunction image) {
    float *scratch = (float *)malloc(sizeof(float) * floats);
    if (!scratch) return 1;
    for (int64_t pair = first; pair < last;) {
        const int64_t b = pair / heads, h = pair % heads;
        const int64_t end = (b + 1) * heads < last ? (b + 1) * heads : last;
        image(job, b, h, h + (end - pair), scratch);
        pair = end;
    }
    free(scratch);
    return 0;
}

/* The batch x heads (image, head) pairs split into ``threads`` runs of the OpenMP runtime's team: built against the
   runtime PyTorch has loaded, this is PyTorch's own thread pool, whose workers are awake between operators (a thread
   of our own would share a core with one of them spinning); built without OpenMP, the runs go one after the other.
   Returns 0, or 1 when out of memory (nothing is then guaranteed written). */
static int over_threads(const void *job, int64_t batch, int64_t heads, size_t floats, int64_t threads,
                        ImageFunction image) {
    const int64_t pairs = batch * heads;
    if (threads > pairs) threads = pairs;
    if (threads < 1) threads = 1;
    int failed = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(|:failed)
    for (int64_t t = 0; t < threads; t++)
        failed |= image_by_image(job, heads, floats, pairs * t / threads, pairs * (t + 1) / threads, image);
    return failed;
}

int part_rows_cpu(const Job *job, int64_t threads) {
    if (job->parts > MAX_PARTS) return 1;
    const int64_t heads = job->heads, parts = job->parts, n = job->patches;
    const size_t floats = (size_t)(2 * heads * parts * n + heads * n + heads * parts * job->dim + n
                                   + 2 * heads * parts + n);
    return over_threads(job, job->batch, heads, floats, threads, one_image);
}

/* ---- The backward: softmax attention's backward for the P rows, probabilities recomputed from q, k and the
   assignment (what part_rows._part_rows_backward_pytorch computes), written into whole gradients of q, k, v. ---- */

typedef struct {
    const float *q, *k, *v;           /* element (0, 0, 0, 0) of the (B, H, L, d) views; d has stride 1 */
    int64_t q_sb, q_sh, q_sl, k_sb, k_sh, k_sl, v_sb, v_sh, v_sl;
    const float *grad_out;            /* the gradient of the (B, L, H, d) merged output */
    int64_t g_sb, g_sl, g_sh;
    const uint8_t *assigned;          /* (B, H, P, N), contiguous */
    float *grad_q, *grad_k, *grad_v;  /* (B, L, H, d), contiguous: every element written */
    int64_t batch, heads, dim, parts, patches, self_key_always;
    float scale;
} BackwardJob;

static void one_image_backward(const void *job_, int64_t b, int64_t first_head, int64_t last_head, float *scratch) {
    const BackwardJob *job = (const BackwardJob *)job_;
    const int64_t d = job->dim, parts = job->parts, n = job->patches, heads = last_head - first_head;
    const int64_t seq_len = 1 + parts + n, width = job->heads * d;  /* a (B, L, H, d) gradient's row */
    float *probs = scratch;                            /* (heads, P, N): logits (assigned only), then probabilities */
    float *grad_logits = probs + heads * parts * n;    /* (heads, P, N): grad of probs, then of logits */
    float *own = grad_logits + heads * parts * n;      /* (heads, P): own-key probability */
    float *own_grad = own + heads * parts;             /* (heads, P): grad of own prob, then of own logit */
    float *grad_q_rows = own_grad + heads * parts;     /* (heads, P, d) */
    const float *q_image = job->q + b * job->q_sb, *k_image = job->k + b * job->k_sb;
    const float *v_image = job->v + b * job->v_sb, *g_image = job->grad_out + b * job->g_sb;
    const uint8_t *assigned = job->assigned + (b * job->heads + first_head) * parts * n;

    /* logits of the assigned patches (keys row by row), and of the own keys */
    for (int64_t j = 0; j < n; j++) {
        const float *key_row = k_image + (1 + parts + j) * job->k_sl;
        for (int64_t h = 0; h < heads; h++) {
            const float *key = key_row + (first_head + h) * job->k_sh;
            const float *q = q_image + (first_head + h) * job->q_sh;
            for (int64_t p = 0; p < parts; p++) {
                const int64_t at = (h * parts + p) * n + j;
                if (assigned[at]) probs[at] = dot(q + (1 + p) * job->q_sl, key, d) * job->scale;
            }
        }
    }
    /* softmax per part over its patches and own key (always, or when it has no patch) */
    for (int64_t h = 0; h < heads; h++) {
        const float *q = q_image + (first_head + h) * job->q_sh, *k = k_image + (first_head + h) * job->k_sh;
        for (int64_t p = 0; p < parts; p++) {
            float *row = probs + (h * parts + p) * n;
            const float own_logit = job->self_key_always
                ? dot(q + (1 + p) * job->q_sl, k + (1 + p) * job->k_sl, d) * job->scale : -INFINITY;
            float own_weight;
            const float sum = part_softmax(row, assigned + (h * parts + p) * n, n, own_logit, &own_weight);
            for (int64_t j = 0; j < n; j++) row[j] /= sum;
            own[h * parts + p] = own_weight / sum;
        }
    }
    /* grad of the probabilities: each part's output gradient . each value it weighs (values row by row) */
    for (int64_t j = 0; j < n; j++) {
        const float *value_row = v_image + (1 + parts + j) * job->v_sl;
        for (int64_t h = 0; h < heads; h++) {
            const float *value = value_row + (first_head + h) * job->v_sh;
            for (int64_t p = 0; p < parts; p++) {
                const int64_t at = (h * parts + p) * n + j;
                const float *grad_row = g_image + (1 + p) * job->g_sl + (first_head + h) * job->g_sh;
                grad_logits[at] = assigned[at] ? dot(grad_row, value, d) : 0.0f;
            }
        }
    }
    /* grad of the logits: p * (g - sum(p g)) * scale; and the [PART] queries' gradient rows start at 0 */
    for (int64_t h = 0; h < heads; h++) {
        for (int64_t p = 0; p < parts; p++) {
            float *row_probs = probs + (h * parts + p) * n, *row_grad = grad_logits + (h * parts + p) * n;
            const float *grad_row = g_image + (1 + p) * job->g_sl + (first_head + h) * job->g_sh;
            const float *own_value = v_image + (first_head + h) * job->v_sh + (1 + p) * job->v_sl;
            const float own_prob = own[h * parts + p];
            const float own_g = own_prob != 0.0f ? dot(grad_row, own_value, d) : 0.0f;
            float weighted = own_prob * own_g;
#pragma omp simd reduction(+:weighted)
            for (int64_t j = 0; j < n; j++) weighted += row_probs[j] * row_grad[j];
            for (int64_t j = 0; j < n; j++) row_grad[j] = row_probs[j] * (row_grad[j] - weighted) * job->scale;
            own_grad[h * parts + p] = own_prob * (own_g - weighted) * job->scale;
            float *grad_q = grad_q_rows + (h * parts + p) * d;
            for (int64_t i = 0; i < d; i++) grad_q[i] = 0.0f;
        }
    }
    /* the gradients of the patch keys and values (rows written whole), and the queries' (keys row by row) */
    for (int64_t j = 0; j < n; j++) {
        const int64_t row = 1 + parts + j;
        const float *key_row = k_image + row * job->k_sl;
        for (int64_t h = 0; h < heads; h++) {
            const float *key = key_row + (first_head + h) * job->k_sh;
            const float *q = q_image + (first_head + h) * job->q_sh;
            float *grad_k = job->grad_k + (b * seq_len + row) * width + (first_head + h) * d;
            float *grad_v = job->grad_v + (b * seq_len + row) * width + (first_head + h) * d;
            for (int64_t i = 0; i < d; i++) grad_k[i] = grad_v[i] = 0.0f;
            for (int64_t p = 0; p < parts; p++) {
                const int64_t at = (h * parts + p) * n + j;
                if (!assigned[at]) continue;
                const float prob = probs[at];
                const float grad_logit = grad_logits[at];
                const float *q_part = q + (1 + p) * job->q_sl;
                const float *grad_row = g_image + (1 + p) * job->g_sl + (first_head + h) * job->g_sh;
                float *grad_q = grad_q_rows + (h * parts + p) * d;
                for (int64_t i = 0; i < d; i++) {
                    grad_k[i] += grad_logit * q_part[i];
                    grad_v[i] += prob * grad_row[i];
                    grad_q[i] += grad_logit * key[i];
                }
            }
        }
    }
    /* CLS and [PART] rows: the queries' gradient, the own keys' and values' terms, zeros elsewhere */
    for (int64_t h = 0; h < heads; h++) {
        const float *q = q_image + (first_head + h) * job->q_sh, *k = k_image + (first_head + h) * job->k_sh;
        for (int64_t row = 0; row < 1 + parts; row++) {
            const int64_t offset = (b * seq_len + row) * width + (first_head + h) * d;
            float *grad_q = job->grad_q + offset, *grad_k = job->grad_k + offset, *grad_v = job->grad_v + offset;
            if (row == 0) {
                for (int64_t i = 0; i < d; i++) grad_q[i] = grad_k[i] = grad_v[i] = 0.0f;
                continue;
            }
            const int64_t p = row - 1;
            const float own_prob = own[h * parts + p], own_grad_logit = own_grad[h * parts + p];
            const float *q_part = q + row * job->q_sl, *own_key = k + row * job->k_sl;
            const float *grad_row = g_image + row * job->g_sl + (first_head + h) * job->g_sh;
            const float *grad_q_row = grad_q_rows + (h * parts + p) * d;
            for (int64_t i = 0; i < d; i++) {
                grad_q[i] = grad_q_row[i] + own_grad_logit * own_key[i];
                grad_k[i] = own_grad_logit * q_part[i];
                grad_v[i] = own_prob * grad_row[i];
            }
        }
    }
    /* the rows of the patch queries get no gradient from the [PART] rows */
    for (int64_t j = 0; j < n; j++) {
        float *grad_q = job->grad_q + (b * seq_len + 1 + parts + j) * width + first_head * d;
        for (int64_t i = 0; i < heads * d; i++) grad_q[i] = 0.0f;
    }
}

int part_rows_backward_cpu(const BackwardJob *job, int64_t threads) {
    const int64_t heads = job->heads, parts = job->parts;
    const size_t floats = (size_t)(2 * heads * parts * job->patches + 2 * heads * parts + heads * parts * job->dim);
    return over_threads(job, job->batch, heads, floats, threads, one_image_backward);
}
