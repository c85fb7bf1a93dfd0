/* Side-door attack probes for tests/attacks/test_side_doors.py.
 *
 * One binary, many modes: `side_doors MODE ARGS...`. Every mode that attacks a file uses
 * the raw syscall (syscall(SYS_x) or inline asm) so the syscall number under test is the
 * one the kernel sees, not whatever glibc maps a wrapper to.
 *
 * Convention: "ATTACK-OK" on stdout and exit 0 when every step of the attack succeeded;
 * "FAILED <step> errno=<n> (<name>)" and exit 1 at the first step that failed. Probe modes
 * print KEY=VALUE lines. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/fs.h>
#include <linux/io_uring.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif
#ifndef FALLOC_FL_KEEP_SIZE
#define FALLOC_FL_KEEP_SIZE 0x01
#endif
#ifndef FALLOC_FL_PUNCH_HOLE
#define FALLOC_FL_PUNCH_HOLE 0x02
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
#ifndef SECCOMP_IOCTL_NOTIF_RECV
#define SECCOMP_IOCTL_NOTIF_RECV _IOWR('!', 0, struct seccomp_notif)
#endif
#ifndef SECCOMP_IOCTL_NOTIF_SEND
#define SECCOMP_IOCTL_NOTIF_SEND _IOWR('!', 1, struct seccomp_notif_resp)
#endif
#ifndef SECCOMP_USER_NOTIF_FLAG_CONTINUE
#define SECCOMP_USER_NOTIF_FLAG_CONTINUE (1UL << 0)
#endif
#define X32_SYSCALL_BIT 0x40000000

static const char EVIL[] = "evil\n";

static int fail(const char *step)
{
    int e = errno;
    printf("FAILED %s errno=%d (%s)\n", step, e, strerrorname_np(e) ? strerrorname_np(e) : "?");
    fflush(stdout);
    return 1;
}

static int ok(void)
{
    printf("ATTACK-OK\n");
    fflush(stdout);
    return 0;
}

/* Create `path` in the workspace with EVIL content (this part is allowed by policy). */
static int make_evil(const char *path)
{
    int fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    if (write(fd, EVIL, sizeof(EVIL) - 1) != (ssize_t)(sizeof(EVIL) - 1)) {
        close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

static int open_victim(const char *p, int flags)
{
    return (int)syscall(SYS_openat, AT_FDCWD, p, flags | O_CLOEXEC, 0644);
}

/* ---------------------------------------------------------------- deletes / overwrites */
static int m_unlink(char **a) { return syscall(SYS_unlink, a[0]) ? fail("unlink") : ok(); }
static int m_unlinkat(char **a) { return syscall(SYS_unlinkat, AT_FDCWD, a[0], 0) ? fail("unlinkat") : ok(); }
static int m_unlinkat_dir(char **a)
{
    return syscall(SYS_unlinkat, AT_FDCWD, a[0], AT_REMOVEDIR) ? fail("unlinkat(AT_REMOVEDIR)") : ok();
}
static int m_rmdir(char **a) { return syscall(SYS_rmdir, a[0]) ? fail("rmdir") : ok(); }

static int m_rename_over(char **a)          /* SRC VICTIM */
{
    if (make_evil(a[0]))
        return fail("create src");
    return syscall(SYS_rename, a[0], a[1]) ? fail("rename") : ok();
}

static int m_renameat_over(char **a)        /* SRC VICTIM */
{
    if (make_evil(a[0]))
        return fail("create src");
    return syscall(SYS_renameat, AT_FDCWD, a[0], AT_FDCWD, a[1]) ? fail("renameat") : ok();
}

static int m_rename_exchange(char **a)      /* SRC VICTIM */
{
    if (make_evil(a[0]))
        return fail("create src");
    return syscall(SYS_renameat2, AT_FDCWD, a[0], AT_FDCWD, a[1], RENAME_EXCHANGE)
        ? fail("renameat2(RENAME_EXCHANGE)") : ok();
}

static int m_rename_noreplace_away(char **a) /* VICTIM DST: move the victim away */
{
    return syscall(SYS_renameat2, AT_FDCWD, a[0], AT_FDCWD, a[1], RENAME_NOREPLACE)
        ? fail("renameat2(RENAME_NOREPLACE)") : ok();
}

static int m_truncate(char **a) { return syscall(SYS_truncate, a[0], 0L) ? fail("truncate") : ok(); }

static int m_ftruncate_rdwr(char **a)
{
    int fd = open_victim(a[0], O_RDWR);
    if (fd < 0)
        return fail("open(O_RDWR)");
    return syscall(SYS_ftruncate, fd, 0L) ? fail("ftruncate") : ok();
}

static int m_ftruncate_rdonly(char **a)
{
    int fd = open_victim(a[0], O_RDONLY);
    if (fd < 0)
        return fail("open(O_RDONLY)");
    return syscall(SYS_ftruncate, fd, 0L) ? fail("ftruncate") : ok();
}

static int m_open_trunc(char **a)
{
    int fd = (int)syscall(SYS_open, a[0], O_WRONLY | O_TRUNC, 0);
    return fd < 0 ? fail("open(O_WRONLY|O_TRUNC)") : ok();
}

static int m_openat_rdonly_trunc(char **a)
{
    /* O_RDONLY|O_TRUNC still truncates on Linux when the caller may write the file. */
    int fd = (int)syscall(SYS_openat, AT_FDCWD, a[0], O_RDONLY | O_TRUNC, 0);
    return fd < 0 ? fail("openat(O_RDONLY|O_TRUNC)") : ok();
}

static int m_open_append(char **a)
{
    int fd = open_victim(a[0], O_WRONLY | O_APPEND);
    if (fd < 0)
        return fail("openat(O_WRONLY|O_APPEND)");
    return write(fd, EVIL, sizeof(EVIL) - 1) < 0 ? fail("write") : ok();
}

static int m_creat(char **a)
{
    int fd = (int)syscall(SYS_creat, a[0], 0644);
    if (fd < 0)
        return fail("creat");
    return write(fd, EVIL, sizeof(EVIL) - 1) < 0 ? fail("write") : ok();
}

static int m_fallocate_punch(char **a)
{
    int fd = open_victim(a[0], O_RDWR);
    if (fd < 0)
        return fail("open(O_RDWR)");
    return syscall(SYS_fallocate, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0L, 1L << 20)
        ? fail("fallocate(PUNCH_HOLE)") : ok();
}

/* O_TMPFILE in DIR (the workspace), then give it a name outside and rename it over VICTIM. */
static int tmpfile_then(char **a, int via_proc)
{
    int fd = (int)syscall(SYS_openat, AT_FDCWD, a[0], O_TMPFILE | O_RDWR | O_CLOEXEC, 0644);
    if (fd < 0)
        return fail("openat(O_TMPFILE)");
    if (write(fd, EVIL, sizeof(EVIL) - 1) < 0)
        return fail("write tmpfile");
    char tmpname[4096];
    snprintf(tmpname, sizeof(tmpname), "%s.new", a[1]);
    long r;
    if (via_proc) {
        char p[64];
        snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
        r = syscall(SYS_linkat, AT_FDCWD, p, AT_FDCWD, tmpname, AT_SYMLINK_FOLLOW);
    } else {
        r = syscall(SYS_linkat, fd, "", AT_FDCWD, tmpname, AT_EMPTY_PATH);
    }
    if (r)
        return fail(via_proc ? "linkat(/proc/self/fd/N)" : "linkat(AT_EMPTY_PATH)");
    return syscall(SYS_rename, tmpname, a[1]) ? fail("rename over victim") : ok();
}
static int m_tmpfile_link_empty(char **a) { return tmpfile_then(a, 0); }
static int m_tmpfile_link_proc(char **a) { return tmpfile_then(a, 1); }

static int m_copy_file_range(char **a)      /* SRC VICTIM */
{
    if (make_evil(a[0]))
        return fail("create src");
    int in = open_victim(a[0], O_RDONLY);
    int out = open_victim(a[1], O_WRONLY);
    if (in < 0 || out < 0)
        return fail("open victim for writing");
    loff_t off = 0;
    return syscall(SYS_copy_file_range, in, NULL, out, &off, sizeof(EVIL) - 1, 0) < 0
        ? fail("copy_file_range") : ok();
}

static int m_sendfile(char **a)             /* SRC VICTIM */
{
    if (make_evil(a[0]))
        return fail("create src");
    int in = open_victim(a[0], O_RDONLY);
    int out = open_victim(a[1], O_WRONLY);
    if (in < 0 || out < 0)
        return fail("open victim for writing");
    return syscall(SYS_sendfile, out, in, NULL, sizeof(EVIL) - 1) < 0 ? fail("sendfile") : ok();
}

static int m_mmap_write(char **a)
{
    int fd = open_victim(a[0], O_RDWR);
    if (fd < 0)
        return fail("open(O_RDWR)");
    char *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        return fail("mmap(MAP_SHARED, PROT_WRITE)");
    memcpy(m, "EVIL", 4);
    return msync(m, 4096, MS_SYNC) ? fail("msync") : ok();
}

/* A read-only fd is easy to get; reopen it writable through /proc/self/fd. */
static int reopen(char **a, int first_flags)
{
    int fd = open_victim(a[0], first_flags);
    if (fd < 0)
        return fail("first open");
    char p[64];
    snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
    int w = (int)syscall(SYS_openat, AT_FDCWD, p, O_WRONLY | O_TRUNC | O_CLOEXEC, 0);
    if (w < 0)
        return fail("reopen /proc/self/fd/N writable");
    return write(w, EVIL, sizeof(EVIL) - 1) < 0 ? fail("write") : ok();
}
static int m_proc_reopen_rdonly(char **a) { return reopen(a, O_RDONLY); }
static int m_proc_reopen_opath(char **a) { return reopen(a, O_PATH); }

/* Hard-link the victim into the workspace, then write through the workspace name. */
static int m_link_into_workspace(char **a)  /* VICTIM ALIAS */
{
    if (syscall(SYS_link, a[0], a[1]))
        return fail("link");
    int fd = (int)syscall(SYS_openat, AT_FDCWD, a[1], O_WRONLY | O_TRUNC | O_CLOEXEC, 0);
    if (fd < 0)
        return fail("open alias");
    return write(fd, EVIL, sizeof(EVIL) - 1) < 0 ? fail("write") : ok();
}

/* ---------------------------------------------------------------- metadata */
static int m_chmod(char **a) { return syscall(SYS_chmod, a[0], 0777) ? fail("chmod") : ok(); }
static int m_fchmodat(char **a)
{
    return syscall(SYS_fchmodat, AT_FDCWD, a[0], 0777) ? fail("fchmodat") : ok();
}
static int m_fchmod(char **a)
{
    int fd = open_victim(a[0], O_RDONLY);
    if (fd < 0)
        return fail("open");
    return syscall(SYS_fchmod, fd, 0777) ? fail("fchmod") : ok();
}
static int m_chown(char **a)
{
    uid_t u = geteuid() == 0 ? 12345 : getuid();
    gid_t g = geteuid() == 0 ? 12345 : getgid();
    return syscall(SYS_chown, a[0], u, g) ? fail("chown") : ok();
}
static int m_utimensat(char **a)
{
    struct timespec ts[2] = { { 1000000000, 0 }, { 1000000000, 0 } };
    return syscall(SYS_utimensat, AT_FDCWD, a[0], ts, 0) ? fail("utimensat") : ok();
}
static int m_futimens(char **a)
{
    int fd = open_victim(a[0], O_RDONLY);
    if (fd < 0)
        return fail("open");
    struct timespec ts[2] = { { 1000000000, 0 }, { 1000000000, 0 } };
    return syscall(SYS_utimensat, fd, NULL, ts, 0) ? fail("futimens") : ok();
}
static int m_setxattr(char **a)
{
    return syscall(SYS_setxattr, a[0], "user.evil", "1", 1, 0) ? fail("setxattr") : ok();
}

/* Inode attribute ioctls work on an O_RDONLY fd for the file's owner: no write access to
 * the file is needed, so the sandbox never sees a write-intent open. */
static int m_ioctl_setflags(char **a)
{
    int fd = open_victim(a[0], O_RDONLY | O_NONBLOCK);
    if (fd < 0)
        return fail("open");
    int fl = 0;
    if (ioctl(fd, FS_IOC_GETFLAGS, &fl))
        return fail("FS_IOC_GETFLAGS");
    fl |= FS_NODUMP_FL;
    return ioctl(fd, FS_IOC_SETFLAGS, &fl) ? fail("FS_IOC_SETFLAGS") : ok();
}

static int m_ioctl_fssetxattr(char **a)
{
    int fd = open_victim(a[0], O_RDONLY | O_NONBLOCK);
    if (fd < 0)
        return fail("open");
    struct fsxattr x;
    memset(&x, 0, sizeof(x));
    if (ioctl(fd, FS_IOC_FSGETXATTR, &x))
        return fail("FS_IOC_FSGETXATTR");
    x.fsx_xflags |= FS_XFLAG_NODUMP | FS_XFLAG_NOATIME;
    return ioctl(fd, FS_IOC_FSSETXATTR, &x) ? fail("FS_IOC_FSSETXATTR") : ok();
}

static int m_ioctl_setversion(char **a)
{
    int fd = open_victim(a[0], O_RDONLY | O_NONBLOCK);
    if (fd < 0)
        return fail("open");
    long gen = 0;
    if (ioctl(fd, FS_IOC_GETVERSION, &gen))
        return fail("FS_IOC_GETVERSION");
    gen = (gen + 1) & 0x7fffffff;
    return ioctl(fd, FS_IOC_SETVERSION, &gen) ? fail("FS_IOC_SETVERSION") : ok();
}

/* ext4's own number for the same operation ('f', 4), which ext4 accepts beside
 * FS_IOC_SETVERSION ('v', 2). */
#define EXT4_IOC_GETVERSION_ _IOR('f', 3, long)
#define EXT4_IOC_SETVERSION_ _IOW('f', 4, long)
static int m_ioctl_ext4_setversion(char **a)
{
    int fd = open_victim(a[0], O_RDONLY | O_NONBLOCK);
    if (fd < 0)
        return fail("open");
    long gen = 0;
    if (ioctl(fd, EXT4_IOC_GETVERSION_, &gen))
        return fail("EXT4_IOC_GETVERSION");
    gen = (gen + 1) & 0x7fffffff;
    return ioctl(fd, EXT4_IOC_SETVERSION_, &gen) ? fail("EXT4_IOC_SETVERSION") : ok();
}

/* ---------------------------------------------------------------- ABI */
static char *low_copy(const char *s)
{
    /* int 0x80 takes 32-bit pointers: put the argument below 4 GiB. */
    char *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    strncpy(p, s, 4095);
    return p;
}

static long int80(long nr, long b, long c, long d)
{
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(b), "c"(c), "d"(d) : "memory");
    return ret;
}

static int m_int80_unlink(char **a)
{
    char *p = low_copy(a[0]);
    if (!p)
        return fail("mmap(MAP_32BIT)");
    printf("about to int 0x80\n");
    fflush(stdout);
    long r = int80(10 /* i386 unlink */, (long)(uintptr_t)p, 0, 0);
    if (r < 0) {
        errno = (int)-r;
        return fail("int80 unlink");
    }
    return ok();
}

static int m_int80_open_trunc(char **a)
{
    char *p = low_copy(a[0]);
    if (!p)
        return fail("mmap(MAP_32BIT)");
    printf("about to int 0x80\n");
    fflush(stdout);
    long r = int80(5 /* i386 open */, (long)(uintptr_t)p, O_WRONLY | O_TRUNC, 0);
    if (r < 0) {
        errno = (int)-r;
        return fail("int80 open");
    }
    return ok();
}

static int m_x32(char **a)                  /* NR VICTIM: x32 syscall nr | 0x40000000 */
{
    long nr = strtol(a[0], NULL, 0);
    printf("about to x32 syscall %ld\n", nr);
    fflush(stdout);
    long r;
    if (nr == SYS_unlinkat)
        r = syscall(X32_SYSCALL_BIT | nr, AT_FDCWD, a[1], 0);
    else if (nr == SYS_open)
        r = syscall(X32_SYSCALL_BIT | nr, a[1], O_WRONLY | O_TRUNC, 0);
    else
        r = syscall(X32_SYSCALL_BIT | nr, a[1], 0, 0);
    return r < 0 ? fail("x32 syscall") : ok();
}

/* ---------------------------------------------------------------- io_uring */
static int m_io_uring_unlink(char **a)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    int ring = (int)syscall(SYS_io_uring_setup, 4, &p);
    if (ring < 0)
        return fail("io_uring_setup");
    printf("SETUP-OK\n");
    fflush(stdout);
    size_t sq_sz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    char *sq = mmap(NULL, sq_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQ_RING);
    char *cq = mmap(NULL, cq_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_CQ_RING);
    struct io_uring_sqe *sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe),
                                     PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED)
        return fail("mmap ring");
    unsigned *sq_tail = (unsigned *)(sq + p.sq_off.tail);
    unsigned *sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    unsigned *sq_array = (unsigned *)(sq + p.sq_off.array);
    unsigned *cq_head = (unsigned *)(cq + p.cq_off.head);
    unsigned *cq_tail = (unsigned *)(cq + p.cq_off.tail);
    unsigned *cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    struct io_uring_cqe *cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);

    unsigned tail = *sq_tail;
    unsigned idx = tail & *sq_mask;
    struct io_uring_sqe *e = &sqes[idx];
    memset(e, 0, sizeof(*e));
    e->opcode = IORING_OP_UNLINKAT;
    e->fd = AT_FDCWD;
    e->addr = (uint64_t)(uintptr_t)a[0];
    e->unlink_flags = 0;
    e->user_data = 42;
    sq_array[idx] = idx;
    __atomic_store_n(sq_tail, tail + 1, __ATOMIC_RELEASE);
    long r = syscall(SYS_io_uring_enter, ring, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0);
    if (r < 0)
        return fail("io_uring_enter");
    unsigned head = __atomic_load_n(cq_head, __ATOMIC_ACQUIRE);
    if (head == __atomic_load_n(cq_tail, __ATOMIC_ACQUIRE)) {
        errno = EAGAIN;
        return fail("no completion");
    }
    struct io_uring_cqe *c = &cqes[head & *cq_mask];
    int res = c->res;
    __atomic_store_n(cq_head, head + 1, __ATOMIC_RELEASE);
    if (res < 0) {
        errno = -res;
        return fail("IORING_OP_UNLINKAT");
    }
    return ok();
}

