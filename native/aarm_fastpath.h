/*
 * aarm_fastpath.h - native fast path for the hottest allowed file operations.
 *
 * See aarm_fastpath.c for the exact semantics.  Every function reports
 * failures as a negative errno (or NULL + errno for aarm_fast_new).
 *
 * Contracts for the caller (the Python supervisor):
 *  - Strings are bytes (os.fsencode); paths are canonical as readlink() of
 *    /proc/self/fd/N reports them.
 *  - allow globs: only exact ones and pure prefixes (nsegments == 0) ever
 *    allow; a pure prefix means "every path starting with it", so build them
 *    only from "X/<star><star>" globs (prefix "X/").  Allow globs with segments are
 *    ignored (they never allow).
 *  - danger globs: a conservative may-match (prefix, then segments in order,
 *    searched after the prefix; an anchored glob's last segment must end the
 *    path).  A last literal piece ending in '/' also
 *    matches a path that ends right before that '/' (a trailing
 *    "/<star><star>" matches the directory itself).
 *  - kinds are deep-copied by aarm_fast_new; root_fd is dup'ed (the caller
 *    may close its own); the listener is not owned.
 *  - aarm_fast_next may run in one or more threads while another thread
 *    drains, toggles enabled or invalidates the umask cache;
 *    aarm_fast_free only once no thread is inside any aarm_fast_* call.
 *  - Records come out of aarm_fast_drain in reservation order.  After
 *    aarm_fast_set_enabled(ctx, 0) returns no new operation starts; one that
 *    had already reserved its record slot completes and is recorded.
 *  - The supervisor's own umask must be 0 (modes are computed here).
 *  - The ring is allocated and pre-faulted at creation:
 *    ring_capacity * sizeof(struct aarm_fast_record) (~4.8 KiB) bytes
 *    (4.8 MiB for the default 1024 slots).
 *  - aarm_fast_set_intent may be called at any time, from any thread, also
 *    while loops run: the configuration is an immutable snapshot swapped
 *    atomically; an operation uses the snapshot it loaded right before its
 *    intent write (one that started before the call may still use the
 *    previous one).  The fd is dup'ed (the caller's own fd is never closed
 *    by C; the caller may close it right after the call); the dups of every
 *    snapshot stay open until aarm_fast_free, so a loop that loaded an older
 *    snapshot never writes to a recycled fd number.  The fd must be opened
 *    for writing with O_APPEND and must not block (a regular file).
 *  - A record's exe is /proc/TID/exe read while the caller is blocked in
 *    its syscall, cached per TID for 100 ms; the caller must call
 *    aarm_fast_invalidate_exe whenever it allows an exec: see exe_of() in
 *    aarm_fastpath.c for the exact argument and its limits.
 */
#ifndef AARM_FASTPATH_H
#define AARM_FASTPATH_H

#include <stdint.h>

#include "aarm_native.h"

/* A conservative "may match" test for one policy glob. */
struct aarm_fast_glob {
    const char *prefix;          /* literal text before the first wildcard */
    uint32_t prefix_len;
    int exact;                   /* 1: no wildcard: match iff path == prefix */
    const char *const *segments; /* NUL-terminated literal pieces after the prefix, in order */
    uint32_t nsegments;
    int anchored;                /* 1: the glob ends with its last piece: so must the path */
};

struct aarm_fast_kind {
    const struct aarm_fast_glob *allow;  uint32_t nallow;
    const struct aarm_fast_glob *danger; uint32_t ndanger;
    /* Counted globs (DELETE and MKDIR only): an allowed path that may-matches
     * one of them spends one unit of the kind's budget (aarm_fast_budget_add);
     * with none left the notification goes to the caller. */
    const struct aarm_fast_glob *counted; uint32_t ncounted;
    int enabled;
};

enum {
    AARM_FAST_WRITE = 0,
    AARM_FAST_CREATE = 1,
    AARM_FAST_DELETE = 2,
    AARM_FAST_MKDIR = 3,
    AARM_FAST_CHMOD = 4,
    AARM_FAST_UTIME = 5,
    AARM_FAST_NKINDS = 6
};

#define AARM_FAST_RECORD_PATH_MAX 4352
#define AARM_FAST_RECORD_EXE_MAX 512

