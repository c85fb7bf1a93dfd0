/* Intent lines through a shared mapping of the intents file: see aarm_intentlog.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "aarm_intentlog.h"

/* Grown 1 MiB at a time (~6,000 intent lines: one fallocate per that many deletes). */
#define IL_CHUNK ((size_t)1 << 20)
/* Address space reserved for the mapping, none of it memory: a session writing more
 * intent lines than this (hundreds of millions) gets -EFBIG, and its deletes go to
 * Python, whose intent then fails closed too. */
#define IL_MAP_MAX ((size_t)1 << 36)

/* Filesystems whose stores into fallocated blocks of a shared mapping cannot fail later:
 * ext2/3/4, XFS and tmpfs.  Elsewhere (copy-on-write filesystems that need new blocks for
 * each write, network and FUSE filesystems) a store could raise SIGBUS in the supervisor;
 * the intents are written with write(2) there. */
static int mappable_fs(int fd)
{
    struct statfs sf;
    if (fstatfs(fd, &sf) != 0)
        return 0;
    switch ((unsigned long)sf.f_type) {
    case 0xEF53UL:          /* EXT2/3/4_SUPER_MAGIC */
    case 0x58465342UL:      /* XFS_SUPER_MAGIC */
    case 0x01021994UL:      /* TMPFS_MAGIC */
        return 1;
    default:
        return 0;
    }
}

/* A store into the mapping raises SIGBUS if someone else shortened the file (a host
 * process, logrotate's copytruncate: the sandbox cannot reach it).  The store is guarded:
 * the handler, installed once, jumps back out of a guarded store of this thread (the
 * append then fails with EIO, and so does every later one: fail closed, the supervisor
 * lives on to journal it); any other SIGBUS goes to what was there before, or, with the
 * default action, re-faults and kills as it would have. */
/* initial-exec: reading it in the handler never goes through __tls_get_addr (which may
 * allocate, not async-signal-safe) */
static __thread sigjmp_buf *volatile il_guard __attribute__((tls_model("initial-exec")));
static struct sigaction il_prev;
static pthread_once_t il_once = PTHREAD_ONCE_INIT;
static int il_handler_ok;

static void il_sigbus(int sig, siginfo_t *si, void *uc)
{
    sigjmp_buf *g = il_guard;
    if (g)
        siglongjmp(*g, 1);
    if (il_prev.sa_flags & SA_SIGINFO) {
        if (il_prev.sa_sigaction) {
            il_prev.sa_sigaction(sig, si, uc);
            return;
        }
    } else if (il_prev.sa_handler != SIG_DFL && il_prev.sa_handler != SIG_IGN) {
        il_prev.sa_handler(sig);
        return;
    }
    signal(SIGBUS, SIG_DFL);    /* returning re-runs the faulting access: the default kill */
}

static void il_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = il_sigbus;
    /* SA_NODEFER: SIGBUS stays unblocked while the handler runs, so jumping out of it
     * needs no signal mask restored (sigsetjmp without one: no system call a store) */
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    il_handler_ok = sigaction(SIGBUS, &sa, &il_prev) == 0;
}

struct aarm_intent_log {
    pthread_mutex_t lock;
    int fd;
    char *map;
    size_t used;        /* bytes of whole lines */
    size_t alloc;       /* bytes allocated by fallocate, = the file's size */
    int closed;
    int error;          /* a growth that failed: every later append fails the same way */
};

static int grow(struct aarm_intent_log *log, size_t need)
{
    if (need > IL_MAP_MAX)
        return -EFBIG;
    size_t want = (need + IL_CHUNK - 1) / IL_CHUNK * IL_CHUNK;
    int r;
    do {
        r = fallocate(log->fd, 0, (off_t)log->alloc, (off_t)(want - log->alloc));
    } while (r < 0 && errno == EINTR);
    if (r < 0)
        return -errno;
    log->alloc = want;
    return 0;
}