/* ---------------------------------------------------------------- seccomp stacking */
static int install_filter(struct sock_filter *f, unsigned short n, unsigned flags)
{
    struct sock_fprog prog = { .len = n, .filter = f };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        return -1;
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

static void *answer_continue(void *arg)
{
    int lfd = *(int *)arg;
    for (;;) {
        struct seccomp_notif req;
        struct seccomp_notif_resp resp;
        memset(&req, 0, sizeof(req));
        if (ioctl(lfd, SECCOMP_IOCTL_NOTIF_RECV, &req) < 0) {
            if (errno == EINTR)
                continue;
            return NULL;
        }
        memset(&resp, 0, sizeof(resp));
        resp.id = req.id;
        resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
        ioctl(lfd, SECCOMP_IOCTL_NOTIF_SEND, &resp);
    }
}

static int m_own_listener(char **a)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_unlinkat, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    int lfd = install_filter(f, 4, SECCOMP_FILTER_FLAG_NEW_LISTENER);
    if (lfd < 0) {
        int r = fail("seccomp(NEW_LISTENER)");
        /* try the delete anyway: it must still be the sandbox's decision */
        if (syscall(SYS_unlinkat, AT_FDCWD, a[0], 0))
            fail("unlinkat");
        else
            printf("UNLINKED-ANYWAY\n");
        return r;
    }
    printf("LISTENER=%d\n", lfd);
    fflush(stdout);
    pthread_t t;
    pthread_create(&t, NULL, answer_continue, &lfd);
    return syscall(SYS_unlinkat, AT_FDCWD, a[0], 0) ? fail("unlinkat") : ok();
}

