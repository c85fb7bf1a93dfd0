/*
 * aarm_native.h - native helpers for the aarm-sandbox supervisor.
 *
 * Every function returns a negative errno value on failure instead of
 * setting errno, so that it can be called safely through cffi.
 */
#ifndef AARM_NATIVE_H
#define AARM_NATIVE_H

#include <stddef.h>
#include <stdint.h>
#include <sched.h>
#include <sys/stat.h>
#include <linux/audit.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>

/* Constants possibly missing from the (older) installed uapi headers. */
#ifndef SECCOMP_FILTER_FLAG_NEW_LISTENER
#define SECCOMP_FILTER_FLAG_NEW_LISTENER (1UL << 3)
#endif
#ifndef SECCOMP_FILTER_FLAG_TSYNC_ESRCH
#define SECCOMP_FILTER_FLAG_TSYNC_ESRCH (1UL << 4)
#endif
#ifndef SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
#define SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (1UL << 5)
#endif
#ifndef SECCOMP_USER_NOTIF_FLAG_CONTINUE
#define SECCOMP_USER_NOTIF_FLAG_CONTINUE (1UL << 0)
#endif
#ifndef SECCOMP_ADDFD_FLAG_SETFD
#define SECCOMP_ADDFD_FLAG_SETFD (1UL << 0)
#endif
#ifndef SECCOMP_ADDFD_FLAG_SEND
#define SECCOMP_ADDFD_FLAG_SEND (1UL << 1)
#endif
#ifndef SECCOMP_IOCTL_NOTIF_ADDFD
#define SECCOMP_IOCTL_NOTIF_ADDFD SECCOMP_IOW(3, struct seccomp_notif_addfd)
#endif
#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (1UL << 0)
#endif
#ifndef RESOLVE_CACHED
#define RESOLVE_CACHED 0x20
#endif

/* Convenience constants exported to Python (lib.AARM_*). */
#define AARM_CLONE_NEWNS CLONE_NEWNS
#define AARM_CLONE_NEWUTS CLONE_NEWUTS
#define AARM_CLONE_NEWIPC CLONE_NEWIPC
#define AARM_CLONE_NEWUSER CLONE_NEWUSER
#define AARM_CLONE_NEWPID CLONE_NEWPID
#define AARM_CLONE_NEWNET CLONE_NEWNET
#define AARM_CLONE_NEWCGROUP CLONE_NEWCGROUP
#define AARM_SECCOMP_FILTER_FLAG_LOG SECCOMP_FILTER_FLAG_LOG
#define AARM_SECCOMP_FILTER_FLAG_SPEC_ALLOW SECCOMP_FILTER_FLAG_SPEC_ALLOW
#define AARM_SECCOMP_FILTER_FLAG_NEW_LISTENER SECCOMP_FILTER_FLAG_NEW_LISTENER
#define AARM_SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
#define AARM_SECCOMP_USER_NOTIF_FLAG_CONTINUE SECCOMP_USER_NOTIF_FLAG_CONTINUE
#define AARM_SECCOMP_ADDFD_FLAG_SETFD SECCOMP_ADDFD_FLAG_SETFD
#define AARM_SECCOMP_ADDFD_FLAG_SEND SECCOMP_ADDFD_FLAG_SEND
#define AARM_SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define AARM_SECCOMP_RET_KILL_PROCESS SECCOMP_RET_KILL_PROCESS
#define AARM_SECCOMP_RET_ERRNO SECCOMP_RET_ERRNO
#define AARM_SECCOMP_RET_USER_NOTIF SECCOMP_RET_USER_NOTIF
#define AARM_SECCOMP_RET_ALLOW SECCOMP_RET_ALLOW
#define AARM_AUDIT_ARCH_X86_64 AUDIT_ARCH_X86_64
#define AARM_RESOLVE_NO_XDEV RESOLVE_NO_XDEV
#define AARM_RESOLVE_NO_MAGICLINKS RESOLVE_NO_MAGICLINKS
#define AARM_RESOLVE_NO_SYMLINKS RESOLVE_NO_SYMLINKS
#define AARM_RESOLVE_BENEATH RESOLVE_BENEATH
#define AARM_RESOLVE_IN_ROOT RESOLVE_IN_ROOT
#define AARM_RESOLVE_CACHED RESOLVE_CACHED
#define AARM_RENAME_NOREPLACE 1
#define AARM_RENAME_EXCHANGE 2
#define AARM_RENAME_WHITEOUT 4
#define AARM_UTIME_NOW UTIME_NOW
#define AARM_UTIME_OMIT UTIME_OMIT
#define AARM_NOTIF_SIZE 80

