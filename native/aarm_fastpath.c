/*
 * aarm_fastpath.c - native fast path of the seccomp-notification supervisor.
 *
 * aarm_fast_next() receives notifications in a loop and completely handles
 * the hottest *allowed* file operations itself (open/openat/creat for writing
 * a regular file or creating one, unlink/unlinkat, mkdir/mkdirat,
 * chmod/fchmodat/fchmodat2 and utimensat without flags on a name that is not a
 * symlink, and fchmod/futimens on an fd: see fp_handle_fd),
 * without returning to Python.  Everything else - and everything the fast path is not
 * completely sure about - is returned to Python untouched, exactly as
 * SECCOMP_IOCTL_NOTIF_RECV delivered it, so that the Python supervisor decides
 * it as if the fast path did not exist.
 *
 * The semantics mirror the Python decoders (decode/handlers.py decode_open's
 * parent fast path, decode_unlink, decode_mkdir, decode/paths.py
 * Resolver.parent) restricted to the simplest shapes:
 *
 *   1. the path is read once (process_vm_readv, <= 4096 bytes incl. the NUL);
 *      the decision and the operation only ever use that private copy;
 *   2. empty paths, a trailing '/', any "." or ".." component -> Python;
 *   3. absolute paths start at the session root (root_fd), relative ones at
 *      /proc/TID/cwd (per thread, honours unshare(CLONE_FS)) or at the
 *      directory a dirfd refers to (/proc/TID/fd/N, pinned: the very object);
 *   4. the parent directory is pinned with openat2(RESOLVE_NO_SYMLINKS |
 *      RESOLVE_NO_MAGICLINKS [| RESOLVE_IN_ROOT]); any error -> Python.  An
 *      absolute canonical write-open skips the pin and opens the whole path
 *      with the same flags from the root (ELOOP there -> Python);
 *   5. canonical path = the text for absolute paths without "//" (the parent
 *      was reached with no symlink, "." or ".."), else
 *      readlink(/proc/self/fd/PARENT) + "/" + name - as Resolver.parent;
 *   6. when every kind the outcome could be is allowed for the path, no lstat:
 *      the operation itself (no symlink followed, O_EXCL, unlinkat's own errors) tells
 *      what was there; otherwise the last component is lstat'ed in the pinned
 *      parent and only regular files opened for writing or O_TRUNC (write) and
 *      absent names (create) are handled; unlink/rmdir/mkdir answer the
 *      kernel's own errors;
 *   7. the canonical path must "may-match" an allow glob of the kind and no
 *      danger glob;
 *   8. SECCOMP_IOCTL_NOTIF_ID_VALID (after every /proc/TID access, so a
 *      recycled TID cannot have been used);
 *   9. for an unlink or an O_TRUNC open, an intent line is written to the
 *      journal (when configured with aarm_fast_set_intent) so that a
 *      supervisor killed between the operation and its receipt still leaves
 *      a trace; a failed or short write hands the notification to Python;
 *  10. the operation is performed on (pinned parent, name), or on the whole
 *      path from the root (step 4) - openat2 with RESOLVE_NO_SYMLINKS for opens
 *      (not O_NOFOLLOW, which the caller's F_GETFL would show) - and the
 *      notification answered (ADDFD|SEND for opens);
 *  11. a journal record is queued in a ring whose slot was reserved *before*
 *      the operation: when the ring is full the notification goes to Python,
 *      so nothing is ever performed without a record.  It carries the
 *      notification id and the acting program (/proc/TID/exe, read before
 *      the operation, cached: see exe_of).
 *
 * Extra caution beyond the Python decoder: opens that are not exclusive
 * creates add O_NONBLOCK (cleared again with F_SETFL before the fd is
 * installed) so that a name swapped for a FIFO after the lstat cannot block
 * the supervisor; open failures that only the fast path's own
 * changes can cause (EAGAIN/ENXIO from O_NONBLOCK, ELOOP from not following,
 * ENOENT after dropping O_CREAT) hand the untouched notification to Python
 * instead of answering (nothing has happened at that point).
 *
 * Conventions: negative errno returns, no errno as an error channel (except
 * aarm_fast_new, which returns NULL and sets errno).  The functions are
 * called through cffi with the GIL released.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <linux/audit.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>

#include "aarm_fastpath.h"
#include "aarm_intentlog.h"

#ifndef ST_NOSYMFOLLOW
#define FP_ST_NOSYMFOLLOW 0x2000
#else
#define FP_ST_NOSYMFOLLOW ST_NOSYMFOLLOW
#endif
#ifndef SYS_openat2
#define SYS_openat2 437
#endif

/* x86_64 syscall numbers (the only architecture handled here). */
#define NR_OPEN 2
#define NR_MKDIR 83
#define NR_CREAT 85
#define NR_UNLINK 87
#define NR_RMDIR 84
#define NR_OPENAT 257
#define NR_MKDIRAT 258
#define NR_UNLINKAT 263
#define NR_CHMOD 90
#define NR_FCHMODAT 268
#define NR_FCHMODAT2 452
#define NR_UTIMENSAT 280
#define NR_FCHMOD 91
#define FP_PIDFD_THREAD 0x80            /* PIDFD_THREAD (O_EXCL), Linux 6.9 */

#define FP_PATH_MAX 4096                 /* incl. the NUL, as the kernel's PATH_MAX */
#define FP_O_TMPFILE_BIT 020000000       /* __O_TMPFILE */
#define FP_RING_MAX (1u << 20)
#define FP_MAX_GLOBS (1u << 16)
#define FP_MAX_SEGMENTS 4096u
#define FP_MAX_TEXT (1u << 16)

/* An intent line: prefix + at most FP_INTENT_FIXED bytes of fields + the
 * base64 of the longest canonical path.  Built on the stack, one write(2). */
#define FP_B64_LEN(n) ((((n) + 2) / 3) * 4)
#define FP_INTENT_FIXED 256
#define FP_INTENT_LINE_MAX \
    (AARM_FAST_INTENT_PREFIX_MAX + FP_INTENT_FIXED + FP_B64_LEN(AARM_FAST_RECORD_PATH_MAX))

/* umask cache: tid-keyed, direct-mapped, overwrite on collision.
 * entry = tid << 32 | VALID | umask << GEN_BITS | generation */
#define FP_UMASK_SLOTS 4096u
#define FP_UMASK_GEN_BITS 19
#define FP_UMASK_GEN_MASK ((1u << FP_UMASK_GEN_BITS) - 1)
#define FP_UMASK_VALID (1ull << 31)
#define FP_UMASK_TTL_NS 100000000ull    /* 100 ms: a reused TID cannot inherit an entry */
#define FP_UMASK_PENDING 8

/* FP_PASS_INTENT: handed to Python after an intent line was written for it. */
enum { FP_PASS = 0, FP_DONE = 1, FP_PASS_INTENT = 3 };
enum { OP_OPEN, OP_UNLINK, OP_MKDIR, OP_CHMOD, OP_UTIME };
/* The kind of each operation but OP_OPEN (write or create: decided per call). */
static const int OP_KIND[] = { [OP_UNLINK] = AARM_FAST_DELETE, [OP_MKDIR] = AARM_FAST_MKDIR,
                               [OP_CHMOD] = AARM_FAST_CHMOD, [OP_UTIME] = AARM_FAST_UTIME };
enum { SLOT_FREE = 0, SLOT_READY = 1, SLOT_CANCELLED = 2 };

_Static_assert(AARM_FAST_NKINDS == 6, "six fast kinds");
_Static_assert(AARM_FAST_RECORD_PATH_MAX >= FP_PATH_MAX + 1 + NAME_MAX,
               "a record holds any canonical path the fast path can build");

struct fp_glob {
    char *prefix;
    uint32_t prefix_len;
    int exact;
    char **segs;
    uint32_t *seg_lens;
    uint32_t nsegs;
    int anchored;               /* the last segment ends every match */
    uint32_t comp_len;          /* danger: length of the first path component its
                                 * matches all share ("/root"), 0: any path may match */
};

/* Danger globs sorted by first path component: a path is tried only against the
 * globs of its own component plus those that may match anything (the default
 * profile's 39 danger globs cost 250 ns a check tried one by one). */
struct fp_group {
    const char *comp;           /* points into the first glob's prefix */
    uint32_t len;
    uint32_t start, end;        /* danger[start..end) */
};

struct fp_kind {
    struct fp_glob *allow;
    uint32_t nallow;
    struct fp_glob *danger;
    uint32_t ndanger;
    uint32_t nanywhere;         /* danger[0..nanywhere): comp_len 0 */
    struct fp_group *groups;
    uint32_t ngroups;
    struct fp_glob *counted;    /* see aarm_fast_kind.counted */
    uint32_t ncounted;
    int enabled;
};

/* One intent configuration.  Immutable once published; every one ever made
 * stays allocated (and its fd open) until aarm_fast_free, so a loop thread
 * that loaded it just before a swap can still use it safely. */
struct fp_intent {
    int fd;                     /* owned dup of the caller's journal fd, or -1: */
    struct aarm_intent_log *log;    /* lines appended to this mapped intents file */
    uint32_t prefix_len;
    struct fp_intent *next_alloc;
    char prefix[AARM_FAST_INTENT_PREFIX_MAX];
};

#define FP_EXE_SLOTS 64
#define FP_EXE_TTL_NS 100000000ull      /* 100 ms */

struct fp_exe_slot {
    uint32_t tid;
    uint32_t len;                       /* 0: empty */
    unsigned gen;
    uint64_t at_ns;                     /* CLOCK_MONOTONIC when read */
    char exe[AARM_FAST_RECORD_EXE_MAX];
};