static int m_stacked_allow(char **a)
{
    /* A filter of our own that says ALLOW for everything: the kernel runs every filter and
     * keeps the most restrictive verdict, so the sandbox's USER_NOTIF must still win. */
    struct sock_filter f[] = { BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW) };
    if (install_filter(f, 1, 0))
        return fail("seccomp(SET_MODE_FILTER)");
    printf("STACKED-OK\n");
    fflush(stdout);
    return syscall(SYS_unlinkat, AT_FDCWD, a[0], 0) ? fail("unlinkat") : ok();
}

/* ---------------------------------------------------------------- fds */
static volatile sig_atomic_t alarms;
static void on_alarm(int s) { (void)s; alarms++; }

static int m_fd_probe(char **a)             /* JOURNAL_DIR [selftest] */
{
    if (a[1] && strcmp(a[1], "selftest") == 0) {
        /* Prove the scanner finds a listener: create one of our own first (for a syscall
         * this probe never makes). */
        struct sock_filter f[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        if (install_filter(f, 4, SECCOMP_FILTER_FLAG_NEW_LISTENER) < 0)
            return fail("selftest listener");
    }
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return fail("opendir /proc/self/fd");
    int dfd = dirfd(d);
    printf("FDS=");
    struct dirent *de;
    int first = 1;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        int n = atoi(de->d_name);
        if (n == dfd)
            continue;
        printf("%s%d", first ? "" : ",", n);
        first = 0;
    }
    printf("\n");
    closedir(d);

    /* SECCOMP_IOCTL_NOTIF_RECV on every fd number. A listener with nothing pending would
     * block: a 100 ms timer without SA_RESTART turns that into EINTR, which also counts. */
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    int found = 0, open_fds = 0;
    for (int fd = 0; fd < 1024; fd++) {
        if (fcntl(fd, F_GETFD) < 0)
            continue;
        open_fds++;
        struct itimerval it = { { 0, 0 }, { 0, 100000 } };
        setitimer(ITIMER_REAL, &it, NULL);
        struct seccomp_notif req;
        memset(&req, 0, sizeof(req));
        int r = ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, &req);
        int e = errno;
        struct itimerval off = { { 0, 0 }, { 0, 0 } };
        setitimer(ITIMER_REAL, &off, NULL);
        if (r == 0 || e == EINTR) {
            printf("LISTENER-FOUND fd=%d r=%d errno=%d\n", fd, r, e);
            found++;
        }
    }
    printf("OPEN-FDS=%d LISTENERS=%d\n", open_fds, found);

    /* The journal: list the directory it lives in and read every file there. */
    DIR *jd = opendir(a[0]);
    int jfiles = 0;
    long jbytes = 0;
    if (jd) {
        while ((de = readdir(jd))) {
            if (de->d_name[0] == '.')
                continue;
            char p[4096];
            snprintf(p, sizeof(p), "%s/%s", a[0], de->d_name);
            int fd = open(p, O_RDONLY | O_CLOEXEC);
            jfiles++;
            if (fd < 0) {
                printf("JOURNAL-OPEN-ERRNO=%d\n", errno);
                continue;
            }
            char buf[4096];
            ssize_t n;
            while ((n = read(fd, buf, sizeof(buf))) > 0)
                jbytes += n;
            close(fd);
            int w = open(p, O_WRONLY | O_APPEND | O_CLOEXEC);
            printf("JOURNAL-WRITE-OPEN=%s errno=%d\n", w >= 0 ? "ok" : "fail", w >= 0 ? 0 : errno);
        }
        closedir(jd);
    }
    printf("JOURNAL-FILES=%d JOURNAL-BYTES=%ld\n", jfiles, jbytes);

    /* Every visible process's fds: none may be a seccomp listener. */
    int proc_listeners = 0;
    DIR *pd = opendir("/proc");
    while (pd && (de = readdir(pd))) {
        if (de->d_name[0] < '0' || de->d_name[0] > '9')
            continue;
        char p[512];
        snprintf(p, sizeof(p), "/proc/%s/fd", de->d_name);
        DIR *fdd = opendir(p);
        if (!fdd)
            continue;
        struct dirent *fe;
        while ((fe = readdir(fdd))) {
            char lp[768], tgt[512];
            snprintf(lp, sizeof(lp), "%s/%s", p, fe->d_name);
            ssize_t n = readlink(lp, tgt, sizeof(tgt) - 1);
            if (n > 0) {
                tgt[n] = 0;
                if (strstr(tgt, "seccomp")) {
                    printf("PROC-LISTENER %s -> %s\n", lp, tgt);
                    proc_listeners++;
                }
            }
        }
        closedir(fdd);
    }
    if (pd)
        closedir(pd);
    printf("PROC-LISTENERS=%d\n", proc_listeners);
    fflush(stdout);
    return 0;
}