/* Same layout as the kernel's struct seccomp_data. */
struct seccomp_notif_data {
    int nr;
    uint32_t arch;
    uint64_t instruction_pointer;
    uint64_t args[6];
};

/* Same layout as the kernel's struct seccomp_notif (80 bytes). */
struct aarm_notif {
    uint64_t id;
    uint32_t pid;
    uint32_t flags;
    struct seccomp_notif_data data;
};

struct aarm_spawn_config {
    char *const *argv;          /* NULL-terminated */
    char *const *envp;          /* NULL-terminated */
    const char *cwd;            /* chdir target inside the sandbox */
    const void *bpf;            /* array of struct sock_filter */
    unsigned int bpf_len;       /* number of instructions */
    unsigned int seccomp_flags; /* extra SECCOMP_FILTER_FLAG_*; NEW_LISTENER always added */
    int clone_flags;            /* CLONE_NEW* namespaces to create */
    unsigned int outer_uid, outer_gid;
    char *const *mask_dirs;     /* NULL-terminated or NULL */
    char *const *mask_files;    /* NULL-terminated or NULL */
    int mount_proc;
    int drop_caps;
    int loopback_up;             /* with CLONE_NEWNET: bring lo up (else the namespace has no network at all) */
    int private_shm;             /* with CLONE_NEWNS: a private writable tmpfs on /dev/shm */
    char *const *bind_files;     /* with CLONE_NEWNS: src, dst, src, dst, ..., NULL: read-only binds */
    char *const *view_hide;      /* with CLONE_NEWNS: dir, name, dir, name, ..., NULL: each dir becomes
                                    a view of what it holds at launch without those names (parents
                                    before children) */
    int *out_dns_stub;           /* non-NULL, with CLONE_NEWNET + loopback: receives the supervisor's
                                    copy of a UDP socket bound to 127.0.0.53:53 inside the sandbox's
                                    network namespace (-1 when it could not be made: see warnings) */
    int *out_nosym_root;         /* non-NULL, with CLONE_NEWNS: receives an O_PATH-like fd of a
                                    detached copy of the sandbox's mount tree whose mounts never
                                    follow a symlink (-1 when the kernel cannot make one) */
};

int aarm_spawn(const struct aarm_spawn_config *cfg, int *out_listener,
               int *out_status_fd, char *err, size_t errlen);
int aarm_read_status(int status_fd, int *out_wait_status);

int aarm_notif_recv(int listener, struct aarm_notif *n);
/* The decision thread's claim on the GIL (see aarm_native.c): receives drop it
 * on entry and take it on return; background threads yield while it is held. */
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
/* 1 when name (not followed) in dirfd is the root of a mount, 0 when not, -errno (-EOPNOTSUPP:
 * the kernel does not say, before 5.8). */
int aarm_is_mount_root(int dirfd, const char *name);
/* A detached copy of the caller's mount tree that follows no symlink: an fd, or -errno. */
int aarm_make_nosym_root(void);
int aarm_fchownat(int dirfd, const char *name, unsigned int uid, unsigned int gid, int flags);
int aarm_connect(int fd, const void *addr, unsigned int len);
int aarm_bind(int fd, const void *addr, unsigned int len);
int64_t aarm_sendto(int fd, const void *buf, size_t len, int flags, const void *addr,
                    unsigned int addrlen);
int aarm_sockopt_int(int fd, int level, int opt);

#endif /* AARM_NATIVE_H */