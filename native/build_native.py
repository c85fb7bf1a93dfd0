"""cffi (out-of-line, API mode) builder for ``aarm_sandbox._native``.

Used by setuptools through ``setup(cffi_modules=["native/build_native.py:ffibuilder"])``.
For development it can also be run directly to build the extension in place::

    python3 native/build_native.py            # -> aarm_sandbox/_native.*.so

Only gcc, the Python headers, libffi and OpenSSL's libcrypto (headers: libssl-dev) are
needed (no libseccomp).
"""

from __future__ import annotations

import os
import sys

from cffi import FFI

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)


def _rel(path: str) -> str:
    """setuptools wants source paths relative to the setup.py directory."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


CDEF = r"""
struct seccomp_notif_data {
    int nr;
    uint32_t arch;
    uint64_t instruction_pointer;
    uint64_t args[6];
};

struct aarm_notif {
    uint64_t id;
    uint32_t pid;
    uint32_t flags;
    struct seccomp_notif_data data;
};

struct aarm_spawn_config {
    char *const *argv;
    char *const *envp;
    const char *cwd;
    const void *bpf;
    unsigned int bpf_len;
    unsigned int seccomp_flags;
    int clone_flags;
    unsigned int outer_uid, outer_gid;
    char *const *mask_dirs;
    char *const *mask_files;
    int mount_proc;
    int drop_caps;
    int loopback_up;             /* with CLONE_NEWNET: bring lo up (else the namespace has no network at all) */
    int private_shm;
    char *const *bind_files;
    char *const *view_hide;
    int *out_dns_stub;
    int *out_nosym_root;
};

int aarm_spawn(const struct aarm_spawn_config *cfg, int *out_listener,
               int *out_status_fd, char *err, size_t errlen);
int aarm_read_status(int status_fd, int *out_wait_status);

int aarm_notif_recv(int listener, struct aarm_notif *n);
void aarm_claim_set(void);
void aarm_claim_clear(void);
const int *aarm_claim_ptr(void);
int aarm_yield_to_decisions(int64_t timeout_ns);
int aarm_notif_send(int listener, uint64_t id, int64_t val, int32_t error,
                    uint32_t flags);
int aarm_notif_id_valid(int listener, uint64_t id);
int aarm_notif_addfd(int listener, uint64_t id, int srcfd, uint32_t newfd,
                     uint32_t newfd_flags, uint32_t flags);
int aarm_notif_set_flags(int listener, uint64_t flags);
int aarm_seccomp_feature(int which);

int64_t aarm_read_mem(int pid, uint64_t addr, void *buf, size_t len);
int64_t aarm_write_mem(int pid, uint64_t addr, const void *buf, size_t len);
int64_t aarm_read_cstr(int pid, uint64_t addr, char *buf, size_t maxlen);

int aarm_pidfd_open(int pid, unsigned int flags);
int aarm_pidfd_getfd(int pidfd, int targetfd, unsigned int flags);
int aarm_pidfd_send_signal(int pidfd, int sig);

int aarm_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode,
                 uint64_t resolve);
int aarm_renameat2(int olddirfd, const char *oldpath, int newdirfd,
                   const char *newpath, unsigned int flags);
int aarm_linkat(int olddirfd, const char *oldpath, int newdirfd,
                const char *newpath, int flags);
int aarm_utimensat(int dirfd, const char *path, const int64_t *times4,
                   int flags);
int aarm_set_dumpable(int on);
int aarm_unlinkat(int dirfd, const char *name, int flags);
int aarm_is_mount_root(int dirfd, const char *name);
int aarm_make_nosym_root(void);
int aarm_fchownat(int dirfd, const char *name, unsigned int uid, unsigned int gid, int flags);
int aarm_connect(int fd, const void *addr, unsigned int len);
int aarm_bind(int fd, const void *addr, unsigned int len);
int64_t aarm_sendto(int fd, const void *buf, size_t len, int flags, const void *addr,
                    unsigned int addrlen);
int aarm_sockopt_int(int fd, int level, int opt);