/* ---------------------------------------------------------------- processes */
static pid_t spawn_sleeper(void)
{
    pid_t c = fork();
    if (c == 0) {
        for (;;)
            pause();
    }
    usleep(20000);
    return c;
}

static void report(const char *what, long r)
{
    printf("%s=%s", what, r < 0 ? "fail" : "ok");
    if (r < 0)
        printf(" errno=%d (%s)", errno, strerrorname_np(errno) ? strerrorname_np(errno) : "?");
    printf("\n");
    fflush(stdout);
}

static int m_sibling(char **a)
{
    (void)a;
    pid_t c = spawn_sleeper();
    errno = 0;
    long r = ptrace(PTRACE_ATTACH, c, 0, 0);
    report("PTRACE_ATTACH", r);
    if (r == 0) {
        waitpid(c, NULL, __WALL);
        ptrace(PTRACE_DETACH, c, 0, 0);
    }
    r = ptrace(PTRACE_SEIZE, c, 0, 0);
    report("PTRACE_SEIZE", r);
    if (r == 0)
        ptrace(PTRACE_DETACH, c, 0, 0);

    /* process_vm_writev into the sibling's copy of `target` (same address after fork) */
    static char target[16] = "original";
    char src[16] = "OVERWRITTEN";
    struct iovec l = { src, sizeof(src) }, rv = { target, sizeof(target) };
    r = syscall(SYS_process_vm_writev, c, &l, 1, &rv, 1, 0);
    report("process_vm_writev", r);
    char rbuf[16];
    struct iovec lr = { rbuf, sizeof(rbuf) };
    r = syscall(SYS_process_vm_readv, c, &lr, 1, &rv, 1, 0);
    report("process_vm_readv", r);

    int pfd = (int)syscall(SYS_pidfd_open, c, 0);
    report("pidfd_open", pfd);
    if (pfd >= 0) {
        r = syscall(SYS_pidfd_getfd, pfd, 1, 0);
        report("pidfd_getfd", r);
    }
    char mem[64];
    snprintf(mem, sizeof(mem), "/proc/%d/mem", c);
    r = syscall(SYS_openat, AT_FDCWD, mem, O_RDWR | O_CLOEXEC, 0);
    report("open_proc_mem_rdwr", r);
    kill(c, SIGKILL);
    waitpid(c, NULL, 0);
    return 0;
}