struct aarm_fast_ctx {
    int listener;               /* not owned */
    int root_fd;                /* owned dup of the session root */
    /* owned dup of a detached copy of the sandbox's mount tree whose mounts follow no
     * symlink (aarm_fast_set_nosym_root), or -1: deletes and mkdirs of canonical absolute
     * paths walk it instead of pinning their parent directory */
    _Atomic int nosym_fd;
    int proc_fd;                /* "/proc", O_PATH */
    int selffd_fd;              /* "/proc/self/fd" (of this process), O_PATH */
    struct fp_kind kinds[AARM_FAST_NKINDS];
    atomic_int enabled;
    /* Units of a count_over rule this loop may still spend per kind: Python
     * keeps budget + spent-but-not-yet-counted + counted <= the rule's limit,
     * so the loop never performs what the rule would stop (see fastpath.py). */
    _Atomic int64_t budget[AARM_FAST_NKINDS];

    /* Record ring.  Producers reserve a slot (tail++) under ring_lock,
     * fill it without the lock and publish it with ready[slot] = READY;
     * the drainer copies published slots out in order without the lock
     * and advances head under it.  tail - head <= cap always. */
    pthread_mutex_t ring_lock;
    pthread_mutex_t drain_lock;
    struct aarm_fast_record *ring;  /* mmap'ed, pre-faulted: no page fault on the hot path */
    size_t ring_bytes;
    atomic_uchar *ready;
    uint32_t cap;
    uint64_t head;
    uint64_t tail;
    atomic_uint_fast64_t dropped;
    /* Drainer wake-up: one eventfd write when the ring holds wake_at records
     * and none is outstanding (wake_sent, under ring_lock; cleared by a drain),
     * so the drainer keeps the ring short under load instead of the decision
     * thread finding it full and draining everything inline. */
    int wake_fd;
    uint32_t wake_at;
    int wake_sent;

    int create_like_write;      /* CREATE allows exactly what WRITE allows */
    atomic_int probe_created;   /* the last O_CREAT probe created its file (a hint) */
    atomic_uint umask_gen;
    _Atomic uint64_t umask_tab[FP_UMASK_SLOTS];
    _Atomic uint64_t umask_at[FP_UMASK_SLOTS];   /* CLOCK_MONOTONIC ns of each entry's read */
    /* umask() calls answered CONTINUE but maybe not carried out yet (umask_lock): while
     * any is pending nothing is cached; see aarm_fast_umask_pending. */
    pthread_mutex_t umask_lock;
    atomic_int umask_npending;      /* > FP_UMASK_PENDING: overflowed, never cache again */
    struct { uint32_t tid; unsigned mask; } umask_pending[FP_UMASK_PENDING];

    /* exe cache (exe_lock): see exe_of. */
    pthread_mutex_t exe_lock;
    struct fp_exe_slot *exe_tab;
    unsigned exe_gen;

    /* Intent lines: the current configuration (NULL: off), swapped by
     * aarm_fast_set_intent; intent_all lists every one made (intent_lock). */
    _Atomic(struct fp_intent *) intent;
    pthread_mutex_t intent_lock;
    struct fp_intent *intent_all;
};

/* ------------------------------------------------------------------ */
/* small helpers                                                       */