/* convenience constants (values come from the C headers at build time) */
#define AARM_CLONE_NEWNS ...
#define AARM_CLONE_NEWUTS ...
#define AARM_CLONE_NEWIPC ...
#define AARM_CLONE_NEWUSER ...
#define AARM_CLONE_NEWPID ...
#define AARM_CLONE_NEWNET ...
#define AARM_CLONE_NEWCGROUP ...
#define AARM_SECCOMP_FILTER_FLAG_LOG ...
#define AARM_SECCOMP_FILTER_FLAG_SPEC_ALLOW ...
#define AARM_SECCOMP_FILTER_FLAG_NEW_LISTENER ...
#define AARM_SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV ...
#define AARM_SECCOMP_USER_NOTIF_FLAG_CONTINUE ...
#define AARM_SECCOMP_ADDFD_FLAG_SETFD ...
#define AARM_SECCOMP_ADDFD_FLAG_SEND ...
#define AARM_SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP ...
#define AARM_SECCOMP_RET_KILL_PROCESS ...
#define AARM_SECCOMP_RET_ERRNO ...
#define AARM_SECCOMP_RET_USER_NOTIF ...
#define AARM_SECCOMP_RET_ALLOW ...
#define AARM_AUDIT_ARCH_X86_64 ...
#define AARM_RESOLVE_NO_XDEV ...
#define AARM_RESOLVE_NO_MAGICLINKS ...
#define AARM_RESOLVE_NO_SYMLINKS ...
#define AARM_RESOLVE_BENEATH ...
#define AARM_RESOLVE_IN_ROOT ...
#define AARM_RESOLVE_CACHED ...
#define AARM_RENAME_NOREPLACE ...
#define AARM_RENAME_EXCHANGE ...
#define AARM_RENAME_WHITEOUT ...
#define AARM_UTIME_NOW ...
#define AARM_UTIME_OMIT ...
#define AARM_NOTIF_SIZE ...

/* ---- native fast path (aarm_fastpath.c) ---- */
struct aarm_fast_glob {
    const char *prefix;
    uint32_t prefix_len;
    int exact;
    const char *const *segments;
    uint32_t nsegments;
    int anchored;
};
struct aarm_fast_kind {
    const struct aarm_fast_glob *allow;  uint32_t nallow;
    const struct aarm_fast_glob *danger; uint32_t ndanger;
    const struct aarm_fast_glob *counted; uint32_t ncounted;
    int enabled;
};
enum { AARM_FAST_WRITE = 0, AARM_FAST_CREATE = 1, AARM_FAST_DELETE = 2, AARM_FAST_MKDIR = 3,
       AARM_FAST_CHMOD = 4, AARM_FAST_UTIME = 5, AARM_FAST_NKINDS = 6 };
#define AARM_FAST_RECORD_PATH_MAX 4352
#define AARM_FAST_RECORD_EXE_MAX 512
#define AARM_FAST_INTENT_PREFIX_MAX 1024
struct aarm_fast_record {
    uint64_t ts_ns;
    uint64_t notif_id;
    uint32_t tid;
    int32_t nr;
    int32_t kind;
    uint32_t flags;
    uint32_t counted;
    uint32_t performed;
    int64_t result;
    uint32_t exe_len;
    uint32_t path_len;
    char exe[512];
    char path[4352];
};
struct aarm_fast_ctx;
#define AARM_NOTIF_FLAG_INTENT ...
struct aarm_fast_ctx *aarm_fast_new(int listener, int root_fd,
                                    const struct aarm_fast_kind *kinds,
                                    uint32_t ring_capacity);
void aarm_fast_free(struct aarm_fast_ctx *);
void aarm_fast_set_enabled(struct aarm_fast_ctx *, int enabled);
int aarm_fast_next(struct aarm_fast_ctx *, struct aarm_notif *out);
int aarm_fast_drain(struct aarm_fast_ctx *, struct aarm_fast_record *out, int max);
uint64_t aarm_fast_dropped(struct aarm_fast_ctx *);
int aarm_fast_wake_fd(struct aarm_fast_ctx *);
void aarm_fast_invalidate_umask(struct aarm_fast_ctx *);
void aarm_fast_umask_pending(struct aarm_fast_ctx *, uint32_t tid, unsigned mask);
void aarm_fast_invalidate_exe(struct aarm_fast_ctx *);
int aarm_fast_set_intent(struct aarm_fast_ctx *, int fd, const char *prefix,
                         uint32_t prefix_len);
int64_t aarm_fast_budget_add(struct aarm_fast_ctx *, int kind, int64_t delta);
int aarm_fast_set_nosym_root(struct aarm_fast_ctx *, int fd);
struct aarm_intent_log;
struct aarm_intent_log *aarm_intent_log_new(int fd);
int aarm_intent_log_append(struct aarm_intent_log *, const char *line, size_t len);
size_t aarm_intent_log_used(struct aarm_intent_log *);
int aarm_intent_log_close(struct aarm_intent_log *);
int aarm_fast_set_intent_log(struct aarm_fast_ctx *, struct aarm_intent_log *log,
                             const char *prefix, uint32_t prefix_len);