static int m_kill_pid(char **a)             /* PID: signal a process by pid */
{
    long r = kill((pid_t)atoi(a[0]), SIGKILL);
    report("kill", r);
    return r ? 1 : 0;
}

static int m_kill_pgrp(char **a)            /* SIG: kill(0, SIG) -- "my process group" */
{
    int sig = atoi(a[0]);
    signal(sig, SIG_IGN);
    printf("PGRP=%d SID=%d\n", getpgrp(), getsid(0));
    fflush(stdout);
    report("kill(0)", kill(0, sig));
    usleep(200000);
    return 0;
}

static int m_kill_all(char **a)             /* VICTIM: kill(-1), stop parent, then unlink */
{
    pid_t c = spawn_sleeper();
    printf("MYPID=%d PPID=%d CHILD=%d\n", getpid(), getppid(), c);
    DIR *pd = opendir("/proc");
    struct dirent *de;
    printf("VISIBLE=");
    while (pd && (de = readdir(pd)))
        if (de->d_name[0] >= '0' && de->d_name[0] <= '9')
            printf("%s,", de->d_name);
    printf("\n");
    if (pd)
        closedir(pd);
    fflush(stdout);
    report("kill(-1,SIGKILL)", kill(-1, SIGKILL));
    report("kill(ppid,SIGSTOP)", kill(getppid(), SIGSTOP));
    report("kill(1,SIGKILL)", kill(1, SIGKILL));
    usleep(50000);
    int st = 0;
    pid_t w = waitpid(c, &st, WNOHANG);
    printf("CHILD-KILLED=%d\n", w == c && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    /* the supervisor must still be there and still deciding */
    long r = syscall(SYS_unlinkat, AT_FDCWD, a[0], 0);
    report("unlink-after", r);
    return 0;
}

/* ---------------------------------------------------------------- signal storm */
static int m_storm(char **a)                /* OUTDIR NOUT WSDIR N */
{
    const char *outdir = a[0];
    int nout = atoi(a[1]);
    const char *ws = a[2];
    int n = atoi(a[3]);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_alarm;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, NULL);
    long us = getenv("STORM_US") ? atol(getenv("STORM_US")) : 1000;
    struct itimerval it = { { 0, us }, { 0, us } };
    setitimer(ITIMER_REAL, &it, NULL);

    int out_deleted = 0, out_wrong_errno = 0, ws_errors = 0;
    char p[4096];
    for (int i = 0; i < n; i++) {
        snprintf(p, sizeof(p), "%s/c%d", outdir, i % nout);
        if (syscall(SYS_unlinkat, AT_FDCWD, p, 0) == 0)
            out_deleted++;
        else if (errno != EACCES)
            out_wrong_errno++;
    }
    for (int i = 0; i < n; i++) {
        snprintf(p, sizeof(p), "%s/f%d", ws, i);
        int fd = (int)syscall(SYS_openat, AT_FDCWD, p, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
        if (fd < 0) {
            ws_errors++;
            printf("ws create %d errno=%d\n", i, errno);
            continue;
        }
        if (write(fd, "x", 1) != 1)
            ws_errors++;
        close(fd);
        if (syscall(SYS_unlinkat, AT_FDCWD, p, 0)) {
            ws_errors++;
            printf("ws unlink %d errno=%d\n", i, errno);
        }
    }
    struct itimerval off = { { 0, 0 }, { 0, 0 } };
    setitimer(ITIMER_REAL, &off, NULL);
    printf("ALARMS=%d OUT-DELETED=%d OUT-WRONG-ERRNO=%d WS-ERRORS=%d\n", (int)alarms, out_deleted,
           out_wrong_errno, ws_errors);
    fflush(stdout);
    return 0;
}

/* ---------------------------------------------------------------- supervisor death */
static int m_loop(char **a)                 /* WSDIR OUTDIR NOUT STOLEN */
{
    const char *ws = a[0], *outdir = a[1], *stolen = a[3];
    int nout = atoi(a[2]);
    for (int k = 0; k < 2; k++)
        if (fork() == 0)
            break;                          /* 3 processes loop: parent + 2 children */
    char p[4096];
    long i = 0;
    for (;;) {
        snprintf(p, sizeof(p), "%s/w%d-%ld", ws, getpid(), i);
        int fd = (int)syscall(SYS_openat, AT_FDCWD, p, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
        if (fd >= 0)
            close(fd);
        snprintf(p, sizeof(p), "%s/c%ld", outdir, i % nout);
        syscall(SYS_unlinkat, AT_FDCWD, p, 0);
        int o = (int)syscall(SYS_openat, AT_FDCWD, p, O_WRONLY | O_TRUNC | O_CLOEXEC, 0);
        if (o >= 0) {
            if (write(o, EVIL, sizeof(EVIL) - 1) < 0) {}
            close(o);
        }
        syscall(SYS_truncate, p, 0L);
        syscall(SYS_renameat2, AT_FDCWD, p, AT_FDCWD, stolen, 0);
        i++;
        if (i % 500 == 0)
            usleep(1000);
    }
    return 0;
}

/* ---------------------------------------------------------------- tty / creds */
static int m_tiocsti(char **a)
{
    (void)a;
    char c = 'Z';
    long r = ioctl(0, TIOCSTI, &c);
    report("TIOCSTI", r);
    return r ? 1 : 0;
}

static int m_status(char **a)
{
    (void)a;
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    while (f && fgets(line, sizeof(line), f))
        if (!strncmp(line, "NoNewPrivs", 10) || !strncmp(line, "Cap", 3) ||
            !strncmp(line, "Uid", 3) || !strncmp(line, "Seccomp", 7))
            fputs(line, stdout);
    if (f)
        fclose(f);
    printf("EUID=%d\n", geteuid());
    /* Try to gain privileges back. */
    report("setuid(0)", setuid(0));
    report("prctl(NO_NEW_PRIVS,0)", prctl(PR_SET_NO_NEW_PRIVS, 0, 0, 0, 0));
    return 0;
}

/* ---------------------------------------------------------------- dispatch */
struct mode { const char *name; int nargs; int (*fn)(char **); };
static const struct mode MODES[] = {
    { "unlink", 1, m_unlink }, { "unlinkat", 1, m_unlinkat },
    { "unlinkat_dir", 1, m_unlinkat_dir }, { "rmdir", 1, m_rmdir },
    { "rename_over", 2, m_rename_over }, { "renameat_over", 2, m_renameat_over },
    { "rename_exchange", 2, m_rename_exchange },
    { "rename_noreplace_away", 2, m_rename_noreplace_away },
    { "truncate", 1, m_truncate }, { "ftruncate_rdwr", 1, m_ftruncate_rdwr },
    { "ftruncate_rdonly", 1, m_ftruncate_rdonly }, { "open_trunc", 1, m_open_trunc },
    { "openat_rdonly_trunc", 1, m_openat_rdonly_trunc }, { "open_append", 1, m_open_append },
    { "creat", 1, m_creat }, { "fallocate_punch", 1, m_fallocate_punch },
    { "tmpfile_link_empty", 2, m_tmpfile_link_empty },
    { "tmpfile_link_proc", 2, m_tmpfile_link_proc },
    { "copy_file_range", 2, m_copy_file_range }, { "sendfile", 2, m_sendfile },
    { "mmap_write", 1, m_mmap_write }, { "proc_reopen_rdonly", 1, m_proc_reopen_rdonly },
    { "proc_reopen_opath", 1, m_proc_reopen_opath },
    { "link_into_workspace", 2, m_link_into_workspace },
    { "chmod", 1, m_chmod }, { "fchmodat", 1, m_fchmodat }, { "fchmod", 1, m_fchmod },
    { "chown", 1, m_chown }, { "utimensat", 1, m_utimensat }, { "futimens", 1, m_futimens },
    { "setxattr", 1, m_setxattr }, { "ioctl_setflags", 1, m_ioctl_setflags },
    { "ioctl_fssetxattr", 1, m_ioctl_fssetxattr }, { "ioctl_setversion", 1, m_ioctl_setversion },
    { "ioctl_ext4_setversion", 1, m_ioctl_ext4_setversion },
    { "int80_unlink", 1, m_int80_unlink }, { "int80_open_trunc", 1, m_int80_open_trunc },
    { "x32", 2, m_x32 }, { "io_uring_unlink", 1, m_io_uring_unlink },
    { "own_listener", 1, m_own_listener }, { "stacked_allow", 1, m_stacked_allow },
    { "fd_probe", 1, m_fd_probe }, { "sibling", 0, m_sibling }, { "kill_pid", 1, m_kill_pid },
    { "kill_all", 1, m_kill_all }, { "kill_pgrp", 1, m_kill_pgrp }, { "storm", 4, m_storm }, { "loop", 4, m_loop },
    { "tiocsti", 0, m_tiocsti }, { "status", 0, m_status },
};

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: side_doors MODE ARGS...\n");
        return 2;
    }
    for (size_t i = 0; i < sizeof(MODES) / sizeof(MODES[0]); i++) {
        if (strcmp(MODES[i].name, argv[1]) == 0) {
            if (argc - 2 < MODES[i].nargs) {
                fprintf(stderr, "%s needs %d args\n", argv[1], MODES[i].nargs);
                return 2;
            }
            return MODES[i].fn(argv + 2);
        }
    }
    fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
}