static size_t put_u(char *buf, unsigned long v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        buf[i] = tmp[n - 1 - i];
    return n;
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

static int sys_openat2_mode(int dirfd, const char *path, uint64_t flags, uint64_t mode,
                            uint64_t resolve)
{
    struct open_how how;
    memset(&how, 0, sizeof(how));
    how.flags = flags;
    how.mode = (flags & O_CREAT) ? mode : 0;     /* openat2 rejects a mode without O_CREAT */
    how.resolve = resolve;
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
}

static int sys_openat2(int dirfd, const char *path, uint64_t flags, uint64_t resolve)
{
    return sys_openat2_mode(dirfd, path, flags, 0, resolve);
}

#define FP_RESOLVE_STRICT (RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_IN_ROOT)

/* 1 if the path has a shape the fast path handles: non-empty, no trailing
 * slash, no "." or ".." component anywhere. */
static int path_is_simple(const char *p, size_t n)
{
    if (n == 0 || p[n - 1] == '/')
        return 0;
    size_t i = 0;
    while (i < n) {
        while (i < n && p[i] == '/')
            i++;
        size_t s = i;
        while (i < n && p[i] != '/')
            i++;
        size_t l = i - s;
        if (l == 1 && p[s] == '.')
            return 0;
        if (l == 2 && p[s] == '.' && p[s + 1] == '.')
            return 0;
    }
    return 1;
}

/* Standard base64 (RFC 4648, with padding); returns the length written. */
static size_t put_b64(char *out, const unsigned char *in, size_t n)
{
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = tab[(v >> 6) & 63];
        out[o++] = tab[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    return o;
}

static size_t put_s(char *buf, const char *s)
{
    size_t n = strlen(s);
    memcpy(buf, s, n);
    return n;
}

/* ------------------------------------------------------------------ */
/* glob matching                                                       */

static int may_match(const struct fp_glob *g, const char *p, size_t n, int danger)
{
    if (g->exact)
        return n == g->prefix_len && memcmp(p, g->prefix, n) == 0;
    size_t pl = g->prefix_len;
    if (n < pl || memcmp(p, g->prefix, pl) != 0) {
        /* danger only: a last literal piece ending in '/' may come from a
         * trailing slash-double-star, which also matches the directory itself. */
        return danger && g->nsegs == 0 && pl > 0 && g->prefix[pl - 1] == '/' &&
               n == pl - 1 && memcmp(p, g->prefix, n) == 0;
    }
    size_t pos = pl;
    for (uint32_t i = 0; i < g->nsegs; i++) {
        const char *seg = g->segs[i];
        size_t sl = g->seg_lens[i];
        if (g->anchored && i == g->nsegs - 1)
            /* Every match ends with this piece, and the leftmost placement of the
             * earlier ones leaves the most room: it fits iff it ends the path. */
            return n - pos >= sl && memcmp(p + n - sl, seg, sl) == 0;
        const char *hit = memmem(p + pos, n - pos, seg, sl);
        if (!hit) {
            return danger && i == g->nsegs - 1 && sl > 0 && seg[sl - 1] == '/' &&
                   n - pos >= sl - 1 && memcmp(p + n - (sl - 1), seg, sl - 1) == 0;
        }
        pos = (size_t)(hit - p) + sl;
    }
    return 1;
}

/* The length of p's first component, the leading '/' included ("/root" of
 * "/root/.ssh"; all of p when there is no second '/'). */
static size_t first_comp_len(const char *p, size_t n)
{
    const char *slash = n > 1 ? memchr(p + 1, '/', n - 1) : NULL;
    return slash ? (size_t)(slash - p) : n;
}

static int danger_hit(const struct fp_kind *k, const char *p, size_t n)
{
    for (uint32_t i = 0; i < k->nanywhere; i++)
        if (may_match(&k->danger[i], p, n, 1))
            return 1;
    size_t cl = first_comp_len(p, n);
    for (uint32_t g = 0; g < k->ngroups; g++) {
        const struct fp_group *gr = &k->groups[g];
        if (gr->len != cl || memcmp(gr->comp, p, cl) != 0)
            continue;
        for (uint32_t i = gr->start; i < gr->end; i++)
            if (may_match(&k->danger[i], p, n, 1))
                return 1;
        break;
    }
    return 0;
}

/* Allowed iff the kind is on, the path may-matches an allow glob that is an
 * exact path or a pure prefix (a glob with literal segments after its
 * wildcard is an over-approximation and could allow more than the glob:
 * it never allows here), and may-matches no danger glob.  Danger matching is
 * conservative beyond the plain definition: when the last literal piece ends
 * in '/', the path may also end right before that '/' (glob X/<star><star> matches X). */
static int kind_allows(const struct fp_kind *k, const char *p, size_t n)
{
    if (!k->enabled)
        return 0;
    int ok = 0;
    for (uint32_t i = 0; i < k->nallow && !ok; i++)
        ok = k->allow[i].nsegs == 0 && may_match(&k->allow[i], p, n, 0);
    if (!ok)
        return 0;
    if (danger_hit(k, p, n))
        return 0;
    return 1;
}

/* A path that may match a counted glob spends a unit: 1 when one was
 * taken (or none was needed: *unit stays 0), 0 when the budget is used up. */
static int take_unit(struct aarm_fast_ctx *c, int kind, const char *p, size_t n, int *unit)
{
    const struct fp_kind *k = &c->kinds[kind];
    int hit = 0;
    for (uint32_t i = 0; i < k->ncounted && !hit; i++)
        hit = may_match(&k->counted[i], p, n, 1);
    if (!hit)
        return 1;
    int64_t b = atomic_load(&c->budget[kind]);
    while (b > 0)
        if (atomic_compare_exchange_weak(&c->budget[kind], &b, b - 1)) {
            *unit = 1;
            return 1;
        }
    return 0;
}

int64_t aarm_fast_budget_add(struct aarm_fast_ctx *c, int kind, int64_t delta)
{
    if (!c || kind < 0 || kind >= AARM_FAST_NKINDS)
        return INT64_MIN;
    return atomic_fetch_add(&c->budget[kind], delta) + delta;
}

/* ------------------------------------------------------------------ */
/* umask of the target thread                                          */

static int read_umask(struct aarm_fast_ctx *c, uint32_t tid, unsigned *out)
{
    char name[40];
    size_t k = put_u(name, tid);
    memcpy(name + k, "/status", sizeof("/status"));
    int fd = openat(c->proc_fd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char buf[1024];
    ssize_t r = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (r <= 0)
        return -1;
    buf[r] = '\0';
    /* "Umask:\t0022\n" at the start of a line (the comm in "Name:" is
     * escaped by the kernel, so it cannot forge a line). */
    const char *p = buf;
    while (strncmp(p, "Umask:", 6) != 0) {
        p = strchr(p, '\n');
        if (!p)
            return -1;
        p++;
    }
    p += 6;
    while (*p == ' ' || *p == '\t')
        p++;
    unsigned v = 0;
    int digits = 0;
    while (*p >= '0' && *p <= '7' && digits < 8) {
        v = v * 8 + (unsigned)(*p - '0');
        p++;
        digits++;
    }
    if (digits == 0 || *p != '\n')
        return -1;
    *out = v & 0777;
    return 0;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Pending umask() calls that have visibly taken effect (/proc/TID/status shows the
 * requested mask) or whose thread is gone are dropped; 1 while any is left. */
static int umask_still_pending(struct aarm_fast_ctx *c)
{
    pthread_mutex_lock(&c->umask_lock);
    int n = atomic_load_explicit(&c->umask_npending, memory_order_relaxed);
    if (n > FP_UMASK_PENDING) {
        pthread_mutex_unlock(&c->umask_lock);
        return 1;
    }
    for (int i = 0; i < n;) {
        unsigned m;
        if (read_umask(c, c->umask_pending[i].tid, &m) < 0 || m == c->umask_pending[i].mask) {
            c->umask_pending[i] = c->umask_pending[--n];
            continue;
        }
        i++;
    }
    if (n == 0)                         /* done: what was cached before it is stale */
        atomic_fetch_add_explicit(&c->umask_gen, 1, memory_order_acq_rel);
    atomic_store_explicit(&c->umask_npending, n, memory_order_release);
    pthread_mutex_unlock(&c->umask_lock);
    return n > 0;
}

/* The thread's umask, cached per TID for FP_UMASK_TTL_NS.  While a umask() call is
 * pending (answered, perhaps not yet carried out by its thread), every read is fresh
 * and nothing is cached: a thread sharing the fs struct would otherwise cache the old
 * mask in that window and keep it after the call returned. */
static int get_umask(struct aarm_fast_ctx *c, uint32_t tid, unsigned *out)
{
    if (atomic_load_explicit(&c->umask_npending, memory_order_acquire) > 0 &&
        umask_still_pending(c))
        return read_umask(c, tid, out);
    _Atomic uint64_t *slot = &c->umask_tab[tid % FP_UMASK_SLOTS];
    _Atomic uint64_t *at = &c->umask_at[tid % FP_UMASK_SLOTS];
    uint64_t now = mono_ns();
    unsigned gen = atomic_load_explicit(&c->umask_gen, memory_order_acquire) & FP_UMASK_GEN_MASK;
    uint64_t e = atomic_load_explicit(slot, memory_order_acquire);
    if ((uint32_t)(e >> 32) == tid && (e & FP_UMASK_VALID) &&
        (unsigned)(e & FP_UMASK_GEN_MASK) == gen &&
        now - atomic_load_explicit(at, memory_order_acquire) < FP_UMASK_TTL_NS) {
        *out = (unsigned)(e >> FP_UMASK_GEN_BITS) & 07777;
        return 0;
    }
    /* The generation is taken before reading: an invalidation that races
     * with the read makes this entry stale at once. */
    unsigned m;
    if (read_umask(c, tid, &m) < 0)
        return -1;
    e = ((uint64_t)tid << 32) | FP_UMASK_VALID |
        ((uint64_t)(m & 07777) << FP_UMASK_GEN_BITS) | gen;
    atomic_store_explicit(at, now, memory_order_release);
    atomic_store_explicit(slot, e, memory_order_release);
    *out = m;
    return 0;
}

void aarm_fast_invalidate_umask(struct aarm_fast_ctx *c)
{
    if (!c)
        return;
    atomic_fetch_add_explicit(&c->umask_gen, 1, memory_order_acq_rel);
    for (unsigned i = 0; i < FP_UMASK_SLOTS; i++)
        atomic_store_explicit(&c->umask_tab[i], 0, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
}

void aarm_fast_umask_pending(struct aarm_fast_ctx *c, uint32_t tid, unsigned mask)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->umask_lock);
    int n = atomic_load_explicit(&c->umask_npending, memory_order_relaxed);
    if (n < FP_UMASK_PENDING) {
        int i = 0;
        while (i < n && c->umask_pending[i].tid != tid)
            i++;
        c->umask_pending[i].tid = tid;  /* a second call of the same thread: the newer mask */
        c->umask_pending[i].mask = mask & 0777;
        if (i == n)
            n++;
    } else {
        n = FP_UMASK_PENDING + 1;       /* overflowed: no caching for the rest of the session */
    }
    atomic_store_explicit(&c->umask_npending, n, memory_order_release);
    pthread_mutex_unlock(&c->umask_lock);
    aarm_fast_invalidate_umask(c);
}

/* ------------------------------------------------------------------ */
/* record ring                                                         */

static int ring_reserve(struct aarm_fast_ctx *c, uint64_t *slot)
{
    int ok = 0, wake = 0;
    pthread_mutex_lock(&c->ring_lock);
    if (atomic_load_explicit(&c->enabled, memory_order_relaxed) && c->cap &&
        c->tail - c->head < c->cap) {
        *slot = c->tail++;
        ok = 1;
        if (!c->wake_sent && c->tail - c->head >= c->wake_at) {
            c->wake_sent = 1;
            wake = 1;
        }
    }
    pthread_mutex_unlock(&c->ring_lock);
    if (wake) {
        uint64_t one = 1;
        /* EAGAIN (counter saturated) still leaves it readable: nothing to do. */
        ssize_t w = write(c->wake_fd, &one, sizeof(one));
        (void)w;
    }
    return ok;
}

static void ring_cancel(struct aarm_fast_ctx *c, uint64_t slot)
{
    atomic_store_explicit(&c->ready[slot % c->cap], SLOT_CANCELLED, memory_order_release);
}

static struct aarm_fast_record *ring_slot(struct aarm_fast_ctx *c, uint64_t slot)
{
    return &c->ring[slot % c->cap];
}

static void ring_publish(struct aarm_fast_ctx *c, uint64_t slot)
{
    atomic_store_explicit(&c->ready[slot % c->cap], SLOT_READY, memory_order_release);
}

int aarm_fast_drain(struct aarm_fast_ctx *c, struct aarm_fast_record *out, int max)
{
    if (!c || !out || max <= 0 || c->cap == 0)
        return 0;
    pthread_mutex_lock(&c->drain_lock);
    pthread_mutex_lock(&c->ring_lock);
    uint64_t i = c->head;
    pthread_mutex_unlock(&c->ring_lock);
    int got = 0;
    for (uint32_t seen = 0; got < max && seen < c->cap; seen++) {
        uint32_t idx = (uint32_t)(i % c->cap);
        unsigned char st = atomic_load_explicit(&c->ready[idx], memory_order_acquire);
        if (st == SLOT_FREE)
            break;              /* not reserved, or still being filled: keep order */
        if (st == SLOT_READY) {
            /* Only the used bytes: the fixed fields, then exe and path. */
            const struct aarm_fast_record *r = &c->ring[idx];
            struct aarm_fast_record *o = &out[got];
            uint32_t el = r->exe_len <= AARM_FAST_RECORD_EXE_MAX ? r->exe_len
                                                                 : AARM_FAST_RECORD_EXE_MAX;
            uint32_t pl = r->path_len <= AARM_FAST_RECORD_PATH_MAX ? r->path_len
                                                                   : AARM_FAST_RECORD_PATH_MAX;
            memcpy(o, r, offsetof(struct aarm_fast_record, exe));
            o->exe_len = el;
            o->path_len = pl;
            memcpy(o->exe, r->exe, el);
            memcpy(o->path, r->path, pl);
            got++;
        }
        atomic_store_explicit(&c->ready[idx], SLOT_FREE, memory_order_relaxed);
        i++;
    }
    pthread_mutex_lock(&c->ring_lock);   /* also orders the SLOT_FREE stores before reuse */
    c->head = i;
    c->wake_sent = 0;
    pthread_mutex_unlock(&c->ring_lock);
    pthread_mutex_unlock(&c->drain_lock);
    return got;
}

int aarm_fast_wake_fd(struct aarm_fast_ctx *c)
{
    return c ? c->wake_fd : -1;
}

uint64_t aarm_fast_dropped(struct aarm_fast_ctx *c)
{
    return c ? (uint64_t)atomic_load(&c->dropped) : 0;
}

void aarm_fast_set_enabled(struct aarm_fast_ctx *c, int enabled)
{
    if (!c)
        return;
    /* Under the ring lock: once this returns, no further slot is reserved
     * (operations that already hold a slot complete and are recorded). */
    pthread_mutex_lock(&c->ring_lock);
    atomic_store_explicit(&c->enabled, enabled ? 1 : 0, memory_order_release);
    pthread_mutex_unlock(&c->ring_lock);
}

/* A descriptor of our own for fd's file.  A regular file gets a new open file description
 * (same inode, checked): a dup would share the journal writer's, and write(2) serializes
 * on a shared description's position lock (f_pos_lock, a mutex, even with O_APPEND), so an
 * intent waited for the writer thread - which runs at SCHED_IDLE and can be preempted
 * holding it - as well as for the inode.  Anything else (a FIFO to a collector) is dup'd. */
static int reopen_appending(int fd)
{
    struct stat st, st2;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        char name[40];
        memcpy(name, "/proc/self/fd/", 14);
        name[14 + put_u(name + 14, (unsigned long)fd)] = '\0';
        int nfd = open(name, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOCTTY);
        if (nfd >= 0) {
            if (fstat(nfd, &st2) == 0 && st2.st_dev == st.st_dev && st2.st_ino == st.st_ino)
                return nfd;
            close(nfd);
        }
    }
    return fcntl(fd, F_DUPFD_CLOEXEC, 0);
}

static int check_prefix(const char *prefix, uint32_t prefix_len)
{
    if (prefix_len > AARM_FAST_INTENT_PREFIX_MAX)
        return -E2BIG;
    if ((prefix_len && !prefix) || (prefix_len && memchr(prefix, '\n', prefix_len)))
        return -EINVAL;             /* a newline would split the line */
    return 0;
}

static void publish_intent(struct aarm_fast_ctx *c, struct fp_intent *in)
{
    pthread_mutex_lock(&c->intent_lock);
    if (in) {
        in->next_alloc = c->intent_all;
        c->intent_all = in;
    }
    atomic_store_explicit(&c->intent, in, memory_order_release);
    pthread_mutex_unlock(&c->intent_lock);
}

int aarm_fast_set_intent_log(struct aarm_fast_ctx *c, struct aarm_intent_log *log,
                             const char *prefix, uint32_t prefix_len)
{
    if (!c)
        return -EINVAL;
    struct fp_intent *in = NULL;
    if (log) {
        int r = check_prefix(prefix, prefix_len);
        if (r < 0)
            return r;
        in = calloc(1, sizeof(*in));
        if (!in)
            return -ENOMEM;
        in->fd = -1;
        in->log = log;
        if (prefix_len)
            memcpy(in->prefix, prefix, prefix_len);
        in->prefix_len = prefix_len;
    }
    publish_intent(c, in);
    return 0;
}

int aarm_fast_set_intent(struct aarm_fast_ctx *c, int fd, const char *prefix,
                         uint32_t prefix_len)
{
    if (!c)
        return -EINVAL;
    struct fp_intent *in = NULL;
    if (fd >= 0) {
        int r = check_prefix(prefix, prefix_len);
        if (r < 0)
            return r;
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0)
            return -errno;
        if ((fl & O_ACCMODE) != O_WRONLY && (fl & O_ACCMODE) != O_RDWR)
            return -EBADF;
        if (!(fl & O_APPEND))       /* shared with the journal writer: appends only */
            return -EINVAL;
        in = calloc(1, sizeof(*in));
        if (!in)
            return -ENOMEM;
        /* Our own fd: the caller may close or reuse its number at any time, while a
         * loop that loaded this configuration may still be about to write. */
        in->fd = reopen_appending(fd);
        if (in->fd < 0) {
            int e = errno;
            free(in);
            return -e;
        }
        if (prefix_len)
            memcpy(in->prefix, prefix, prefix_len);
        in->prefix_len = prefix_len;
    }
    publish_intent(c, in);
    return 0;
}

/* ------------------------------------------------------------------ */
/* the fast path proper                                                */

static int32_t as_int32(uint64_t v)
{
    return (int32_t)(uint32_t)v;
}

static int answer(struct aarm_fast_ctx *c, uint64_t id, int64_t result)
{
    if (result < 0)
        return aarm_notif_send(c->listener, id, 0, (int32_t)result, 0);
    return aarm_notif_send(c->listener, id, result, 0, 0);
}

static const char *syscall_name(int nr)
{
    switch (nr) {
    case NR_OPEN: return "open";
    case NR_OPENAT: return "openat";
    case NR_CREAT: return "creat";
    case NR_UNLINK: return "unlink";
    case NR_UNLINKAT: return "unlinkat";
    case NR_RMDIR: return "rmdir";
    case NR_MKDIR: return "mkdir";
    case NR_MKDIRAT: return "mkdirat";
    case NR_CHMOD: return "chmod";
    case NR_FCHMODAT: return "fchmodat";
    case NR_FCHMODAT2: return "fchmodat2";
    case NR_UTIMENSAT: return "utimensat";
    case NR_FCHMOD: return "fchmod";
    default: return "?";
    }
}

/* The intent line of a destructive operation, written with ONE write(2) to
 * an O_APPEND fd (or appended to the mapped intents file): it lands whole, never
 * interleaved with the journal writer's records.  1: written; 0: intents are off;
 * -1: not (completely) written: the operation must not be performed here. */
static int write_intent(struct aarm_fast_ctx *c, const struct aarm_notif *n, uint32_t tid,
                        const char *action, const char *canon, size_t clen)
{
    const struct fp_intent *in = atomic_load_explicit(&c->intent, memory_order_acquire);
    if (!in)
        return 0;
    char line[FP_INTENT_LINE_MAX];
    size_t k = in->prefix_len;
    memcpy(line, in->prefix, k);
    k += put_s(line + k, "\"notif\":");
    k += put_u(line + k, (unsigned long)n->id);
    k += put_s(line + k, ",\"action\":\"");
    k += put_s(line + k, action);
    k += put_s(line + k, "\",\"syscall\":\"");
    k += put_s(line + k, syscall_name(n->data.nr));
    k += put_s(line + k, "\",\"tid\":");
    k += put_u(line + k, tid);
    k += put_s(line + k, ",\"target\":{\"b64\":\"");
    k += put_b64(line + k, (const unsigned char *)canon, clen);
    k += put_s(line + k, "\"}}\n");
    if (in->log)
        return aarm_intent_log_append(in->log, line, k) == 0 ? 1 : -1;
    ssize_t w;
    do {
        w = write(in->fd, line, k);
    } while (w < 0 && errno == EINTR);
    if (w >= 0 && w < (ssize_t)k) {
        /* A torn line (disk full): end it, so that the next record starts a line of its
         * own (readers report the torn one), best effort. */
        ssize_t nl;
        do {
            nl = write(in->fd, "\n", 1);
        } while (nl < 0 && errno == EINTR);
    }
    return w == (ssize_t)k ? 1 : -1;
}

/* /proc/TID/exe into buf; 0 when unknown (gone, or >= EXE_MAX bytes, which
 * readlink would silently truncate). */
static uint32_t read_exe(struct aarm_fast_ctx *c, uint32_t tid, char *buf)
{
    char name[40];
    size_t k = put_u(name, tid);
    memcpy(name + k, "/exe", sizeof("/exe"));
    ssize_t r = readlinkat(c->proc_fd, name, buf, AARM_FAST_RECORD_EXE_MAX);
    if (r <= 0 || r >= AARM_FAST_RECORD_EXE_MAX)
        return 0;
    return (uint32_t)r;
}

/* The acting program, read while the thread is blocked in its syscall (after
 * the answer it may exit at once - `rm` does - and the name would be lost).
 * A readlink costs ~1 us of the target's latency, so results are cached per
 * TID for at most FP_EXE_TTL_NS and dropped on every allowed exec
 * (aarm_fast_invalidate_exe).  A cached name can only be wrong if the TID
 * was reused by another process within the TTL, which needs the pid
 * namespace's whole pid range to be allocated in 100 ms; or if an exec of
 * another thread of the same process, allowed but still in flight in the
 * kernel, completes meanwhile (a process racing its own exec). */
static uint32_t exe_of(struct aarm_fast_ctx *c, uint32_t tid, char *buf)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    struct fp_exe_slot *e = &c->exe_tab[tid % FP_EXE_SLOTS];
    uint32_t len = 0;
    pthread_mutex_lock(&c->exe_lock);
    if (e->len && e->tid == tid && e->gen == c->exe_gen && now - e->at_ns < FP_EXE_TTL_NS) {
        len = e->len;
        memcpy(buf, e->exe, len);
    }
    unsigned gen = c->exe_gen;
    pthread_mutex_unlock(&c->exe_lock);
    if (len)
        return len;
    len = read_exe(c, tid, buf);
    if (len) {
        pthread_mutex_lock(&c->exe_lock);
        if (gen == c->exe_gen) {        /* no exec allowed meanwhile */
            e->tid = tid;
            e->len = len;
            e->gen = gen;
            e->at_ns = now;
            memcpy(e->exe, buf, len);
        }
        pthread_mutex_unlock(&c->exe_lock);
    }
    return len;
}