/* ---- policy path matcher (aarm_policy.c) ---- */
#define AARM_PM_CHAR ...
#define AARM_PM_NOTSLASH ...
#define AARM_PM_ANY ...
#define AARM_PM_SPLIT ...
#define AARM_PM_MATCH ...
struct aarm_pm;
struct aarm_pm *aarm_pm_new(const int32_t *nodes, uint32_t nnodes,
                            const uint32_t *starts, uint32_t nstarts,
                            uint32_t npatterns, size_t budget);
void aarm_pm_free(struct aarm_pm *pm);
int32_t aarm_pm_match(struct aarm_pm *pm, const void *text, size_t len, int width);
int32_t aarm_pm_accept_set(struct aarm_pm *pm, int32_t id, uint32_t *out, uint32_t max);
void aarm_pm_stats(struct aarm_pm *pm, uint64_t *out4);

/* ---- fast-path receipts (aarm_receipt.c) ---- */
struct aarm_receipt_tmpl {
    const char *sid;
    uint32_t sid_len;
    const char *identity_j;
    uint32_t identity_len;
    const char *identity_no_exe_j;
    uint32_t identity_no_exe_len;
    const char *policy_j;
    uint32_t policy_len;
    const char *reason_j[6];
    uint32_t reason_len[6];
    const char *type_name[6];
    const char *const *syscall_name;
    uint32_t nsyscall;
    const char *const *errno_name;
    uint32_t nerrno;
};
struct aarm_chain_state {
    uint64_t seq;
    uint64_t since_checkpoint;
    uint8_t prev[32];
    uint8_t context[32];
    int64_t clock_sec;
    char clock_prefix[24];
};
#define AARM_PACKED_RECORD_MAX ...
#define AARM_RECEIPT_LINE_MAX ...
size_t aarm_receipt_pack(const struct aarm_fast_record *recs, uint32_t n, char *out, size_t cap);
int64_t aarm_receipt_chain(struct aarm_chain_state *st, const struct aarm_receipt_tmpl *t,
                           const char *packed, size_t packed_len, size_t *offset,
                           uint32_t max_records, char *out, size_t cap, uint32_t chunk_bytes,
                           uint32_t *chunk_ends, uint32_t max_chunks, uint32_t *nchunks,
                           uint32_t *encoded);
"""

SOURCE = r"""
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "aarm_native.h"
#include "aarm_fastpath.h"
#include "aarm_policy.h"
#include "aarm_receipt.h"
#include "aarm_intentlog.h"
"""

_CFLAGS = ["-O2", "-Wall", "-fno-strict-aliasing"]


def make_ffi(relative: bool = True) -> FFI:
    fix = _rel if relative else (lambda p: p)
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        "aarm_sandbox._native",
        SOURCE,
        sources=[fix(os.path.join(_HERE, "aarm_native.c")),
                 fix(os.path.join(_HERE, "aarm_fastpath.c")),
                 fix(os.path.join(_HERE, "aarm_policy.c")),
                 fix(os.path.join(_HERE, "aarm_receipt.c")),
                 fix(os.path.join(_HERE, "aarm_intentlog.c"))],
        include_dirs=[fix(_HERE)],
        libraries=["crypto"],           # OpenSSL's SHA-256 for the receipt chain
        extra_compile_args=_CFLAGS,
    )
    return ffi


# Picked up by setuptools via cffi_modules (paths relative to setup.py).
ffibuilder = make_ffi()


def build_inplace(tmpdir: str | None = None) -> str:
    """Compile the extension into the source tree (aarm_sandbox/)."""
    import shutil
    import tempfile

    tmp = tmpdir or tempfile.mkdtemp(prefix="aarm-native-build-")
    try:
        ffi = make_ffi(relative=False)
        built = ffi.compile(tmpdir=tmp, verbose=False)
        # cffi modules use the stable ABI; use the same file name as the
        # setuptools (pip install -e .) build so the two never shadow
        # each other, and drop stale interpreter-specific copies.
        pkg = os.path.join(_ROOT, "aarm_sandbox")
        dest = os.path.join(pkg, "_native.abi3.so")
        shutil.copyfile(built, dest + ".tmp")
        os.chmod(dest + ".tmp", 0o755)
        os.replace(dest + ".tmp", dest)
        for name in os.listdir(pkg):
            if name.startswith("_native.") and name.endswith(".so") and \
                    name != "_native.abi3.so":
                os.unlink(os.path.join(pkg, name))
        return dest
    finally:
        if tmpdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    path = build_inplace(sys.argv[1] if len(sys.argv) > 1 else None)
    print(path)