struct aarm_intent_log *aarm_intent_log_new(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return NULL;
    if (!S_ISREG(st.st_mode) || st.st_size != 0) {
        errno = EINVAL;
        return NULL;
    }
    if (!mappable_fs(fd)) {
        errno = EOPNOTSUPP;
        return NULL;
    }
    int acc = fcntl(fd, F_GETFL);
    if (acc < 0)
        return NULL;
    if ((acc & O_ACCMODE) != O_RDWR) {
        errno = EBADF;          /* a shared writable mapping needs read access too */
        return NULL;
    }
    struct aarm_intent_log *log = calloc(1, sizeof(*log));
    if (!log)
        return NULL;
    pthread_mutex_init(&log->lock, NULL);
    log->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    int e = 0;
    if (log->fd < 0) {
        e = errno;
        goto fail;
    }
    /* The first chunk now: a filesystem without fallocate is found at the start. */
    int r = grow(log, 1);
    if (r < 0) {
        e = -r;
        goto fail;
    }
    pthread_once(&il_once, il_install);
    if (!il_handler_ok) {
        e = EOPNOTSUPP;             /* no guarded stores: write(2) them */
        goto fail;
    }
    log->map = mmap(NULL, IL_MAP_MAX, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE,
                    log->fd, 0);
    if (log->map == MAP_FAILED) {
        e = errno;
        log->map = NULL;
        goto fail;
    }
    /* The sandbox's init is forked from this process after the journal is made: it must
     * not hold a writable mapping of the intents file for the session. */
    (void)madvise(log->map, IL_MAP_MAX, MADV_DONTFORK);
    return log;
fail:
    if (log->fd >= 0) {
        if (log->alloc)
            (void)ftruncate(log->fd, 0);    /* leave the file empty, as it was given */
        close(log->fd);
    }
    pthread_mutex_destroy(&log->lock);
    free(log);
    errno = e;
    return NULL;
}

int aarm_intent_log_append(struct aarm_intent_log *log, const char *line, size_t len)
{
    if (!log || !line)
        return -EINVAL;
    pthread_mutex_lock(&log->lock);
    int r = log->closed ? -EBADF : log->error;
    if (r == 0 && len > IL_MAP_MAX - log->used)
        r = -EFBIG;
    if (r == 0 && log->used + len > log->alloc) {
        r = grow(log, log->used + len);
        if (r < 0)
            log->error = r;
    }
    if (r == 0) {
        sigjmp_buf jb;
        if (sigsetjmp(jb, 0) == 0) {
            /* (signal fences: the compiler may neither drop the guard's stores around a
             * memcpy that does not read it nor move the copy outside them) */
            il_guard = &jb;
            __atomic_signal_fence(__ATOMIC_SEQ_CST);
            memcpy(log->map + log->used, line, len);
            __atomic_signal_fence(__ATOMIC_SEQ_CST);
            il_guard = NULL;
            log->used += len;
        } else {
            il_guard = NULL;        /* the file was shortened under the mapping */
            log->error = r = -EIO;
        }
    }
    pthread_mutex_unlock(&log->lock);
    return r;
}

size_t aarm_intent_log_used(struct aarm_intent_log *log)
{
    if (!log)
        return 0;
    pthread_mutex_lock(&log->lock);
    size_t u = log->used;
    pthread_mutex_unlock(&log->lock);
    return u;
}

int aarm_intent_log_close(struct aarm_intent_log *log)
{
    if (!log)
        return -EINVAL;
    pthread_mutex_lock(&log->lock);
    int r = 0;
    if (!log->closed) {
        log->closed = 1;
        munmap(log->map, IL_MAP_MAX);
        log->map = NULL;
        if (ftruncate(log->fd, (off_t)log->used) < 0)
            r = -errno;         /* the zero tail stays: readers stop at it */
        close(log->fd);
        log->fd = -1;
    }
    pthread_mutex_unlock(&log->lock);
    return r;
}
