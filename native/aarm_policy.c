/*
 * aarm_policy.c - every path glob of one action type matched in one pass.
 *
 * Why: the policy engine decides on every intercepted syscall; testing each
 * rule's path globs one Python regex at a time cost most of a decision.  Here
 * all globs of an action type form one NFA over code points (built by
 * aarm_sandbox/policy/matcher.py from the same glob parse as the Python
 * regexes), and a DFA is built from it lazily: a path walks the DFA one table
 * lookup per code point, and a state not built yet is made by the subset
 * construction from the NFA.  The final state's set of matching patterns
 * ("accept set") is interned and returned as a small id the caller memoises
 * its decision on.  Linear in the path length, no backtracking.
 *
 * Memory: the DFA states live under a budget; when the budget is reached the
 * whole DFA cache is flushed and the walk starts again.  A walk that needs a
 * second flush (a path so long that its own states outgrow the budget)
 * returns -1 and the caller decides with its Python regexes instead: this
 * code never answers "no match" because it ran out of room.
 *
 * See aarm_policy.h for the contracts.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "aarm_policy.h"

#define PM_FULL (-2)        /* the DFA cache reached its budget: flush and retry */
#define PM_FAIL (-3)        /* out of memory or accept-set limit: cannot answer */

#define CLS_OTHER 0u        /* a code point no glob names literally */
#define CLS_SLASH 1u        /* '/' */

#define MAX_NODES (1u << 28)
#define MAX_ACCEPT_SETS (1u << 20)
#define MAX_ACCEPT_IDS ((size_t)1 << 24)

struct pm_state {
    uint32_t set_off;       /* the state's NFA nodes: pool[set_off .. set_off + set_len) */
    uint32_t set_len;
    uint32_t hash;
    int32_t accept;         /* accept-set id */
};

struct aarm_pm {
    pthread_mutex_t lock;
    /* the NFA */
    uint32_t nnodes, nstarts, npatterns;
    int32_t *op, *arg, *next1, *next2;
    uint32_t *starts;
    uint32_t *node_cls;             /* CHAR nodes: the class of their code point */
    /* code point -> class */
    uint32_t ncls;
    uint32_t cls_lo[256];
    uint32_t *hi_cp, *hi_cls, nhi;  /* code points >= 256, sorted */
    /* the DFA cache */
    struct pm_state *states;
    uint32_t nstates, states_cap;
    int32_t *trans;                 /* nstates x ncls: next state, -1 = not built yet */
    size_t trans_cap;
    uint32_t *pool;
    size_t pool_len, pool_cap;
    int32_t *htab;                  /* node set -> state, open addressing, -1 = empty */
    uint32_t hcap;
    int32_t start, dead;
    size_t budget;
    uint64_t flushes;
    /* scratch for the subset construction */
    uint32_t *mark, gen;
    uint32_t *stack, *scratch, *pats;
    uint64_t *bits;                 /* nnodes bits, all zero between closures */
    /* accept sets: never flushed, so ids handed out stay valid */
    uint32_t *acc_pool;
    size_t acc_len, acc_cap;
    uint32_t *acc_off, *acc_n, *acc_hash;
    uint32_t nacc, acc_sets_cap;
    int32_t *acc_htab;
    uint32_t acc_hcap;
};