void aarm_fast_invalidate_exe(struct aarm_fast_ctx *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->exe_lock);
    c->exe_gen++;
    pthread_mutex_unlock(&c->exe_lock);
}

/* The open flags the kernel keeps (VALID_OPEN_FLAGS, x86_64): open/openat drop any other
 * bit silently, openat2 refuses it with EINVAL; masked here, the two behave alike. */
#define FP_VALID_OPEN_FLAGS 037777703u

/* The open itself: at `name` in the pinned parent, or (parent < 0: an absolute path
 * whose text is canonical) along the whole path from the session root with the same
 * guarantees the parent walk gives (no symlinks, no magic links, never above the root),
 * one path walk instead of two.  EINTR is retried.  The name is never followed if it
 * is a symlink (ELOOP): RESOLVE_NO_SYMLINKS rather than O_NOFOLLOW, which would stay in
 * the open file's flags and show in the caller's F_GETFL (a native open has it only
 * when the caller asked for it). */
static int open_target(struct aarm_fast_ctx *c, int parent, const char *path,
                       const char *name, int oflags, mode_t mode)
{
    int fd;
    uint64_t fl = (uint64_t)((unsigned)oflags & FP_VALID_OPEN_FLAGS);
    do {
        if (parent >= 0)
            fd = sys_openat2_mode(parent, name, fl, mode,
                                  RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
        else
            fd = sys_openat2_mode(c->root_fd, path, fl, mode, FP_RESOLVE_STRICT);
    } while (fd < 0 && errno == EINTR);
    return fd;
}

/* Remove the file an exclusive create just made at `name` in `parent`, if that name
 * still is that file (same inode as `opened`).  1: removed. */
static int undo_create(int parent, const char *name, int opened)
{
    struct stat a, b;
    if (fstat(opened, &a) != 0 || fstatat(parent, name, &b, AT_SYMLINK_NOFOLLOW) != 0 ||
        a.st_dev != b.st_dev || a.st_ino != b.st_ino)
        return 0;
    return unlinkat(parent, name, 0) == 0;
}

/* The path /proc/self/fd shows for fd (FP_PATH_MAX buffer), or -1 when it is not a
 * plain absolute path of a file that still has a name (pipes, sockets, " (deleted)"). */
static ssize_t fd_path(struct aarm_fast_ctx *c, int fd, char *out)
{
    char fdname[24];
    fdname[put_u(fdname, (unsigned long)fd)] = '\0';
    ssize_t dl = readlinkat(c->selffd_fd, fdname, out, FP_PATH_MAX);
    if (dl <= 0 || dl >= FP_PATH_MAX || out[0] != '/')
        return -1;
    if (dl >= 10 && memcmp(out + dl - 10, " (deleted)", 10) == 0)
        return -1;
    return dl;
}

/* Step 11's first half and step 8: a record slot, reserved before anything is
 * performed, the acting program read while the caller is still blocked, then the
 * notification checked to be still pending (after every /proc/TID and pidfd access,
 * so a recycled TID cannot have been used).  FP_GO: go on; FP_DONE: the call is gone
 * (nothing happened, nothing to answer); FP_PASS: hand it to Python.  *reserved tells
 * the caller whether to cancel the slot if it does not publish it. */
enum { FP_GO = 2 };
static int reserve_and_check(struct aarm_fast_ctx *c, const struct aarm_notif *n,
                             uint32_t tid, uint64_t *slot, int *reserved)
{
    if (!ring_reserve(c, slot))
        return FP_PASS;
    *reserved = 1;
    struct aarm_fast_record *rec = ring_slot(c, *slot);
    rec->exe_len = exe_of(c, tid, rec->exe);
    int v = aarm_notif_id_valid(c->listener, n->id);
    return v == -ENOENT ? FP_DONE : v < 0 ? FP_PASS : FP_GO;
}

/* Fill and publish a reserved record slot. */
static void put_record(struct aarm_fast_ctx *c, uint64_t slot, const struct aarm_notif *n,
                       uint32_t tid, int kind, uint32_t flags, int64_t result, uint32_t counted,
                       uint32_t performed, const char *canon, size_t clen)
{
    struct aarm_fast_record *rec = ring_slot(c, slot);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    rec->ts_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    rec->notif_id = n->id;
    rec->tid = tid;
    rec->nr = n->data.nr;
    rec->kind = kind;
    rec->result = result;
    rec->flags = flags;
    rec->counted = counted;
    rec->performed = performed;
    rec->path_len = (uint32_t)clen;
    memcpy(rec->path, canon, clen);
    ring_publish(c, slot);
}

/* fchmod(fd) and futimens (utimensat(fd, NULL, ...)): the call acts on the file the
 * caller's fd refers to, so the supervisor takes a copy of that very fd (pidfd_getfd:
 * the same open file description, no path to race), decides on its path as
 * /proc/self/fd shows it (as decode_fchmod / decode_utime do), and performs the call on
 * the copy.  Anything that is not a plain path (pipes, sockets, a deleted file) -> Python.
 * times: NULL for "now". */
static int fp_handle_fd(struct aarm_fast_ctx *c, const struct aarm_notif *n, uint32_t tid,
                        int kind, int32_t tfd, uint32_t mode, const int64_t *times)
{
    if (!c->kinds[kind].enabled || tfd < 0)
        return FP_PASS;
    int ret = FP_PASS, objfd = -1, reserved = 0;
    uint64_t slot = 0;
    char canon[AARM_FAST_RECORD_PATH_MAX];
    int pidfd = aarm_pidfd_open((int)tid, FP_PIDFD_THREAD);
    if (pidfd < 0)
        return FP_PASS;                 /* (before 6.9, EINVAL: Python falls back to the process) */
    objfd = aarm_pidfd_getfd(pidfd, tfd, 0);
    close(pidfd);
    if (objfd < 0)
        return FP_PASS;                 /* EBADF and friends: Python answers as the kernel would */
    {
        ssize_t dl = fd_path(c, objfd, canon);
        if (dl <= 1 || !kind_allows(&c->kinds[kind], canon, (size_t)dl))
            goto out;
        int go = reserve_and_check(c, n, tid, &slot, &reserved);
        if (go != FP_GO) {
            ret = go;
            goto out;
        }
        int r;
        if (kind == AARM_FAST_CHMOD) {
            do {
                r = fchmod(objfd, (mode_t)(mode & 07777));
            } while (r < 0 && errno == EINTR);
            r = r < 0 ? -errno : 0;
        } else {
            r = aarm_utimensat(objfd, NULL, times, 0);
        }
        answer(c, n->id, r);
        put_record(c, slot, n, tid, kind, kind == AARM_FAST_CHMOD ? (mode & 07777) : 0, r, 0,
                   r >= 0, canon, (size_t)dl);
        reserved = 0;
        ret = FP_DONE;
    }
out:
    if (reserved)
        ring_cancel(c, slot);
    close_fd(&objfd);
    return ret;
}

/* Handle one notification completely (FP_DONE) or not at all (FP_PASS). */
static int fp_handle(struct aarm_fast_ctx *c, const struct aarm_notif *n)
{
    if (!atomic_load_explicit(&c->enabled, memory_order_acquire))
        return FP_PASS;
    if (n->data.arch != AUDIT_ARCH_X86_64)
        return FP_PASS;
    uint32_t tid = n->pid;
    if (tid == 0 || tid > INT_MAX)
        return FP_PASS;

    const uint64_t *a = n->data.args;
    int op;
    int32_t dirfd = AT_FDCWD;
    uint64_t pptr;
    uint32_t flags = 0, mode = 0;
    int64_t times[4];
    int have_times = 0;
    switch (n->data.nr) {
    case NR_OPEN:
        op = OP_OPEN; pptr = a[0]; flags = (uint32_t)a[1]; mode = (uint32_t)a[2];
        break;
    case NR_OPENAT:
        op = OP_OPEN; dirfd = as_int32(a[0]); pptr = a[1];
        flags = (uint32_t)a[2]; mode = (uint32_t)a[3];
        break;
    case NR_CREAT:
        op = OP_OPEN; pptr = a[0]; flags = O_CREAT | O_WRONLY | O_TRUNC; mode = (uint32_t)a[1];
        break;
    case NR_UNLINK:
        op = OP_UNLINK; pptr = a[0];
        break;
    case NR_UNLINKAT:
        op = OP_UNLINK; dirfd = as_int32(a[0]); pptr = a[1];
        if (a[2] != 0 && a[2] != AT_REMOVEDIR)
            return FP_PASS;             /* invalid flags: Python answers EINVAL */
        flags = (uint32_t)a[2];
        break;
    case NR_RMDIR:
        op = OP_UNLINK; pptr = a[0]; flags = AT_REMOVEDIR;
        break;
    case NR_MKDIR:
        op = OP_MKDIR; pptr = a[0]; mode = (uint32_t)a[1];
        break;
    case NR_MKDIRAT:
        op = OP_MKDIR; dirfd = as_int32(a[0]); pptr = a[1]; mode = (uint32_t)a[2];
        break;
    case NR_CHMOD:
        op = OP_CHMOD; pptr = a[0]; mode = (uint32_t)a[1];
        break;
    case NR_FCHMODAT2:
        if (a[3] != 0)
            return FP_PASS;             /* AT_SYMLINK_NOFOLLOW, AT_EMPTY_PATH: Python */
        /* fallthrough: without flags, fchmodat2 is fchmodat */
    case NR_FCHMODAT:
        op = OP_CHMOD; dirfd = as_int32(a[0]); pptr = a[1]; mode = (uint32_t)a[2];
        break;
    case NR_UTIMENSAT:
        /* No flags (AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW and invalid flags: Python).  The
         * two timespecs are read once (none: now); the kernel judges them.  No path:
         * futimens on the dirfd. */
        if (a[3] != 0 || !c->kinds[AARM_FAST_UTIME].enabled)
            return FP_PASS;
        if (a[2] != 0) {
            if (aarm_read_mem((int)tid, a[2], times, sizeof times) != (int64_t)sizeof times)
                return FP_PASS;
            have_times = 1;
        }
        if (a[1] == 0)
            return fp_handle_fd(c, n, tid, AARM_FAST_UTIME, as_int32(a[0]), 0,
                                have_times ? times : NULL);
        op = OP_UTIME; dirfd = as_int32(a[0]); pptr = a[1];
        break;
    case NR_FCHMOD:
        return fp_handle_fd(c, n, tid, AARM_FAST_CHMOD, as_int32(a[0]), (uint32_t)a[1], NULL);
    default:
        return FP_PASS;
    }

    /* Cheap rejections before any syscall. */
    if (op == OP_OPEN) {
        if (flags & (O_PATH | FP_O_TMPFILE_BIT | O_DIRECTORY))
            return FP_PASS;
        uint32_t acc = flags & O_ACCMODE;
        if (acc == O_ACCMODE)
            return FP_PASS;
        if (acc == O_RDONLY && !(flags & (O_CREAT | O_TRUNC)))
            return FP_PASS;             /* no write intent: a read */
        if (!c->kinds[AARM_FAST_WRITE].enabled &&
            !((flags & O_CREAT) && c->kinds[AARM_FAST_CREATE].enabled))
            return FP_PASS;
    } else if (!c->kinds[OP_KIND[op]].enabled) {
        return FP_PASS;
    }
    if (pptr == 0)
        return FP_PASS;

    /* 1. The path, read once. */
    char path[FP_PATH_MAX];
    int64_t plen = aarm_read_cstr((int)tid, pptr, path, FP_PATH_MAX);
    if (plen <= 0 || plen >= FP_PATH_MAX)
        return FP_PASS;
    /* 2. Shape.  A relative path's leading "./" (tar, find, make: "./src/x.o") names
     * the same directory it starts from, so it is dropped; any other "." or ".."
     * component goes to Python. */
    if (path[0] != '/') {
        int64_t off = 0;
        while (off + 1 < plen && path[off] == '.' && path[off + 1] == '/') {
            off += 2;
            while (off < plen && path[off] == '/')
                off++;
        }
        if (off) {
            memmove(path, path + off, (size_t)(plen - off) + 1);
            plen -= off;
        }
    }
    if (!path_is_simple(path, (size_t)plen))
        return FP_PASS;
    int absolute = path[0] == '/';
    if (!absolute && dirfd != AT_FDCWD && dirfd < 0)
        return FP_PASS;                 /* EBADF: Python answers it */
    /* Absolute without "//" (and, as checked, without "." / ".."): once the
     * parent is reached without meeting a symlink, the text is the canonical
     * path (as in Resolver.parent with a session root). */
    int text_canonical = absolute && !memmem(path, (size_t)plen, "//", 2);

    int ret = FP_PASS;
    int cwd = -1, pfd = -1, opened = -1, nosym = -1;
    int reserved = 0;
    int unit = 0;                   /* 1: a budget unit taken and not yet spent */
    uint64_t slot = 0;
    int parent;
    const char *name;
    size_t namelen, clen;
    char canon[AARM_FAST_RECORD_PATH_MAX];
    int kind = AARM_FAST_WRITE, serr;
    struct stat st;
    unsigned um = 0;
    int64_t result;
    int performed = -1;             /* an open: 1 when it happened, whatever the answer */
    int intent_written = 0;         /* handed over after this: Python must settle the intent */

    /* 3 + 4. Base and pinned parent directory. */
    char *slash = memrchr(path, '/', (size_t)plen);
    if (absolute) {
        name = slash + 1;
        int only_slashes = 1;
        for (char *q = path; q < slash; q++)
            if (*q != '/') {
                only_slashes = 0;
                break;
            }
        if (only_slashes) {
            parent = c->root_fd;
        } else if ((op == OP_OPEN || op == OP_CHMOD || op == OP_UTIME) && text_canonical) {
            /* Pinned only if the decision needs an lstat (below); otherwise the open
             * itself walks the whole path once, with the parent walk's guarantees. */
            parent = -1;
        } else if ((op == OP_UNLINK || op == OP_MKDIR) && text_canonical &&
                   (nosym = atomic_load_explicit(&c->nosym_fd, memory_order_acquire)) >= 0) {
            /* unlinkat/mkdirat walk the whole path through the copy of the tree that
             * follows no symlink (a symlink on the way: ELOOP, handed over below): the
             * object reached is the one the canonical text names, as with a pinned parent. */
            parent = -1;
        } else {
            *slash = '\0';
            pfd = sys_openat2(c->root_fd, path, O_PATH | O_DIRECTORY | O_CLOEXEC,
                              RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_IN_ROOT);
            if (pfd < 0)
                goto out;
            parent = pfd;
        }
    } else {
        /* The calling thread's cwd, or the directory its dirfd refers to: the
         * magic link pins the very object (as Resolver does); not a directory,
         * or any other failure -> Python, which answers as the kernel would. */
        char cname[48];
        size_t k = put_u(cname, tid);
        if (dirfd == AT_FDCWD) {
            memcpy(cname + k, "/cwd", sizeof("/cwd"));
        } else {
            memcpy(cname + k, "/fd/", 4);
            cname[k + 4 + put_u(cname + k + 4, (unsigned long)dirfd)] = '\0';
        }
        cwd = openat(c->proc_fd, cname, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (cwd < 0)
            goto out;
        if (!slash) {
            name = path;
            parent = cwd;
        } else {
            name = slash + 1;
            *slash = '\0';
            pfd = sys_openat2(cwd, path, O_PATH | O_DIRECTORY | O_CLOEXEC,
                              RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
            if (pfd < 0)
                goto out;
            parent = pfd;
        }
    }
    namelen = (size_t)plen - (size_t)(name - path);

    /* 5. Canonical path. */
    if (text_canonical) {
        memcpy(canon, path, (size_t)plen);
        canon[slash - path] = '/';      /* restore what the parent lookup cut */
        clen = (size_t)plen;
    } else {
        ssize_t dl = fd_path(c, parent, canon);
        if (dl <= 0)
            goto out;
        while (dl > 1 && canon[dl - 1] == '/')
            dl--;
        clen = (size_t)dl;
        if (clen > 1)
            canon[clen++] = '/';
        if (clen + namelen > sizeof(canon))
            goto out;
        memcpy(canon + clen, name, namelen);
        clen += namelen;
    }

    /* 6+7. Kind and decision.  The common cases need no lstat of the last name: the
     * operation itself (on the pinned parent, no symlink followed / O_EXCL) tells what was there,
     * and every outcome is either what the kernel would have answered or a hand-over
     * to Python before anything happened.  This applies when every kind the outcome could
     * turn out to be is allowed for this path. */
    int probe = 0;          /* 1: open decided for WRITE and CREATE alike, kind found below */
    if (op == OP_OPEN) {
        if ((flags & O_ACCMODE) == O_RDONLY && !(flags & O_TRUNC))
            goto out;                   /* O_CREAT alone on an existing file: a read */
        if (!(flags & O_EXCL) && kind_allows(&c->kinds[AARM_FAST_WRITE], canon, clen) &&
            (!(flags & O_CREAT) || c->create_like_write ||
             kind_allows(&c->kinds[AARM_FAST_CREATE], canon, clen))) {
            probe = 1;
            kind = AARM_FAST_WRITE;
        } else {
            if (parent < 0) {
                *slash = '\0';
                pfd = sys_openat2(c->root_fd, path, O_PATH | O_DIRECTORY | O_CLOEXEC,
                                  FP_RESOLVE_STRICT);
                *slash = '/';
                if (pfd < 0)
                    goto out;
                parent = pfd;
            }
            serr = fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : errno;
            if (serr == 0) {
                if ((flags & O_CREAT) && (flags & O_EXCL))
                    goto out;           /* EEXIST: Python answers it */
                if (!S_ISREG(st.st_mode))
                    goto out;           /* symlink, fifo, device, directory... */
                kind = AARM_FAST_WRITE;
            } else if (serr == ENOENT && (flags & O_CREAT)) {
                kind = AARM_FAST_CREATE;
            } else {
                goto out;
            }
            if (!kind_allows(&c->kinds[kind], canon, clen))
                goto out;
        }
    } else {
        /* unlinkat answers EISDIR/ENOTDIR/ENOENT/ENOTEMPTY itself, mkdirat EEXIST */
        kind = OP_KIND[op];
        if (!kind_allows(&c->kinds[kind], canon, clen) || !take_unit(c, kind, canon, clen, &unit))
            goto out;
    }
    if (op == OP_CHMOD || op == OP_UTIME) {
        /* chmod, utimensat: the object itself, pinned without following a last symlink
         * (both would follow it: Python), is what gets the mode or the times; a missing
         * name or any other lookup error -> Python, which answers as the kernel would. */
        do {
            opened = parent >= 0 ? openat(parent, name, O_PATH | O_NOFOLLOW | O_CLOEXEC)
                                 : sys_openat2(c->root_fd, path, O_PATH | O_NOFOLLOW | O_CLOEXEC,
                                               FP_RESOLVE_STRICT);
        } while (opened < 0 && errno == EINTR);
        if (opened < 0 || fstat(opened, &st) != 0 || S_ISLNK(st.st_mode))
            goto out;
    }
    if (((kind == AARM_FAST_CREATE || kind == AARM_FAST_MKDIR) || (probe && (flags & O_CREAT))) &&
        get_umask(c, tid, &um) < 0)
        goto out;

    /* 11 (first half) and 8: the record slot, the acting program, still pending? */
    {
        int go = reserve_and_check(c, n, tid, &slot, &reserved);
        if (go != FP_GO) {
            ret = go;
            goto out;
        }
    }

    /* 9. The intent line, immediately before the operation (creat() has
     * O_TRUNC in flags).  Every O_TRUNC open gets one, whatever its kind: a
     * probe does not know yet whether there is a file to truncate. */
    if (op == OP_UNLINK || (op == OP_OPEN && (flags & O_TRUNC))) {
        int wi = write_intent(c, n, tid, op == OP_UNLINK ? "file.delete" : "file.write",
                              canon, clen);
        if (wi < 0)
            goto out;                   /* nothing performed: Python decides (and fails closed) */
        intent_written = wi > 0;
    }

    /* 10. Perform and answer. */
    if (kind == AARM_FAST_WRITE || kind == AARM_FAST_CREATE) {
        /* O_NONBLOCK so that a name swapped for a FIFO between the lstat and
         * the open can never block this thread; it is cleared again below. */
        int oflags = (int)(flags | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        /* An exclusive create only ever opens the regular file it makes (an existing
         * name of any type is EEXIST), so it cannot block: no O_NONBLOCK to add, and
         * none to clear with F_SETFL afterwards (one syscall less per new file). */
        int excl = (oflags & ~O_NONBLOCK) | (int)(flags & O_NONBLOCK) | O_CREAT | O_EXCL;
        int nb_added = 0;           /* the open that succeeded added O_NONBLOCK */
        mode_t m = (mode_t)((mode & 07777) & ~um);
        if (kind == AARM_FAST_WRITE)
            oflags &= ~(O_CREAT | O_EXCL);
        /* A probe (O_CREAT, write and create both allowed) tries first what the last
         * probe turned out to be: a loop creating new files then walks the path once,
         * not twice (ENOENT, then create).  Creating exclusively first, an existing
         * name of any type answers EEXIST and the plain open below decides, exactly
         * as when it goes first; the order changes nothing else. */
        int create_first = probe && (flags & O_CREAT) &&
                           atomic_load_explicit(&c->probe_created, memory_order_relaxed);
        if (create_first) {
            opened = open_target(c, parent, path, name, excl, m);
            if (opened >= 0 || errno != EEXIST)
                kind = AARM_FAST_CREATE;
        }
        if (!create_first || kind == AARM_FAST_WRITE) {
            /* A create decided on an absent name creates exclusively: a name that
             * appeared since the lstat goes to Python, never opened as a write. */
            int f = (kind == AARM_FAST_CREATE || (oflags & O_EXCL)) ? excl : oflags;
            opened = open_target(c, parent, path, name, f, kind == AARM_FAST_CREATE ? m : 0);
            nb_added = f == oflags && !(flags & O_NONBLOCK);
        }
        if (opened < 0 && probe && !create_first && errno == ENOENT && (flags & O_CREAT)) {
            /* Not there: create it, exclusively (a name appearing meanwhile -> Python).
             * Without O_CREAT, ENOENT is simply the kernel's own answer. */
            kind = AARM_FAST_CREATE;
            opened = open_target(c, parent, path, name, excl, m);
            nb_added = 0;
            if (opened < 0 && errno == EEXIST)
                goto out;
        }
        if (probe && (flags & O_CREAT) && opened >= 0)
            atomic_store_explicit(&c->probe_created, kind == AARM_FAST_CREATE,
                                  memory_order_relaxed);
        if (opened < 0) {
            int e = errno;
            /* Walking the whole path (no pinned parent), ELOOP may come from a directory
             * symlink the kernel would have followed: Python resolves it. */
            if (parent < 0 && e == ELOOP)
                goto out;
            /* Nothing happened.  Failures that only what we changed can
             * cause (the name was swapped since the lstat) go to Python,
             * which redoes the call with the caller's exact semantics. */
            if ((!(flags & O_NONBLOCK) && (e == EAGAIN || e == ENXIO)) ||
                (!(flags & O_NOFOLLOW) && e == ELOOP) ||
                (kind == AARM_FAST_WRITE && (flags & O_CREAT) && e == ENOENT) ||
                (kind == AARM_FAST_CREATE && !(flags & O_EXCL) && e == EEXIST))
                goto out;
            result = -e;
            answer(c, n->id, result);
        } else {
            /* If the name was swapped for another object since the lstat, what
             * got opened is what the target's own open would have opened at this
             * instant (same pinned directory, same name, no symlink followed; a FIFO opens
             * only if a reader is there, thanks to O_NONBLOCK): install it. */
            int r = 0;
            if (nb_added) {
                /* F_SETFL takes only the status flags (O_APPEND, O_DIRECT, O_NOATIME,
                 * O_ASYNC, O_NONBLOCK) and ignores the rest: the open flags minus
                 * O_NONBLOCK are exactly the caller's, without an F_GETFL round trip. */
                if (fcntl(opened, F_SETFL, oflags & ~(O_NONBLOCK | O_ASYNC)) < 0)
                    r = -errno;         /* performed (maybe created): answer it */
            }
            performed = 1;
            if (r == 0) {
                r = aarm_notif_addfd(c->listener, n->id, opened, 0,
                                     (flags & O_CLOEXEC) ? O_CLOEXEC : 0,
                                     SECCOMP_ADDFD_FLAG_SEND);
                if (r == -EINPROGRESS)
                    kill((pid_t)tid, SIGKILL);  /* answer lost (see aarm_notif_addfd) */
                else if (r < 0 && r != -ENOENT) {
                    /* The caller's fd table is full (EMFILE): natively nothing would have
                     * happened.  A file this open created is removed again; a truncation
                     * cannot be undone, and the record says it was performed. */
                    if (r == -EMFILE && kind == AARM_FAST_CREATE) {
                        if (parent < 0) {       /* the open walked the whole path */
                            *slash = '\0';
                            pfd = sys_openat2(c->root_fd, path, O_PATH | O_DIRECTORY | O_CLOEXEC,
                                              FP_RESOLVE_STRICT);
                            *slash = '/';
                            parent = pfd;
                        }
                        if (parent >= 0 && undo_create(parent, name, opened))
                            performed = 0;
                    }
                    aarm_notif_send(c->listener, n->id, 0, r, 0);
                }
            } else {
                aarm_notif_send(c->listener, n->id, 0, r, 0);
            }
            close_fd(&opened);
            result = r;
        }
    } else if (kind == AARM_FAST_DELETE || kind == AARM_FAST_MKDIR) {
        /* On the pinned parent, or (parent < 0) the whole canonical path from the
         * no-symlink tree, where ELOOP means a symlink on the way: nothing happened,
         * and Python resolves it as the kernel would have. */
        int base = parent >= 0 ? parent : nosym;
        const char *at = parent >= 0 ? name : path + 1;
        int r;
        do {
            r = kind == AARM_FAST_DELETE ? unlinkat(base, at, (int)(flags & AT_REMOVEDIR))
                                         : mkdirat(base, at, (mode_t)((mode & 07777) & ~um));
        } while (r < 0 && errno == EINTR);
        if (r < 0 && parent < 0 && errno == ELOOP)
            goto out;
        result = r < 0 ? -errno : 0;
        answer(c, n->id, result);
    } else if (kind == AARM_FAST_CHMOD) {
        /* chmod through the pinned object's /proc/self/fd link: the very inode decided on */
        char fdname[24];
        fdname[put_u(fdname, (unsigned long)opened)] = '\0';
        int r;
        do {
            r = fchmodat(c->selffd_fd, fdname, (mode_t)(mode & 07777), 0);
        } while (r < 0 && errno == EINTR);
        result = r < 0 ? -errno : 0;
        answer(c, n->id, result);
    } else {
        /* utimensat on the pinned object itself (as ObjectCall "utime" does) */
        int r = aarm_utimensat(opened, "", have_times ? times : NULL, AT_EMPTY_PATH);
        result = r;
        answer(c, n->id, result);
    }

    /* 11 (second half). The record. */
    put_record(c, slot, n, tid, kind, op == OP_MKDIR || op == OP_UTIME ? 0 :
               op == OP_CHMOD ? (mode & 07777) : flags, result, (uint32_t)unit,
               performed < 0 ? result >= 0 : (uint32_t)performed, canon, clen);
    reserved = 0;
    unit = 0;                           /* spent: Python counts it, or gives it back */
    ret = FP_DONE;

out:
    if (ret == FP_PASS && intent_written)
        ret = FP_PASS_INTENT;
    if (unit)                           /* taken, nothing performed: give it back */
        atomic_fetch_add(&c->budget[kind], 1);
    if (reserved)
        ring_cancel(c, slot);
    close_fd(&opened);
    close_fd(&pfd);
    close_fd(&cwd);
    return ret;
}

int aarm_fast_set_nosym_root(struct aarm_fast_ctx *c, int fd)
{
    if (!c || fd < 0)
        return -EINVAL;
    /* The copy's root is the session root itself (same directory), and its mount
     * follows no symlink: anything else is refused, and the parents stay pinned. */
    struct stat a, b;
    struct statvfs v;
    if (fstat(fd, &a) != 0 || fstat(c->root_fd, &b) != 0)
        return -errno;
    if (!S_ISDIR(a.st_mode) || a.st_dev != b.st_dev || a.st_ino != b.st_ino)
        return -EINVAL;
    if (fstatvfs(fd, &v) != 0)
        return -errno;
    if (!(v.f_flag & FP_ST_NOSYMFOLLOW))
        return -EINVAL;
    int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0)
        return -errno;
    int expected = -1;
    if (!atomic_compare_exchange_strong(&c->nosym_fd, &expected, dup)) {
        close(dup);
        return -EBUSY;
    }
    return 0;
}

int aarm_fast_next(struct aarm_fast_ctx *c, struct aarm_notif *out)
{
    if (!c || !out)
        return -EINVAL;
    aarm_claim_clear();                 /* in C now: background Python may run */
    for (;;) {
        memset(out, 0, sizeof(*out));
        if (ioctl(c->listener, SECCOMP_IOCTL_NOTIF_RECV, out) != 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            aarm_claim_set();
            return -e;
        }
        int r = fp_handle(c, out);
        if (r == FP_PASS || r == FP_PASS_INTENT) {
            if (r == FP_PASS_INTENT)
                out->flags |= AARM_NOTIF_FLAG_INTENT;
            aarm_claim_set();           /* Python's turn: see aarm_claim_set */
            return 0;
        }
    }
}

/* ------------------------------------------------------------------ */
/* construction                                                        */

static void free_globs(struct fp_glob *g, uint32_t n)
{
    if (!g)
        return;
    for (uint32_t i = 0; i < n; i++) {
        free(g[i].prefix);
        if (g[i].segs)
            for (uint32_t j = 0; j < g[i].nsegs; j++)
                free(g[i].segs[j]);
        free(g[i].segs);
        free(g[i].seg_lens);
    }
    free(g);
}

static int copy_globs(struct fp_glob **dst, const struct aarm_fast_glob *src, uint32_t n)
{
    *dst = NULL;
    if (n == 0)
        return 0;
    if (!src || n > FP_MAX_GLOBS)
        return -EINVAL;
    struct fp_glob *g = calloc(n, sizeof(*g));
    if (!g)
        return -ENOMEM;
    *dst = g;                           /* freed by the caller on error */
    for (uint32_t i = 0; i < n; i++) {
        const struct aarm_fast_glob *s = &src[i];
        if ((s->prefix_len && !s->prefix) || s->prefix_len > FP_MAX_TEXT ||
            (s->nsegments && !s->segments) || s->nsegments > FP_MAX_SEGMENTS)
            return -EINVAL;
        g[i].prefix = malloc(s->prefix_len + 1u);
        if (!g[i].prefix)
            return -ENOMEM;
        if (s->prefix_len)
            memcpy(g[i].prefix, s->prefix, s->prefix_len);
        g[i].prefix[s->prefix_len] = '\0';
        g[i].prefix_len = s->prefix_len;
        g[i].exact = s->exact ? 1 : 0;
        g[i].anchored = s->anchored && s->nsegments ? 1 : 0;
        if (s->nsegments) {
            g[i].segs = calloc(s->nsegments, sizeof(char *));
            g[i].seg_lens = calloc(s->nsegments, sizeof(uint32_t));
            if (!g[i].segs || !g[i].seg_lens)
                return -ENOMEM;
            g[i].nsegs = s->nsegments;
            for (uint32_t j = 0; j < s->nsegments; j++) {
                if (!s->segments[j])
                    return -EINVAL;
                size_t l = strnlen(s->segments[j], FP_MAX_TEXT + 1);
                if (l > FP_MAX_TEXT)
                    return -EINVAL;
                g[i].segs[j] = malloc(l + 1);
                if (!g[i].segs[j])
                    return -ENOMEM;
                memcpy(g[i].segs[j], s->segments[j], l + 1);
                g[i].seg_lens[j] = (uint32_t)l;
            }
        }
    }
    return 0;
}

/* The first component every path a danger glob may match starts with, or 0.
 * may_match needs the path to start with the prefix, or (trailing-slash case)
 * to equal the prefix without its last '/': either way the path's first
 * component is the prefix's when the prefix holds a second '/'; an exact glob
 * is the path itself. */
static uint32_t glob_comp_len(const struct fp_glob *g)
{
    if (g->prefix_len == 0 || g->prefix[0] != '/')
        return 0;
    size_t l = first_comp_len(g->prefix, g->prefix_len);
    return l < g->prefix_len || g->exact ? (uint32_t)l : 0;
}

static int cmp_comp(const void *a, const void *b)
{
    const struct fp_glob *x = a, *y = b;
    if (x->comp_len == 0 || y->comp_len == 0)
        return (x->comp_len != 0) - (y->comp_len != 0);     /* anywhere first */
    uint32_t m = x->comp_len < y->comp_len ? x->comp_len : y->comp_len;
    int r = memcmp(x->prefix, y->prefix, m);
    return r ? r : (x->comp_len > y->comp_len) - (x->comp_len < y->comp_len);
}

static int globs_equal(const struct fp_glob *a, uint32_t na, const struct fp_glob *b, uint32_t nb)
{
    if (na != nb)
        return 0;
    for (uint32_t i = 0; i < na; i++) {
        if (a[i].prefix_len != b[i].prefix_len || a[i].exact != b[i].exact ||
            a[i].anchored != b[i].anchored ||
            a[i].nsegs != b[i].nsegs || memcmp(a[i].prefix, b[i].prefix, a[i].prefix_len) != 0)
            return 0;
        for (uint32_t j = 0; j < a[i].nsegs; j++)
            if (a[i].seg_lens[j] != b[i].seg_lens[j] ||
                memcmp(a[i].segs[j], b[i].segs[j], a[i].seg_lens[j]) != 0)
                return 0;
    }
    return 1;
}

/* Compared after grouping: both kinds' danger lists went through the same sort. */
static int kinds_equal(const struct fp_kind *a, const struct fp_kind *b)
{
    return a->enabled && b->enabled &&
           globs_equal(a->allow, a->nallow, b->allow, b->nallow) &&
           globs_equal(a->danger, a->ndanger, b->danger, b->ndanger);
}

static int group_danger(struct fp_kind *k)
{
    for (uint32_t i = 0; i < k->ndanger; i++)
        k->danger[i].comp_len = glob_comp_len(&k->danger[i]);
    if (k->ndanger > 1)
        qsort(k->danger, k->ndanger, sizeof(*k->danger), cmp_comp);
    uint32_t i = 0;
    while (i < k->ndanger && k->danger[i].comp_len == 0)
        i++;
    k->nanywhere = i;
    if (i == k->ndanger)
        return 0;
    k->groups = calloc(k->ndanger - i, sizeof(*k->groups));
    if (!k->groups)
        return -ENOMEM;
    for (; i < k->ndanger; i++) {
        const struct fp_glob *g = &k->danger[i];
        struct fp_group *last = k->ngroups ? &k->groups[k->ngroups - 1] : NULL;
        if (last && last->len == g->comp_len && memcmp(last->comp, g->prefix, g->comp_len) == 0) {
            last->end = i + 1;
            continue;
        }
        k->groups[k->ngroups++] = (struct fp_group){ g->prefix, g->comp_len, i, i + 1 };
    }
    return 0;
}

void aarm_fast_free(struct aarm_fast_ctx *c)
{
    if (!c)
        return;
    for (int k = 0; k < AARM_FAST_NKINDS; k++) {
        free_globs(c->kinds[k].allow, c->kinds[k].nallow);
        free_globs(c->kinds[k].danger, c->kinds[k].ndanger);
        free_globs(c->kinds[k].counted, c->kinds[k].ncounted);
        free(c->kinds[k].groups);
    }
    close_fd(&c->root_fd);
    {
        int nfd = atomic_exchange(&c->nosym_fd, -1);
        close_fd(&nfd);
    }
    close_fd(&c->proc_fd);
    close_fd(&c->selffd_fd);
    close_fd(&c->wake_fd);
    for (struct fp_intent *in = c->intent_all, *next; in; in = next) {
        next = in->next_alloc;
        close_fd(&in->fd);
        free(in);
    }
    pthread_mutex_destroy(&c->intent_lock);
    pthread_mutex_destroy(&c->exe_lock);
    pthread_mutex_destroy(&c->umask_lock);
    free(c->exe_tab);
    pthread_mutex_destroy(&c->ring_lock);
    pthread_mutex_destroy(&c->drain_lock);
    if (c->ring)
        munmap(c->ring, c->ring_bytes);
    free((void *)c->ready);
    free(c);
}

struct aarm_fast_ctx *aarm_fast_new(int listener, int root_fd,
                                    const struct aarm_fast_kind *kinds,
                                    uint32_t ring_capacity)
{
    if (listener < 0 || root_fd < 0 || !kinds || ring_capacity > FP_RING_MAX) {
        errno = EINVAL;
        return NULL;
    }
    struct aarm_fast_ctx *c = calloc(1, sizeof(*c));
    if (!c) {
        errno = ENOMEM;
        return NULL;
    }
    c->listener = listener;
    c->root_fd = c->proc_fd = c->selffd_fd = c->wake_fd = -1;
    pthread_mutex_init(&c->ring_lock, NULL);
    pthread_mutex_init(&c->drain_lock, NULL);
    pthread_mutex_init(&c->intent_lock, NULL);
    pthread_mutex_init(&c->exe_lock, NULL);
    pthread_mutex_init(&c->umask_lock, NULL);
    c->exe_tab = calloc(FP_EXE_SLOTS, sizeof(struct fp_exe_slot));
    if (!c->exe_tab) {
        pthread_mutex_destroy(&c->umask_lock);
        pthread_mutex_destroy(&c->exe_lock);
        pthread_mutex_destroy(&c->intent_lock);
        pthread_mutex_destroy(&c->ring_lock);
        pthread_mutex_destroy(&c->drain_lock);
        free(c);
        errno = ENOMEM;
        return NULL;
    }
    atomic_init(&c->intent, NULL);
    atomic_init(&c->nosym_fd, -1);
    atomic_init(&c->enabled, 0);
    atomic_init(&c->dropped, 0);
    atomic_init(&c->umask_gen, 0);
    atomic_init(&c->probe_created, 0);
    for (unsigned i = 0; i < FP_UMASK_SLOTS; i++) {
        atomic_init(&c->umask_tab[i], 0);
        atomic_init(&c->umask_at[i], 0);
    }
    atomic_init(&c->umask_npending, 0);

    int e = 0;
    struct stat st;
    size_t slots;
    c->root_fd = fcntl(root_fd, F_DUPFD_CLOEXEC, 0);
    if (c->root_fd < 0) {
        e = errno;
        goto fail;
    }
    if (fstat(c->root_fd, &st) != 0 || !S_ISDIR(st.st_mode)) {
        e = ENOTDIR;
        goto fail;
    }
    c->proc_fd = open("/proc", O_PATH | O_DIRECTORY | O_CLOEXEC);
    c->selffd_fd = open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (c->proc_fd < 0 || c->selffd_fd < 0) {
        e = errno;
        goto fail;
    }
    for (int k = 0; k < AARM_FAST_NKINDS; k++) {
        const struct aarm_fast_kind *s = &kinds[k];
        int r = copy_globs(&c->kinds[k].allow, s->allow, s->nallow);
        c->kinds[k].nallow = c->kinds[k].allow ? s->nallow : 0;
        if (r < 0) {
            e = -r;
            goto fail;
        }
        r = copy_globs(&c->kinds[k].danger, s->danger, s->ndanger);
        c->kinds[k].ndanger = c->kinds[k].danger ? s->ndanger : 0;
        if (r == 0)
            r = group_danger(&c->kinds[k]);
        if (r < 0) {
            e = -r;
            goto fail;
        }
        if (s->ncounted && k != AARM_FAST_DELETE && k != AARM_FAST_MKDIR) {
            e = EINVAL;                 /* opens decide their kind late: no budget there */
            goto fail;
        }
        r = copy_globs(&c->kinds[k].counted, s->counted, s->ncounted);
        c->kinds[k].ncounted = c->kinds[k].counted ? s->ncounted : 0;
        if (r < 0) {
            e = -r;
            goto fail;
        }
        atomic_init(&c->budget[k], 0);
        c->kinds[k].enabled = s->enabled ? 1 : 0;
    }
    c->create_like_write = kinds_equal(&c->kinds[AARM_FAST_WRITE], &c->kinds[AARM_FAST_CREATE]);
    c->cap = ring_capacity;
    c->wake_at = ring_capacity / 8 ? ring_capacity / 8 : 1;
    c->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->wake_fd < 0) {
        e = errno;
        goto fail;
    }
    slots = ring_capacity ? ring_capacity : 1;
    c->ring_bytes = slots * sizeof(struct aarm_fast_record);
    c->ring = mmap(NULL, c->ring_bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (c->ring == MAP_FAILED)
        c->ring = NULL;
    c->ready = calloc(slots, sizeof(atomic_uchar));
    if (!c->ring || !c->ready) {
        e = ENOMEM;
        goto fail;
    }
    atomic_store(&c->enabled, 1);
    return c;

fail:
    aarm_fast_free(c);
    errno = e ? e : EINVAL;
    return NULL;
}