struct aarm_fast_record {
    uint64_t ts_ns;              /* CLOCK_REALTIME */
    uint64_t notif_id;           /* the seccomp notification id */
    uint32_t tid;
    int32_t nr;
    int32_t kind;                /* AARM_FAST_* */
    uint32_t flags;              /* open flags / unlinkat flags / chmod mode / 0 */
    uint32_t counted;            /* 1: spent a budget unit (a counted glob may match) */
    uint32_t performed;          /* 1: the operation happened (an open whose fd could not be
                                  * installed, EMFILE, has result < 0 and performed 1) */
    int64_t result;              /* fd number / 0 / -errno */
    uint32_t exe_len;            /* 0: unknown (process gone, or link >= EXE_MAX bytes) */
    uint32_t path_len;
    char exe[AARM_FAST_RECORD_EXE_MAX];   /* /proc/TID/exe, not NUL-terminated */
    char path[AARM_FAST_RECORD_PATH_MAX]; /* canonical path, not NUL-terminated */
};

struct aarm_fast_ctx;

/* Set in the flags of a notification aarm_fast_next hands over after it wrote an intent
 * line for it (an unlink met a symlink on its way, an O_TRUNC open changed kind): the
 * caller must journal a record naming its notif, whatever it answers, or the intent
 * would read as an action that may have happened unrecorded. */
#define AARM_NOTIF_FLAG_INTENT 0x80000000u

struct aarm_fast_ctx *aarm_fast_new(int listener, int root_fd,
                                    const struct aarm_fast_kind *kinds,
                                    uint32_t ring_capacity);
void aarm_fast_free(struct aarm_fast_ctx *ctx);
void aarm_fast_set_enabled(struct aarm_fast_ctx *ctx, int enabled);
int aarm_fast_next(struct aarm_fast_ctx *ctx, struct aarm_notif *out);
int aarm_fast_drain(struct aarm_fast_ctx *ctx, struct aarm_fast_record *out, int max);
uint64_t aarm_fast_dropped(struct aarm_fast_ctx *ctx);
/* An eventfd (nonblocking, owned by ctx) that becomes readable when the ring
 * holds ring_capacity/8 records: wait on it (with a timeout for stragglers),
 * read it, then drain.  Writing to it wakes the waiter too. */
int aarm_fast_wake_fd(struct aarm_fast_ctx *ctx);
void aarm_fast_invalidate_umask(struct aarm_fast_ctx *ctx);
/* A umask(mask) call by tid is about to be answered CONTINUE: until /proc/TID/status
 * shows mask (or the thread is gone), umasks are read fresh and not cached. */
void aarm_fast_umask_pending(struct aarm_fast_ctx *ctx, uint32_t tid, unsigned mask);
void aarm_fast_invalidate_exe(struct aarm_fast_ctx *ctx);
/* Intent lines: before an unlink or an O_TRUNC open is performed, one line
 *   PREFIX "notif":ID,"action":"file.delete|file.write","syscall":"NAME",
 *   "tid":TID,"target":{"b64":"BASE64"}}\n
 * is written to fd with a single write(2); when it fails or is short, the
 * notification is handed to the caller instead.  fd -1 turns intents off.
 * prefix (<= AARM_FAST_INTENT_PREFIX_MAX bytes, no newline) is copied. */
#define AARM_FAST_INTENT_PREFIX_MAX 1024
int aarm_fast_set_intent(struct aarm_fast_ctx *ctx, int fd, const char *prefix,
                         uint32_t prefix_len);
/* The same lines appended to a mapped intents file (aarm_intentlog.h) instead of written
 * with write(2); NULL turns intents off.  The log must stay valid (it is never freed). */
struct aarm_intent_log;
int aarm_fast_set_intent_log(struct aarm_fast_ctx *ctx, struct aarm_intent_log *log,
                             const char *prefix, uint32_t prefix_len);
/* Adds delta (may be negative) to a kind's budget of counted operations and
 * returns the new value; the loop spends a unit only while the budget is > 0
 * (it starts at 0).  Thread-safe. */
int64_t aarm_fast_budget_add(struct aarm_fast_ctx *ctx, int kind, int64_t delta);
/* fd: a detached copy of the session's mount tree with MOUNT_ATTR_NOSYMFOLLOW on every
 * mount, whose root is the session root (dup'ed; once).  Deletes and mkdirs of
 * canonical absolute paths then walk it instead of pinning each parent directory.
 * -EINVAL for anything else (not that root, or its mount follows symlinks), -EBUSY
 * when set already. */
int aarm_fast_set_nosym_root(struct aarm_fast_ctx *ctx, int fd);

#endif /* AARM_FASTPATH_H */