static uint32_t hash_ids(const uint32_t *v, uint32_t n)
{
    uint32_t h = 2166136261u ^ n;
    for (uint32_t i = 0; i < n; i++) {
        h ^= v[i];
        h *= 16777619u;
        h ^= h >> 15;
    }
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    return h;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Grow *p (elements of `size` bytes) to hold at least `need`; 0 on success. */
static int grow(void **p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 16;
    while (n < need)
        n *= 2;
    void *q = realloc(*p, n * size);
    if (q == NULL)
        return -1;
    *p = q;
    *cap = n;
    return 0;
}

static uint32_t cls_of(const struct aarm_pm *pm, uint32_t cp)
{
    if (cp < 256)
        return pm->cls_lo[cp];
    uint32_t lo = 0, hi = pm->nhi;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (pm->hi_cp[mid] < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (lo < pm->nhi && pm->hi_cp[lo] == cp) ? pm->hi_cls[lo] : CLS_OTHER;
}

/* ---- accept sets ---- */

/* Rebuild an open-addressing index (slots hold entry numbers, -1 empty) of n entries
 * with ncap slots (a power of two); the accept-set and DFA-state tables share it. */
static int reindex(int32_t **tab, uint32_t *cap, uint32_t ncap, uint32_t n,
                   uint32_t (*hash_at)(const struct aarm_pm *, uint32_t),
                   const struct aarm_pm *pm)
{
    int32_t *t = malloc((size_t)ncap * sizeof *t);
    if (t == NULL)
        return -1;
    memset(t, 0xff, (size_t)ncap * sizeof *t);
    for (uint32_t e = 0; e < n; e++) {
        uint32_t i = hash_at(pm, e) & (ncap - 1);
        while (t[i] >= 0)
            i = (i + 1) & (ncap - 1);
        t[i] = (int32_t)e;
    }
    free(*tab);
    *tab = t;
    *cap = ncap;
    return 0;
}

static uint32_t acc_hash_at(const struct aarm_pm *pm, uint32_t a)
{
    return pm->acc_hash[a];
}

static int acc_rehash(struct aarm_pm *pm, uint32_t ncap)
{
    return reindex(&pm->acc_htab, &pm->acc_hcap, ncap, pm->nacc, acc_hash_at, pm);
}

/* The id of the set pats[0..n) (sorted, distinct); PM_FAIL past the limits. */
static int32_t acc_intern(struct aarm_pm *pm, const uint32_t *pats, uint32_t n)
{
    uint32_t h = hash_ids(pats, n), mask = pm->acc_hcap - 1;
    uint32_t i = h & mask;
    for (; pm->acc_htab[i] >= 0; i = (i + 1) & mask) {
        uint32_t a = (uint32_t)pm->acc_htab[i];
        if (pm->acc_hash[a] == h && pm->acc_n[a] == n &&
            (n == 0 || memcmp(pm->acc_pool + pm->acc_off[a], pats, (size_t)n * 4) == 0))
            return (int32_t)a;
    }
    if (pm->nacc >= MAX_ACCEPT_SETS || pm->acc_len + n > MAX_ACCEPT_IDS)
        return PM_FAIL;
    if (pm->nacc + 1 > pm->acc_sets_cap) {
        /* the three arrays grow alike; one that grew while a later one failed is
         * merely larger than acc_sets_cap says */
        size_t c1 = pm->acc_sets_cap, c2 = c1, c3 = c1;
        if (grow((void **)&pm->acc_off, &c1, pm->nacc + 1, 4) ||
            grow((void **)&pm->acc_n, &c2, pm->nacc + 1, 4) ||
            grow((void **)&pm->acc_hash, &c3, pm->nacc + 1, 4))
            return PM_FAIL;
        pm->acc_sets_cap = (uint32_t)c1;
    }
    if (grow((void **)&pm->acc_pool, &pm->acc_cap, pm->acc_len + n, 4))
        return PM_FAIL;
    uint32_t a = pm->nacc;
    pm->acc_off[a] = (uint32_t)pm->acc_len;
    pm->acc_n[a] = n;
    pm->acc_hash[a] = h;
    if (n)
        memcpy(pm->acc_pool + pm->acc_len, pats, (size_t)n * 4);
    pm->acc_len += n;
    pm->nacc++;
    if ((size_t)pm->nacc * 2 > pm->acc_hcap) {
        if (acc_rehash(pm, pm->acc_hcap * 2)) {
            pm->nacc--;         /* not findable: take it back */
            pm->acc_len -= n;
            return PM_FAIL;
        }
    } else {
        pm->acc_htab[i] = (int32_t)a;
    }
    return (int32_t)a;
}

/* ---- the DFA ---- */

static void closure_begin(struct aarm_pm *pm)
{
    if (++pm->gen == 0) {
        memset(pm->mark, 0, (size_t)pm->nnodes * sizeof *pm->mark);
        pm->gen = 1;
    }
}

static inline void push(struct aarm_pm *pm, uint32_t *sp, uint32_t x)
{
    if (pm->mark[x] != pm->gen) {
        pm->mark[x] = pm->gen;
        pm->stack[(*sp)++] = x;
    }
}

/* Follow the epsilon edges from the pushed nodes; the consuming and MATCH nodes
 * reached land sorted in scratch (by way of a bitmap: no sort).  Returns how many. */
static uint32_t closure_end(struct aarm_pm *pm, uint32_t sp)
{
    uint32_t lo = UINT32_MAX, hi = 0;
    while (sp) {
        uint32_t x = pm->stack[--sp];
        if (pm->op[x] == AARM_PM_SPLIT) {
            push(pm, &sp, (uint32_t)pm->next1[x]);
            push(pm, &sp, (uint32_t)pm->next2[x]);
        } else {
            uint32_t w = x >> 6;
            pm->bits[w] |= (uint64_t)1 << (x & 63);
            if (w < lo)
                lo = w;
            if (w > hi)
                hi = w;
        }
    }
    uint32_t n = 0;
    for (uint32_t w = lo; lo != UINT32_MAX && w <= hi; w++) {
        uint64_t b = pm->bits[w];
        pm->bits[w] = 0;                /* clean for the next closure */
        while (b) {
            pm->scratch[n++] = (w << 6) | (uint32_t)__builtin_ctzll(b);
            b &= b - 1;
        }
    }
    return n;
}

static uint32_t state_hash_at(const struct aarm_pm *pm, uint32_t s)
{
    return pm->states[s].hash;
}

static int rehash_states(struct aarm_pm *pm, uint32_t ncap)
{
    return reindex(&pm->htab, &pm->hcap, ncap, pm->nstates, state_hash_at, pm);
}

static size_t dfa_bytes(const struct aarm_pm *pm, uint32_t nstates, size_t pool_len)
{
    return (size_t)nstates * (sizeof(struct pm_state) + (size_t)pm->ncls * 4) + pool_len * 4 +
           (size_t)pm->hcap * 4;
}

/* The state whose node set is scratch[0..n): found, or made. */
static int32_t intern_state(struct aarm_pm *pm, uint32_t n)
{
    uint32_t h = hash_ids(pm->scratch, n), mask = pm->hcap - 1;
    for (uint32_t i = h & mask; pm->htab[i] >= 0; i = (i + 1) & mask) {
        const struct pm_state *st = &pm->states[pm->htab[i]];
        if (st->hash == h && st->set_len == n &&
            (n == 0 || memcmp(pm->pool + st->set_off, pm->scratch, (size_t)n * 4) == 0))
            return pm->htab[i];
    }
    if (dfa_bytes(pm, pm->nstates + 1, pm->pool_len + n) > pm->budget)
        return PM_FULL;
    if (pm->pool_len + n > UINT32_MAX || pm->nstates >= INT32_MAX / 2)
        return PM_FULL;

    /* the patterns that match when the text ends in this state */
    uint32_t np = 0;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t x = pm->scratch[k];
        if (pm->op[x] == AARM_PM_MATCH)
            pm->pats[np++] = (uint32_t)pm->arg[x];
    }
    qsort(pm->pats, np, sizeof *pm->pats, cmp_u32);
    uint32_t distinct = 0;
    for (uint32_t k = 0; k < np; k++)
        if (distinct == 0 || pm->pats[distinct - 1] != pm->pats[k])
            pm->pats[distinct++] = pm->pats[k];
    int32_t acc = acc_intern(pm, pm->pats, distinct);
    if (acc < 0)
        return PM_FAIL;

    size_t scap = pm->states_cap;
    if (grow((void **)&pm->states, &scap, (size_t)pm->nstates + 1, sizeof *pm->states))
        return PM_FAIL;
    pm->states_cap = (uint32_t)scap;
    if (grow((void **)&pm->trans, &pm->trans_cap, ((size_t)pm->nstates + 1) * pm->ncls,
             sizeof *pm->trans))
        return PM_FAIL;
    if (grow((void **)&pm->pool, &pm->pool_cap, pm->pool_len + n, sizeof *pm->pool))
        return PM_FAIL;
    if (((size_t)pm->nstates + 1) * 2 > pm->hcap && rehash_states(pm, pm->hcap * 2))
        return PM_FAIL;

    uint32_t s = pm->nstates++;
    pm->states[s].set_off = (uint32_t)pm->pool_len;
    pm->states[s].set_len = n;
    pm->states[s].hash = h;
    pm->states[s].accept = acc;
    if (n)
        memcpy(pm->pool + pm->pool_len, pm->scratch, (size_t)n * 4);
    pm->pool_len += n;
    memset(pm->trans + (size_t)s * pm->ncls, 0xff, (size_t)pm->ncls * sizeof *pm->trans);
    mask = pm->hcap - 1;
    uint32_t i = h & mask;
    while (pm->htab[i] >= 0)
        i = (i + 1) & mask;
    pm->htab[i] = (int32_t)s;
    if (n == 0)
        pm->dead = (int32_t)s;
    return (int32_t)s;
}

static int32_t start_state(struct aarm_pm *pm)
{
    uint32_t sp = 0;
    closure_begin(pm);
    for (uint32_t k = 0; k < pm->nstarts; k++)
        push(pm, &sp, pm->starts[k]);
    return intern_state(pm, closure_end(pm, sp));
}

static int32_t step(struct aarm_pm *pm, int32_t s, uint32_t c)
{
    uint32_t off = pm->states[s].set_off, len = pm->states[s].set_len, sp = 0;
    const uint32_t *set = pm->pool + off;
    closure_begin(pm);
    for (uint32_t k = 0; k < len; k++) {
        uint32_t x = set[k];
        switch (pm->op[x]) {
        case AARM_PM_CHAR:
            if (pm->node_cls[x] == c)
                push(pm, &sp, (uint32_t)pm->next1[x]);
            break;
        case AARM_PM_NOTSLASH:
            if (c != CLS_SLASH)
                push(pm, &sp, (uint32_t)pm->next1[x]);
            break;
        case AARM_PM_ANY:
            push(pm, &sp, (uint32_t)pm->next1[x]);
            break;
        default:
            break;
        }
    }
    return intern_state(pm, closure_end(pm, sp));
}

static void flush(struct aarm_pm *pm)
{
    pm->nstates = 0;
    pm->pool_len = 0;
    memset(pm->htab, 0xff, (size_t)pm->hcap * sizeof *pm->htab);
    pm->start = -1;
    pm->dead = -1;
    pm->flushes++;
}

int32_t aarm_pm_match(struct aarm_pm *pm, const void *text, size_t len, int width)
{
    if (pm == NULL || (width != 1 && width != 4) || (text == NULL && len))
        return -1;
    const unsigned char *p = text;
    int32_t result = -1;
    int flushed = 0;
    pthread_mutex_lock(&pm->lock);
again:
    if (pm->start < 0) {
        int32_t s0 = start_state(pm);
        if (s0 == PM_FULL && !flushed) {
            flush(pm);
            flushed = 1;
            goto again;
        }
        if (s0 < 0)
            goto out;
        pm->start = s0;
    }
    int32_t s = pm->start;
    const size_t ncls = pm->ncls;
    for (size_t i = 0; i < len && s != pm->dead; i++) {
        uint32_t cp;
        if (width == 1) {
            cp = p[i];
        } else {
            const unsigned char *q = p + 4 * i;
            cp = (uint32_t)q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 | (uint32_t)q[3] << 24;
        }
        uint32_t c = cls_of(pm, cp);
        int32_t nx = pm->trans[(size_t)s * ncls + c];
        if (nx < 0) {
            nx = step(pm, s, c);
            if (nx == PM_FULL && !flushed) {
                flush(pm);
                flushed = 1;
                goto again;
            }
            if (nx < 0)
                goto out;
            pm->trans[(size_t)s * ncls + c] = nx;
        }
        s = nx;
    }
    result = pm->states[s].accept;
out:
    pthread_mutex_unlock(&pm->lock);
    return result;
}

int32_t aarm_pm_accept_set(struct aarm_pm *pm, int32_t id, uint32_t *out, uint32_t max)
{
    if (pm == NULL)
        return -1;
    pthread_mutex_lock(&pm->lock);
    int32_t n = -1;
    if (id >= 0 && (uint32_t)id < pm->nacc) {
        n = (int32_t)pm->acc_n[id];
        uint32_t k = pm->acc_n[id] < max ? pm->acc_n[id] : max;
        if (k)
            memcpy(out, pm->acc_pool + pm->acc_off[id], (size_t)k * 4);
    }
    pthread_mutex_unlock(&pm->lock);
    return n;
}

void aarm_pm_stats(struct aarm_pm *pm, uint64_t *out4)
{
    pthread_mutex_lock(&pm->lock);
    out4[0] = pm->nstates;
    out4[1] = pm->flushes;
    out4[2] = pm->nacc;
    out4[3] = dfa_bytes(pm, pm->nstates, pm->pool_len);
    pthread_mutex_unlock(&pm->lock);
}

void aarm_pm_free(struct aarm_pm *pm)
{
    if (pm == NULL)
        return;
    pthread_mutex_destroy(&pm->lock);
    free(pm->op);
    free(pm->arg);
    free(pm->next1);
    free(pm->next2);
    free(pm->starts);
    free(pm->node_cls);
    free(pm->hi_cp);
    free(pm->hi_cls);
    free(pm->states);
    free(pm->trans);
    free(pm->pool);
    free(pm->htab);
    free(pm->mark);
    free(pm->stack);
    free(pm->scratch);
    free(pm->pats);
    free(pm->bits);
    free(pm->acc_pool);
    free(pm->acc_off);
    free(pm->acc_n);
    free(pm->acc_hash);
    free(pm->acc_htab);
    free(pm);
}

static int valid_node(int32_t v, uint32_t nnodes)
{
    return v >= 0 && (uint32_t)v < nnodes;
}

struct aarm_pm *aarm_pm_new(const int32_t *nodes, uint32_t nnodes,
                            const uint32_t *starts, uint32_t nstarts,
                            uint32_t npatterns, size_t budget)
{
    if (nodes == NULL || nnodes == 0 || nnodes > MAX_NODES || (starts == NULL && nstarts) ||
        nstarts > nnodes)
        return NULL;
    for (uint32_t k = 0; k < nnodes; k++) {
        int32_t op = nodes[4 * k], arg = nodes[4 * k + 1];
        int32_t n1 = nodes[4 * k + 2], n2 = nodes[4 * k + 3];
        switch (op) {
        case AARM_PM_CHAR:
            if (arg < 0 || !valid_node(n1, nnodes))
                return NULL;
            break;
        case AARM_PM_NOTSLASH:
        case AARM_PM_ANY:
            if (!valid_node(n1, nnodes))
                return NULL;
            break;
        case AARM_PM_SPLIT:
            if (!valid_node(n1, nnodes) || !valid_node(n2, nnodes))
                return NULL;
            break;
        case AARM_PM_MATCH:
            if (arg < 0 || (uint32_t)arg >= npatterns)
                return NULL;
            break;
        default:
            return NULL;
        }
    }
    for (uint32_t k = 0; k < nstarts; k++)
        if (starts[k] >= nnodes)
            return NULL;

    struct aarm_pm *pm = calloc(1, sizeof *pm);
    if (pm == NULL)
        return NULL;
    if (pthread_mutex_init(&pm->lock, NULL)) {
        free(pm);
        return NULL;
    }
    pm->nnodes = nnodes;
    pm->nstarts = nstarts;
    pm->npatterns = npatterns;
    pm->budget = budget;
    pm->start = -1;
    pm->dead = -1;
    size_t nn = nnodes;
    pm->op = malloc(nn * 4);
    pm->arg = malloc(nn * 4);
    pm->next1 = malloc(nn * 4);
    pm->next2 = malloc(nn * 4);
    pm->starts = malloc((nstarts ? nstarts : 1) * 4);
    pm->node_cls = calloc(nn, 4);
    pm->mark = calloc(nn, 4);
    pm->stack = malloc(nn * 4);
    pm->scratch = malloc(nn * 4);
    pm->pats = malloc(nn * 4);
    pm->bits = calloc((nn + 63) / 64, sizeof *pm->bits);
    pm->hcap = 64;
    pm->htab = malloc(pm->hcap * 4);
    pm->acc_hcap = 64;
    pm->acc_htab = malloc(pm->acc_hcap * 4);
    if (!pm->op || !pm->arg || !pm->next1 || !pm->next2 || !pm->starts || !pm->node_cls ||
        !pm->mark || !pm->stack || !pm->scratch || !pm->pats || !pm->bits || !pm->htab ||
        !pm->acc_htab)
        goto fail;
    memset(pm->htab, 0xff, pm->hcap * 4);
    memset(pm->acc_htab, 0xff, pm->acc_hcap * 4);
    for (uint32_t k = 0; k < nnodes; k++) {
        pm->op[k] = nodes[4 * k];
        pm->arg[k] = nodes[4 * k + 1];
        pm->next1[k] = nodes[4 * k + 2];
        pm->next2[k] = nodes[4 * k + 3];
    }
    if (nstarts)
        memcpy(pm->starts, starts, (size_t)nstarts * 4);

    /* classes: '/' is its own; every other code point a glob names gets one; the
     * rest share CLS_OTHER (no CHAR node can take them) */
    uint32_t ncp = 0;
    for (uint32_t k = 0; k < nnodes; k++)
        if (pm->op[k] == AARM_PM_CHAR && pm->arg[k] != '/')
            pm->scratch[ncp++] = (uint32_t)pm->arg[k];
    qsort(pm->scratch, ncp, 4, cmp_u32);
    uint32_t distinct = 0;
    for (uint32_t k = 0; k < ncp; k++)
        if (distinct == 0 || pm->scratch[distinct - 1] != pm->scratch[k])
            pm->scratch[distinct++] = pm->scratch[k];
    pm->cls_lo['/'] = CLS_SLASH;
    pm->ncls = 2;
    uint32_t nhi = 0;
    for (uint32_t k = 0; k < distinct; k++)
        if (pm->scratch[k] >= 256)
            nhi++;
    pm->hi_cp = malloc((nhi ? nhi : 1) * 4);
    pm->hi_cls = malloc((nhi ? nhi : 1) * 4);
    if (!pm->hi_cp || !pm->hi_cls)
        goto fail;
    for (uint32_t k = 0; k < distinct; k++) {
        uint32_t cp = pm->scratch[k], c = pm->ncls++;
        if (cp < 256) {
            pm->cls_lo[cp] = c;
        } else {
            pm->hi_cp[pm->nhi] = cp;
            pm->hi_cls[pm->nhi++] = c;
        }
    }
    for (uint32_t k = 0; k < nnodes; k++)
        if (pm->op[k] == AARM_PM_CHAR)
            pm->node_cls[k] = cls_of(pm, (uint32_t)pm->arg[k]);

    if (acc_intern(pm, NULL, 0) != 0)   /* id 0: no pattern matches */
        goto fail;
    return pm;
fail:
    aarm_pm_free(pm);
    return NULL;
}
