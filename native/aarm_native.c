/*
 * aarm_native.c - native part of the aarm-sandbox supervisor.
 *
 * Contains the sandbox launcher (namespaces, mount masking, capability
 * dropping, seccomp filter installation with a user-notification listener)
 * and thin, errno-free wrappers around the seccomp notification ioctls and
 * a few syscalls that glibc does not expose conveniently.
 *
 * Conventions: every exported function returns -errno on failure; errno is
 * never the error channel.
 *
 * Code that runs between clone() and execve() in the sandbox processes must
 * be async-signal-safe: the parent may be a multi-threaded Python process,
 * so no malloc, no stdio, no locks, no glibc fork() (it runs atfork handlers
 * and takes allocator locks).  Only raw syscalls and pure string helpers
 * are used there.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/audit.h>
#include <linux/futex.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <linux/securebits.h>

#include "aarm_native.h"

/* ------------------------------------------------------------------ */
/* Constants possibly missing from the (older) installed uapi headers. */

#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#endif
#ifndef PR_CAP_AMBIENT_CLEAR_ALL
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif
#ifndef SECBIT_NO_CAP_AMBIENT_RAISE
#define SECBIT_NO_CAP_AMBIENT_RAISE (1 << 6)
#endif
#ifndef SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED
#define SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED (1 << 7)
#endif
#ifndef __WALL
#define __WALL 0x40000000
#endif

_Static_assert(sizeof(struct aarm_notif) == sizeof(struct seccomp_notif),
               "struct aarm_notif must match struct seccomp_notif");
_Static_assert(sizeof(struct aarm_notif) == 80, "struct aarm_notif size");
_Static_assert(sizeof(struct seccomp_notif_data) == sizeof(struct seccomp_data),
               "struct seccomp_notif_data must match struct seccomp_data");

#define AARM_NS_FLAGS (CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | \
                       CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | \
                       CLONE_NEWCGROUP)

/* fd number the init keeps its end of the status socket on */
#define INIT_SOCK_FD 3

#define MSG_MAX 4096

/* ------------------------------------------------------------------ */
/* Async-signal-safe string helpers (used after clone).                */

struct sbuf {
    char *p;
    size_t cap;
    size_t len;
};

static void sb_put(struct sbuf *b, const char *s)
{
    if (!s)
        s = "(null)";
    while (*s && b->len + 1 < b->cap)
        b->p[b->len++] = *s++;
    b->p[b->len] = '\0';
}

static void sb_putc(struct sbuf *b, char c)
{
    if (b->len + 1 < b->cap) {
        b->p[b->len++] = c;
        b->p[b->len] = '\0';
    }
}

static void sb_putu(struct sbuf *b, unsigned long v)
{
    char tmp[24];
    int i = 0;
    do {
        tmp[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v && i < (int)sizeof(tmp));
    while (i > 0)
        sb_putc(b, tmp[--i]);
}

/* strerrordesc_np returns a static, untranslated string: no locale, no
 * allocation, hence usable after clone. */
static void sb_puterr(struct sbuf *b, int e)
{
    const char *d = strerrordesc_np(e);
    if (d) {
        sb_put(b, d);
    } else {
        sb_put(b, "Unknown error ");
        sb_putu(b, (unsigned long)e);
    }
}

static void write_all(int fd, const char *s, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, s, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        s += n;
        len -= (size_t)n;
    }
}

static long raw_fork(void)
{
    /* fork-like clone that bypasses glibc's fork() (atfork handlers,
     * allocator locks): safe in a child of a multi-threaded process. */
    return syscall(SYS_clone, (unsigned long)SIGCHLD, 0UL, 0UL, 0UL, 0UL);
}

/* ------------------------------------------------------------------ */
/* Sandbox init (runs in the cloned child).                            */

struct init_ctx {
    const struct aarm_spawn_config *cfg;
    int sock;                 /* our end of the socketpair */
    int parent_end;           /* parent's end, inherited: closed first */
    pid_t parent_pid;
    const char *path_env;     /* PATH value from envp (or default) */
    char warn[MSG_MAX];       /* accumulated warnings, starts with 'O' */
    struct sbuf wb;
    int go_pipe[2];           /* init -> command: process group and terminal are set up */
};

static volatile sig_atomic_t g_cmd_pid;

static void forward_signal(int sig)
{
    int saved = errno;
    pid_t p = (pid_t)g_cmd_pid;
    /* Like a terminal would: to the command's whole process group. */
    if (p > 0 && kill(-p, sig) < 0)
        kill(p, sig);
    errno = saved;
}

static void send_msg(int sock, const char *buf, size_t len, int fd)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } cmsgbuf;
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fd >= 0) {
        memset(&cmsgbuf, 0, sizeof(cmsgbuf));
        msg.msg_control = cmsgbuf.buf;
        msg.msg_controllen = sizeof(cmsgbuf.buf);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    if (fd < 0) {
        /* Plain write: sendmsg may be a notified syscall once the filter is in. */
        for (;;) {
            ssize_t n = write(sock, buf, len);
            if (n >= 0 || errno != EINTR)
                return;
        }
    }
    for (;;) {
        ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (n >= 0 || errno != EINTR)
            return;
    }
}


/* Bring the loopback interface of a fresh network namespace up, so servers and clients
 * inside the sandbox can talk to each other while nothing can leave it. */
static int loopback_up(void)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    memcpy(ifr.ifr_name, "lo", 3);
    int e = 0;
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) {
        e = errno;
    } else {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
            e = errno;
    }
    close(s);
    return e;
}

__attribute__((noreturn))
static void init_fail(struct init_ctx *c, const char *step, const char *what,
                      int e)
{
    char buf[1024];
    struct sbuf b = { buf, sizeof(buf), 0 };
    buf[0] = '\0';
    sb_putc(&b, 'E');
    sb_put(&b, step);
    if (what) {
        sb_putc(&b, ' ');
        sb_put(&b, what);
    }
    sb_put(&b, ": ");
    sb_puterr(&b, e);
    send_msg(c->sock, buf, b.len, -1);
    _exit(125);
}

static void init_warn(struct init_ctx *c, const char *step, const char *what,
                      int e)
{
    if (c->wb.len > 1)
        sb_putc(&c->wb, '\n');
    sb_put(&c->wb, "warning: ");
    sb_put(&c->wb, step);
    if (what) {
        sb_putc(&c->wb, ' ');
        sb_put(&c->wb, what);
    }
    if (e) {
        sb_put(&c->wb, ": ");
        sb_puterr(&c->wb, e);
    }
}

/* returns 0 or errno */
static int write_file(const char *path, const char *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    ssize_t n;
    do {
        n = write(fd, data, len);
    } while (n < 0 && errno == EINTR);
    int e = (n < 0) ? errno : ((size_t)n != len ? EIO : 0);
    close(fd);
    return e;
}

static void write_id_map(struct init_ctx *c, const char *path, unsigned int id)
{
    char buf[64];
    struct sbuf b = { buf, sizeof(buf), 0 };
    buf[0] = '\0';
    sb_putu(&b, id);
    sb_putc(&b, ' ');
    sb_putu(&b, id);
    sb_put(&b, " 1\n");
    int e = write_file(path, buf, b.len);
    if (e)
        init_fail(c, "write", path, e);
}

static void mask_with_tmpfs(struct init_ctx *c, const char *path)
{
    if (mount("tmpfs", path, "tmpfs",
              MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
              "size=4k,mode=0755") < 0)
        init_fail(c, "mask directory", path, errno);
}

/* A bind mount made read-only.  Keep whatever nosuid/nodev/noexec flags the
 * bind inherited: in a user namespace those are locked and dropping them
 * gives EPERM. */
static void remount_readonly(struct init_ctx *c, const char *path)
{
    unsigned long keep = 0;
    struct statfs sf;
    if (statfs(path, &sf) == 0) {
        if (sf.f_flags & ST_NOSUID)
            keep |= MS_NOSUID;
        if (sf.f_flags & ST_NODEV)
            keep |= MS_NODEV;
        if (sf.f_flags & ST_NOEXEC)
            keep |= MS_NOEXEC;
    }
    if (mount(NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | keep, NULL) < 0)
        init_fail(c, "remount read-only", path, errno);
}

static void mask_with_devnull(struct init_ctx *c, const char *path)
{
    if (mount("/dev/null", path, NULL, MS_BIND, NULL) < 0)
        init_fail(c, "mask file", path, errno);
    remount_readonly(c, path);
}

/* Masks an existing path: directories get an empty read-only tmpfs, other
 * files get /dev/null.  The list a path came from does not matter: a
 * "file" that turns out to be a directory is still masked (fail closed).
 * Nonexistent paths are skipped. */
static void mask_path(struct init_ctx *c, const char *path)
{
    struct stat st;
    if (!path || !*path)
        return;
    if (stat(path, &st) < 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            return;
        init_fail(c, "stat", path, errno);
    }
    if (S_ISDIR(st.st_mode))
        mask_with_tmpfs(c, path);
    else
        mask_with_devnull(c, path);
}

/* ---- directory views ----
 * A mask hides what exists at launch; a credential file the host creates or replaces (by
 * rename) during the session would be visible.  A view replaces a directory by an empty
 * tmpfs holding every entry the directory had at launch except the hidden names: a bind
 * of each file or directory (symlinks recreated as such), so entries the host adds later
 * are not in the sandbox's sight at all.  The view's own root is read-only: nothing is
 * created there that would vanish with the session. */
#define VIEW_MAX_ENTRIES 4096

struct linux_dirent64_ {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

static int view_hides(const char *dir, const char *name, char *const *pairs)
{
    for (char *const *p = pairs; p[0] && p[1]; p += 2)
        if (strcmp(p[0], dir) == 0 && strcmp(p[1], name) == 0)
            return 1;
    return 0;
}

/* dir + "/" + name into buf; 0 when it does not fit */
static int join(char *buf, size_t cap, const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    if (a + 1 + b + 1 > cap)
        return 0;
    memcpy(buf, dir, a);
    buf[a] = '/';
    memcpy(buf + a + 1, name, b + 1);
    return 1;
}

static void view_entry(struct init_ctx *c, const char *dir, int dfd, int vfd, const char *name)
{
    struct stat st;
    char src[64], dst[PATH_MAX];
    if (!join(dst, sizeof dst, dir, name)) {
        init_warn(c, "view: left out (path too long)", dir, ENAMETOOLONG);
        return;
    }
    /* An entry that cannot be looked at (a dead FUSE mount, EACCES, EIO) is left out of
     * the view, with a warning: hiding more is never unsafe, and one broken entry must not
     * keep every session from starting. */
    if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        if (errno != ENOENT)            /* (ENOENT: gone meanwhile) */
            init_warn(c, "view: left out", dst, errno);
        return;
    }
    if (S_ISLNK(st.st_mode)) {
        char target[PATH_MAX];
        ssize_t n = readlinkat(dfd, name, target, sizeof target - 1);
        if (n < 0) {
            init_warn(c, "view: left out", dst, errno);
            return;
        }
        target[n] = '\0';
        if (symlinkat(target, vfd, name) < 0)
            init_fail(c, "view: symlink", dst, errno);
        return;
    }
    if (S_ISDIR(st.st_mode)) {
        if (mkdirat(vfd, name, 0755) < 0)
            init_fail(c, "view: mkdir", dst, errno);
    } else {
        int f = openat(vfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (f < 0)
            init_fail(c, "view: create", dst, errno);
        close(f);
    }
    struct sbuf b = { src, sizeof src, 0 };
    sb_put(&b, "/proc/self/fd/");
    sb_putu(&b, (unsigned long)dfd);
    src[b.len] = '\0';
    char from[PATH_MAX];
    if (!join(from, sizeof from, src, name))
        init_fail(c, "view: path too long", dir, ENAMETOOLONG);
    if (mount(from, dst, NULL, MS_BIND | MS_REC, NULL) < 0) {
        int e = errno;
        unlinkat(vfd, name, S_ISDIR(st.st_mode) ? AT_REMOVEDIR : 0);   /* no empty stand-in */
        init_warn(c, "view: left out", dst, e);
    }
}

/* dir becomes its view; pairs: dir, name, dir, name, ..., NULL (only this dir's count).
 * A directory the sandbox cannot open (absent, not a directory, not readable) is left
 * alone: what it holds is out of sight natively too. */
static void make_view(struct init_ctx *c, const char *dir, char *const *pairs)
{
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        if (errno == ENOENT || errno == ENOTDIR || errno == EACCES)
            return;
        init_fail(c, "view: open", dir, errno);
    }
    struct stat dst;
    if (fstat(dfd, &dst) < 0)
        init_fail(c, "view: stat", dir, errno);
    char opts[96];
    struct sbuf o = { opts, sizeof opts, 0 };
    opts[0] = '\0';
    sb_put(&o, "mode=0");       /* (no size=: symlink targets take pages of their own) */
    char oct[8];
    int k = 0;
    unsigned m = dst.st_mode & 07777;
    do {
        oct[k++] = (char)('0' + (m & 7));
        m >>= 3;
    } while (m);
    while (k)
        sb_putc(&o, oct[--k]);
    if (dst.st_uid == c->cfg->outer_uid && dst.st_gid == c->cfg->outer_gid) {
        sb_put(&o, ",uid=");
        sb_putu(&o, dst.st_uid);
        sb_put(&o, ",gid=");
        sb_putu(&o, dst.st_gid);
    }
    opts[o.len] = '\0';
    if (mount("tmpfs", dir, "tmpfs", MS_NOSUID | MS_NODEV, opts) < 0)
        init_fail(c, "view: mount tmpfs", dir, errno);
    int vfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (vfd < 0)
        init_fail(c, "view: open", dir, errno);
    char buf[8192];
    int count = 0;
    for (;;) {
        long n = syscall(SYS_getdents64, dfd, buf, sizeof buf);
        if (n < 0)
            init_fail(c, "view: read directory", dir, errno);
        if (n == 0)
            break;
        for (long off = 0; off < n;) {
            struct linux_dirent64_ *d = (struct linux_dirent64_ *)(buf + off);
            off += d->d_reclen;
            const char *name = d->d_name;
            if (!strcmp(name, ".") || !strcmp(name, "..") || view_hides(dir, name, pairs))
                continue;
            if (++count > VIEW_MAX_ENTRIES)
                init_fail(c, "view: too many entries in", dir, E2BIG);
            view_entry(c, dir, dfd, vfd, name);
        }
    }
    close(vfd);
    close(dfd);
    if (mount(NULL, dir, NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0)
        init_fail(c, "view: remount read-only", dir, errno);
}

/* A read-only bind of src over dst (dst must exist; a symlink is followed, as
 * for /etc/resolv.conf -> /run/systemd/resolve/stub-resolv.conf). */
static void bind_file(struct init_ctx *c, const char *src, const char *dst)
{
    if (mount(src, dst, NULL, MS_BIND, NULL) < 0) {
        init_warn(c, "bind", dst, errno);
        return;
    }
    remount_readonly(c, dst);
}

#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef OPEN_TREE_CLOEXEC
#define OPEN_TREE_CLOEXEC O_CLOEXEC
#endif
#ifndef MOUNT_ATTR_NOSYMFOLLOW
#define MOUNT_ATTR_NOSYMFOLLOW 0x00200000
#endif
struct aarm_mount_attr { uint64_t attr_set, attr_clr, propagation, userns_fd; };

/* A detached copy of the sandbox's whole mount tree (made after every mount of the
 * setup; the command may not mount anything) on which no symlink is ever followed:
 * every mount of the copy is MOUNT_ATTR_NOSYMFOLLOW.  The supervisor's native fast
 * path performs unlinkat/mkdirat through it with the canonical path, and a symlink
 * anywhere on the way fails with ELOOP: what an openat2(RESOLVE_NO_SYMLINKS) pin of the
 * parent directory guaranteed, without opening and closing that pin for every call
 * (~1 us of each delete).  Made here because only a process in the sandbox's mount
 * namespace, with its capabilities, may clone it (`doctor` calls it in a probe child).
 * -errno when the kernel cannot (older than 5.14, or refused): the fast path then pins
 * each parent as before. */
int aarm_make_nosym_root(void)
{
    int fd = (int)syscall(SYS_open_tree, AT_FDCWD, "/",
                          OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
    if (fd < 0)
        return -errno;
    struct aarm_mount_attr attr = { .attr_set = MOUNT_ATTR_NOSYMFOLLOW };
    if (syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

/* The DNS stub's socket, made here because only a process inside the network
 * namespace (with its capabilities, before they are dropped) can bind port 53
 * there; the supervisor takes a copy with pidfd_getfd and serves it. */
static int make_dns_stub(struct init_ctx *c)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
        init_warn(c, "dns stub socket", NULL, errno);
        return -1;
    }
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons(53);
    a.sin_addr.s_addr = htonl(0x7f000035);     /* 127.0.0.53 */
    if (bind(s, (struct sockaddr *)&a, sizeof(a)) < 0) {
        init_warn(c, "dns stub bind 127.0.0.53:53", NULL, errno);
        close(s);
        return -1;
    }
    return s;
}

static void close_other_fds(struct init_ctx *c)
{
    if (c->sock != INIT_SOCK_FD) {
        if (dup3(c->sock, INIT_SOCK_FD, O_CLOEXEC) < 0)
            init_fail(c, "dup3", NULL, errno);
        close(c->sock);
        c->sock = INIT_SOCK_FD;
    }
    if (syscall(SYS_close_range, INIT_SOCK_FD + 1, ~0U, 0) == 0)
        return;
    struct rlimit rl;
    long max = 65536;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < (rlim_t)(1 << 20))
        max = (long)rl.rlim_cur;
    for (long fd = INIT_SOCK_FD + 1; fd < max; fd++)
        close((int)fd);
}

static void drop_capabilities(struct init_ctx *c)
{
    struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof(data));
    int have_setpcap = 1;
    if (syscall(SYS_capget, &hdr, data) == 0)
        have_setpcap = (data[0].effective & (1U << CAP_SETPCAP)) != 0;

    unsigned long bits = SECBIT_NOROOT | SECBIT_NOROOT_LOCKED |
                         SECBIT_NO_SETUID_FIXUP | SECBIT_NO_SETUID_FIXUP_LOCKED |
                         SECBIT_KEEP_CAPS_LOCKED |
                         SECBIT_NO_CAP_AMBIENT_RAISE |
                         SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    if (prctl(PR_SET_SECUREBITS, bits, 0, 0, 0) < 0) {
        /* Without CAP_SETPCAP there is nothing to lock: we cannot hold or
         * regain capabilities (no_new_privs + empty permitted set). */
        if (errno != EPERM || have_setpcap)
            init_fail(c, "prctl(PR_SET_SECUREBITS)", NULL, errno);
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 &&
        errno != EINVAL)
        init_fail(c, "prctl(PR_CAP_AMBIENT_CLEAR_ALL)", NULL, errno);
    for (int cap = 0; cap < 64; cap++) {
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
            if (errno == EINVAL)
                break;
            if (errno == EPERM && !have_setpcap)
                break;
            init_fail(c, "prctl(PR_CAPBSET_DROP)", NULL, errno);
        }
    }
    memset(data, 0, sizeof(data));
    hdr.version = _LINUX_CAPABILITY_VERSION_3;
    hdr.pid = 0;
    if (syscall(SYS_capset, &hdr, data) < 0)
        init_fail(c, "capset", NULL, errno);
}

static void reset_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        sigaction(sig, &sa, NULL); /* EINVAL for glibc-reserved: ignore */
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

/* execvpe() over the PATH taken from the *target* environment, without
 * allocation. Returns the errno to report. */
static int exec_search(char *const *argv, char *const *envp, const char *path)
{
    const char *file = argv[0];
    if (!file || !*file)
        return ENOENT;
    if (strchr(file, '/')) {
        execve(file, argv, envp);
        return errno;
    }
    size_t flen = strlen(file);
    if (flen > NAME_MAX)
        return ENAMETOOLONG;
    char buf[PATH_MAX + NAME_MAX + 2];
    int saw_eacces = 0;
    int last = ENOENT;
    const char *p = path;
    for (;;) {
        const char *end = strchr(p, ':');
        size_t dlen = end ? (size_t)(end - p) : strlen(p);
        if (dlen == 0) {
            buf[0] = '.';
            dlen = 1;
        } else if (dlen <= PATH_MAX) {
            memcpy(buf, p, dlen);
        } else {
            last = ENAMETOOLONG;
            goto next;
        }
        buf[dlen] = '/';
        memcpy(buf + dlen + 1, file, flen + 1);
        execve(buf, argv, envp);
        switch (errno) {
        case EACCES:
            saw_eacces = 1;
            /* fallthrough */
        case ENOENT:
        case ENOTDIR:
        case ESTALE:
        case ENODEV:
        case ETIMEDOUT:
        case ENAMETOOLONG:
        case ELOOP:
            last = errno;
            break;
        default:
            return errno;
        }
    next:
        if (!end)
            break;
        p = end + 1;
    }
    return saw_eacces ? EACCES : last;
}

__attribute__((noreturn))
static void command_main(struct init_ctx *c, pid_t init_pid)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (getppid() != init_pid)
        _exit(125);
    /* Own process group: kill(0, sig) inside must never reach the supervisor or the
     * shell that started it. The init makes it the terminal's foreground group (when the
     * supervisor was), then lets us go on. */
    setpgid(0, 0);
    {
        char go;
        ssize_t r;
        close(c->go_pipe[1]);
        do {
            r = read(c->go_pipe[0], &go, 1);
        } while (r < 0 && errno == EINTR);
        close(c->go_pipe[0]);
    }
    reset_signals();
    close(c->sock);
    int e = exec_search(c->cfg->argv, c->cfg->envp, c->path_env);
    char buf[1024];
    struct sbuf b = { buf, sizeof(buf), 0 };
    buf[0] = '\0';
    sb_put(&b, "aarm-sandbox: cannot run ");
    sb_put(&b, c->cfg->argv[0]);
    sb_put(&b, ": ");
    sb_puterr(&b, e);
    sb_putc(&b, '\n');
    write_all(2, buf, b.len);
    _exit(e == EACCES ? 126 : 127);
}

__attribute__((noreturn))
static void init_main(struct init_ctx *c)
{
    const struct aarm_spawn_config *cfg = c->cfg;
    int flags = cfg->clone_flags;

    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    close(c->parent_end);
    /* Did the parent die before PDEATHSIG was armed?  With CLONE_NEWPID
     * getppid() is 0 either way, so also check the socket for a hangup. */
    if (!(flags & CLONE_NEWPID) && getppid() != c->parent_pid)
        _exit(125);
    {
        struct pollfd pfd = { .fd = c->sock, .events = POLLIN };
        if (poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLHUP | POLLERR)))
            _exit(125);
    }
    reset_signals();

    c->wb.p = c->warn;
    c->wb.cap = sizeof(c->warn);
    c->wb.len = 0;
    sb_putc(&c->wb, 'O');

    if (flags & CLONE_NEWUSER) {
        int e = write_file("/proc/self/setgroups", "deny", 4);
        if (e && e != ENOENT)
            init_fail(c, "write", "/proc/self/setgroups", e);
        write_id_map(c, "/proc/self/uid_map", cfg->outer_uid);
        write_id_map(c, "/proc/self/gid_map", cfg->outer_gid);
    }

    int have_masks = (cfg->mask_dirs && cfg->mask_dirs[0]) ||
                     (cfg->mask_files && cfg->mask_files[0]);
    if (flags & CLONE_NEWNS) {
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
            init_fail(c, "make / private", NULL, errno);
        if (cfg->mount_proc) {
            if (!(flags & CLONE_NEWPID)) {
                init_warn(c, "mount /proc", "skipped (needs a pid namespace)", 0);
            } else if (mount("proc", "/proc", "proc",
                             MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) {
                if (errno == EPERM || errno == EBUSY)
                    init_warn(c, "mount /proc", NULL, errno);
                else
                    init_fail(c, "mount /proc", NULL, errno);
            }
        }
        if (cfg->view_hide)
            for (char *const *p = cfg->view_hide; p[0] && p[1]; p += 2) {
                int first = 1;          /* each directory once, at its first pair */
                for (char *const *q = cfg->view_hide; q < p; q += 2)
                    if (strcmp(q[0], p[0]) == 0)
                        first = 0;
                if (first)
                    make_view(c, p[0], cfg->view_hide);
            }
        if (cfg->bind_files)
            for (char *const *p = cfg->bind_files; p[0] && p[1]; p += 2)
                bind_file(c, p[0], p[1]);
        if (cfg->mask_dirs)
            for (char *const *p = cfg->mask_dirs; *p; p++)
                mask_path(c, *p);
        if (cfg->mask_files)
            for (char *const *p = cfg->mask_files; *p; p++)
                mask_path(c, *p);
    } else {
        if (have_masks)
            init_fail(c, "masking needs a mount namespace", NULL, EINVAL);
        if (cfg->mount_proc)
            init_warn(c, "mount /proc", "skipped (needs a mount namespace)", 0);
    }

    if (cfg->cwd && cfg->cwd[0] && chdir(cfg->cwd) < 0)
        init_fail(c, "chdir", cfg->cwd, errno);

    if ((flags & CLONE_NEWNET) && cfg->loopback_up) {
        int e = loopback_up();
        if (e)
            init_fail(c, "bring up loopback", NULL, e);
    }
    if ((flags & CLONE_NEWNS) && cfg->private_shm) {
        struct stat shm;
        if (stat("/dev/shm", &shm) == 0 && S_ISDIR(shm.st_mode) &&
            mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0)
            init_warn(c, "mount private /dev/shm", NULL, errno);
    }

    close_other_fds(c);
    int dns_stub = -1;
    if (cfg->out_dns_stub && (flags & CLONE_NEWNET) && cfg->loopback_up)
        dns_stub = make_dns_stub(c);
    int nosym_root = -1;
    if (cfg->out_nosym_root && (flags & CLONE_NEWNS))
        nosym_root = aarm_make_nosym_root();
    if (nosym_root < 0)
        nosym_root = -1;

    /* No core dumps: the kernel writes them itself, into the crashing process's cwd (a
     * relative core_pattern), replacing any file named "core" there - a file outside the
     * workspace, with contents the sandbox chose, and no decision.  The hard limit is 0
     * for the whole tree: nothing inside can raise it again. */
    struct rlimit nocore = { 0, 0 };
    if (setrlimit(RLIMIT_CORE, &nocore) < 0)
        init_fail(c, "setrlimit(RLIMIT_CORE, 0)", NULL, errno);

    if (cfg->drop_caps)
        drop_capabilities(c);

    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        init_fail(c, "prctl(PR_SET_NO_NEW_PRIVS)", NULL, errno);

    struct sock_fprog prog = {
        .len = (unsigned short)cfg->bpf_len,
        .filter = (struct sock_filter *)cfg->bpf,
    };
    unsigned long sflags = SECCOMP_FILTER_FLAG_NEW_LISTENER | cfg->seccomp_flags;
    long listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, sflags, &prog);
    if (listener < 0 && errno == EINVAL &&
        (sflags & SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV)) {
        sflags &= ~(unsigned long)SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
        listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, sflags, &prog);
        if (listener >= 0)
            init_warn(c, "seccomp", "WAIT_KILLABLE_RECV not supported", 0);
    }
    if (listener < 0)
        init_fail(c, "seccomp", NULL, errno);

    /* From here on every syscall we make is filtered, and sendmsg is a notified
     * syscall nobody can answer yet: so only write the listener's fd number (write is
     * never notified) and let the parent take the fd with pidfd_getfd, then wait for
     * its acknowledgement before closing our copy. */
    {
        char msg[MSG_MAX];
        int lfd = (int)listener;
        size_t wl = c->wb.len > 1 ? c->wb.len - 1 : 0;
        if (wl > sizeof(msg) - 1 - 3 * sizeof(int))
            wl = sizeof(msg) - 1 - 3 * sizeof(int);
        msg[0] = 'L';
        memcpy(msg + 1, &lfd, sizeof(int));
        memcpy(msg + 1 + sizeof(int), &dns_stub, sizeof(int));
        memcpy(msg + 1 + 2 * sizeof(int), &nosym_root, sizeof(int));
        memcpy(msg + 1 + 3 * sizeof(int), c->warn + 1, wl);
        send_msg(c->sock, msg, 1 + 3 * sizeof(int) + wl, -1);
        char ack = 0;
        ssize_t an;
        do {
            an = read(c->sock, &ack, 1);
        } while (an < 0 && errno == EINTR);
        if (an != 1 || ack != 'A')
            _exit(125);
    }
    close((int)listener);
    if (dns_stub >= 0)
        close(dns_stub);
    if (nosym_root >= 0)
        close(nosym_root);

    pid_t self = getpid();
    if (!(flags & CLONE_NEWPID))
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);

    static const int fwd[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1,
                               SIGUSR2, SIGWINCH, SIGCONT, SIGTSTP };
    sigset_t block, old;
    sigemptyset(&block);
    for (size_t i = 0; i < sizeof(fwd) / sizeof(fwd[0]); i++)
        sigaddset(&block, fwd[i]);
    sigprocmask(SIG_BLOCK, &block, &old);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = forward_signal;
    sa.sa_flags = SA_RESTART;
    sigfillset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof(fwd) / sizeof(fwd[0]); i++)
        sigaction(fwd[i], &sa, NULL);

    if (pipe2(c->go_pipe, O_CLOEXEC) < 0) {
        c->go_pipe[0] = c->go_pipe[1] = -1;
    }
    long cmd = raw_fork();
    if (cmd == 0)
        command_main(c, self);
    if (cmd > 0) {
        setpgid((pid_t)cmd, (pid_t)cmd);
        if (isatty(0) && tcgetpgrp(0) == getpgrp())
            tcsetpgrp(0, (pid_t)cmd);
        if (c->go_pipe[1] >= 0) {
            close(c->go_pipe[0]);
            write_all(c->go_pipe[1], "g", 1);
            close(c->go_pipe[1]);
        }
    }
    if (cmd < 0) {
        int e = errno;
        char buf[256];
        struct sbuf b = { buf, sizeof(buf), 0 };
        buf[0] = '\0';
        sb_put(&b, "aarm-sandbox: cannot fork command: ");
        sb_puterr(&b, e);
        sb_putc(&b, '\n');
        write_all(2, buf, b.len);
        char st[1 + sizeof(int)];
        int status = 125 << 8; /* as if exited with 125 */
        st[0] = 'S';
        memcpy(st + 1, &status, sizeof(int));
        send_msg(c->sock, st, sizeof(st), -1);
        _exit(0);
    }
    g_cmd_pid = (sig_atomic_t)cmd;
    sigprocmask(SIG_SETMASK, &old, NULL);
    /* The command cannot ptrace us or read our memory. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);

    for (;;) {
        int status = 0;
        pid_t w = waitpid(-1, &status, __WALL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            _exit(1); /* ECHILD without seeing the command: parent gets EPIPE */
        }
        if (w == (pid_t)cmd) {
            char st[1 + sizeof(int)];
            st[0] = 'S';
            memcpy(st + 1, &status, sizeof(int));
            send_msg(c->sock, st, sizeof(st), -1);
            _exit(0);
        }
    }
}

/* ------------------------------------------------------------------ */
/* Parent side.                                                        */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static const char *find_path(char *const *envp)
{
    if (envp)
        for (char *const *e = envp; *e; e++)
            if (strncmp(*e, "PATH=", 5) == 0)
                return *e + 5;
    return "/bin:/usr/bin";
}

static void reap(pid_t pid, int *status)
{
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (status)
        *status = st;
}

int aarm_spawn(const struct aarm_spawn_config *cfg, int *out_listener,
               int *out_status_fd, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (!cfg || !out_listener || !out_status_fd) {
        set_err(err, errlen, "aarm_spawn: invalid arguments");
        return -1;
    }
    if (cfg->out_dns_stub)
        *cfg->out_dns_stub = -1;
    if (!cfg->argv || !cfg->argv[0] || !cfg->argv[0][0]) {
        set_err(err, errlen, "argv: empty command");
        return -1;
    }
    if (!cfg->envp) {
        set_err(err, errlen, "envp: must not be NULL");
        return -1;
    }
    if (!cfg->bpf || cfg->bpf_len == 0 || cfg->bpf_len > BPF_MAXINSNS) {
        set_err(err, errlen, "bpf: invalid program length %u", cfg->bpf_len);
        return -1;
    }
    if (cfg->clone_flags & ~AARM_NS_FLAGS) {
        set_err(err, errlen, "clone_flags: unsupported flags 0x%x",
                (unsigned)(cfg->clone_flags & ~AARM_NS_FLAGS));
        return -1;
    }

    struct init_ctx *c = calloc(1, sizeof(*c));
    if (!c) {
        set_err(err, errlen, "malloc: %s", strerror(ENOMEM));
        return -1;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        set_err(err, errlen, "socketpair: %s", strerror(errno));
        free(c);
        return -1;
    }
    c->cfg = cfg;
    c->sock = sv[1];
    c->parent_end = sv[0];
    c->parent_pid = getpid();
    c->path_env = find_path(cfg->envp);

    long pid = syscall(SYS_clone,
                       (unsigned long)(cfg->clone_flags | SIGCHLD),
                       0UL, 0UL, 0UL, 0UL);
    if (pid == 0)
        init_main(c); /* never returns */
    int clone_errno = errno;
    close(sv[1]);
    free(c);
    if (pid < 0) {
        close(sv[0]);
        set_err(err, errlen, "clone: %s", strerror(clone_errno));
        return -1;
    }

    char buf[MSG_MAX + 1];
    union {
        char buf[CMSG_SPACE(sizeof(int) * 8)];
        struct cmsghdr align;
    } cmsgbuf;
    struct iovec iov = { .iov_base = buf, .iov_len = MSG_MAX };
    struct msghdr msg;
    ssize_t n;
    do {
        memset(&msg, 0, sizeof(msg));
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsgbuf.buf;
        msg.msg_controllen = sizeof(cmsgbuf.buf);
        n = recvmsg(sv[0], &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    int recv_errno = errno;

    int listener = -1;
    if (n > 0) {
        for (struct cmsghdr *h = CMSG_FIRSTHDR(&msg); h; h = CMSG_NXTHDR(&msg, h)) {
            if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
                continue;
            size_t nfd = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < nfd; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof(int));
                if (listener < 0)
                    listener = fd;
                else
                    close(fd);
            }
        }
    }

    if (n >= (ssize_t)(1 + 3 * sizeof(int)) && buf[0] == 'L' && listener < 0) {
        int remote, remote_dns, remote_nosym;
        memcpy(&remote, buf + 1, sizeof(int));
        memcpy(&remote_dns, buf + 1 + sizeof(int), sizeof(int));
        memcpy(&remote_nosym, buf + 1 + 2 * sizeof(int), sizeof(int));
        int pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
        if (pidfd >= 0) {
            listener = (int)syscall(SYS_pidfd_getfd, pidfd, remote, 0);
            recv_errno = errno;
            if (listener >= 0 && remote_dns >= 0 && cfg->out_dns_stub)
                *cfg->out_dns_stub = (int)syscall(SYS_pidfd_getfd, pidfd, remote_dns, 0);
            if (listener >= 0 && remote_nosym >= 0 && cfg->out_nosym_root)
                *cfg->out_nosym_root = (int)syscall(SYS_pidfd_getfd, pidfd, remote_nosym, 0);
            close(pidfd);
        } else {
            recv_errno = errno;
        }
        if (listener >= 0 && write(sv[0], "A", 1) == 1) {
            size_t wl = (size_t)n - 1 - 3 * sizeof(int);
            memmove(buf + 1, buf + 1 + 3 * sizeof(int), wl);
            buf[0] = 'O';
            n = (ssize_t)(1 + wl);
        } else {
            if (listener >= 0)
                close(listener);
            listener = -1;
            if (cfg->out_dns_stub && *cfg->out_dns_stub >= 0) {
                close(*cfg->out_dns_stub);
                *cfg->out_dns_stub = -1;
            }
            if (cfg->out_nosym_root && *cfg->out_nosym_root >= 0) {
                close(*cfg->out_nosym_root);
                *cfg->out_nosym_root = -1;
            }
            kill((pid_t)pid, SIGKILL);
            close(sv[0]);
            int st2 = 0;
            reap((pid_t)pid, &st2);
            set_err(err, errlen, "taking the seccomp listener (pidfd_getfd): %s",
                    strerror(recv_errno));
            return -1;
        }
    }
    if (n > 0 && buf[0] == 'O' && listener >= 0 && !(msg.msg_flags & MSG_CTRUNC)) {
        buf[n] = '\0';
        if (n > 1)
            set_err(err, errlen, "%s", buf + 1);
        *out_listener = listener;
        *out_status_fd = sv[0];
        return (int)pid;
    }

    /* failure */
    if (listener >= 0)
        close(listener);
    if (cfg->out_dns_stub && *cfg->out_dns_stub >= 0) {
        close(*cfg->out_dns_stub);
        *cfg->out_dns_stub = -1;
    }
    if (cfg->out_nosym_root && *cfg->out_nosym_root >= 0) {
        close(*cfg->out_nosym_root);
        *cfg->out_nosym_root = -1;
    }
    if (n > 0 && buf[0] == 'O')
        kill((pid_t)pid, SIGKILL); /* protocol error: do not leave it running */
    close(sv[0]);
    int st = 0;
    reap((pid_t)pid, &st);
    if (n > 1 && buf[0] == 'E') {
        buf[n] = '\0';
        set_err(err, errlen, "%s", buf + 1);
    } else if (n < 0) {
        set_err(err, errlen, "recvmsg: %s", strerror(recv_errno));
    } else if (n > 0 && buf[0] == 'O') {
        set_err(err, errlen, "sandbox init: listener fd was not received");
    } else if (WIFSIGNALED(st)) {
        set_err(err, errlen, "sandbox init died during setup: killed by signal %d",
                WTERMSIG(st));
    } else {
        set_err(err, errlen, "sandbox init died during setup: exit status %d",
                WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    }
    return -1;
}

int aarm_read_status(int status_fd, int *out_wait_status)
{
    char buf[64];
    ssize_t n;
    do {
        n = recv(status_fd, buf, sizeof(buf), 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == ECONNRESET ? -EPIPE : -errno;
    if (n == 0)
        return -EPIPE;
    if (buf[0] != 'S' || n < (ssize_t)(1 + sizeof(int)))
        return -EPROTO;
    int st;
    memcpy(&st, buf + 1, sizeof(int));
    if (out_wait_status)
        *out_wait_status = st;
    return 0;
}

/* ------------------------------------------------------------------ */
/* seccomp notification wrappers.                                       */

/* ---- the decision thread's claim on the GIL ------------------------------
 * From the moment a receive hands a notification to Python until the decision
 * thread next enters a receive, it holds a claim.  Background Python threads
 * (the journal writer, the fast path's drainer) check it between records and
 * wait here, without the GIL, while it is held: otherwise the decision thread
 * waits for them to drop the GIL (a whole switch interval, each time a C call
 * returns) and a Python-path decision cost ~25 us more with journaling on.
 * Seq-cst on both sides: a waiter that registers after the claim was dropped
 * finds the futex value changed and returns at once. */
static _Atomic int g_claim;
static _Atomic int g_claim_waiters;

void aarm_claim_set(void)
{
    atomic_store(&g_claim, 1);
}

void aarm_claim_clear(void)
{
    atomic_store(&g_claim, 0);
    if (atomic_load(&g_claim_waiters))
        syscall(SYS_futex, &g_claim, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

const int *aarm_claim_ptr(void)
{
    return (const int *)&g_claim;
}

int aarm_yield_to_decisions(int64_t timeout_ns)
{
    if (!atomic_load(&g_claim))
        return 0;
    if (timeout_ns <= 0)
        return 1;
    struct timespec end, now, left;
    clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_sec += (time_t)(timeout_ns / 1000000000);
    end.tv_nsec += (long)(timeout_ns % 1000000000);
    if (end.tv_nsec >= 1000000000L) {
        end.tv_sec++;
        end.tv_nsec -= 1000000000L;
    }
    atomic_fetch_add(&g_claim_waiters, 1);
    while (atomic_load(&g_claim)) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        left.tv_sec = end.tv_sec - now.tv_sec;
        left.tv_nsec = end.tv_nsec - now.tv_nsec;
        if (left.tv_nsec < 0) {
            left.tv_sec--;
            left.tv_nsec += 1000000000L;
        }
        if (left.tv_sec < 0)
            break;                      /* never starve the journal: go on after the timeout */
        syscall(SYS_futex, &g_claim, FUTEX_WAIT_PRIVATE, 1, &left, NULL, 0);
    }
    atomic_fetch_sub(&g_claim_waiters, 1);
    return 1;
}

int aarm_notif_recv(int listener, struct aarm_notif *n)
{
    if (!n)
        return -EINVAL;
    aarm_claim_clear();
    for (;;) {
        memset(n, 0, sizeof(*n));
        if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, n) == 0)
            break;
        if (errno != EINTR) {
            int e = errno;
            aarm_claim_set();
            return -e;
        }
    }
    aarm_claim_set();
    return 0;
}

int aarm_notif_send(int listener, uint64_t id, int64_t val, int32_t error,
                    uint32_t flags)
{
    struct seccomp_notif_resp resp;
    memset(&resp, 0, sizeof(resp));
    resp.id = id;
    resp.val = val;
    resp.error = error;
    resp.flags = flags;
    for (;;) {
        if (ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) == 0)
            return 0;
        if (errno != EINTR)
            return -errno;
    }
}

int aarm_notif_id_valid(int listener, uint64_t id)
{
    for (;;) {
        if (ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0)
            return 0;
        if (errno != EINTR)
            return -errno;
    }
}

/* With SECCOMP_ADDFD_FLAG_SEND the kernel marks the notification replied *before*
 * waiting for the target to install the fd.  If that wait is interrupted (a signal
 * handled by this thread, a stop of this process, ptrace), the kernel withdraws the
 * unprocessed request and the target's syscall returns 0 with nothing installed; the
 * restarted or retried ioctl then fails with EINPROGRESS.  The supervisor's threads
 * block every signal (cli/run.py), which leaves stops and tracing of the supervisor:
 * callers treat -EINPROGRESS after a SEND as "the answer was lost" and kill the target
 * (fail closed).  Plain ADDFD (no SEND) has no such window: an interrupted request is
 * withdrawn while the notification is still unanswered. */
int aarm_notif_addfd(int listener, uint64_t id, int srcfd, uint32_t newfd,
                     uint32_t newfd_flags, uint32_t flags)
{
    struct seccomp_notif_addfd a;
    memset(&a, 0, sizeof(a));
    a.id = id;
    a.flags = flags;
    a.srcfd = (uint32_t)srcfd;
    a.newfd = newfd;
    a.newfd_flags = newfd_flags;
    for (;;) {
        int r = ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, &a);
        if (r >= 0)
            return r;
        if (errno != EINTR)
            return -errno;
    }
}

int aarm_notif_set_flags(int listener, uint64_t flags)
{
    /* the kernel takes the flags by value, not through a pointer */
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS, (unsigned long)flags) == 0)
        return 0;
    return -errno;
}

int aarm_seccomp_feature(int which)
{
    if (which < 1 || which > 3)
        return -EINVAL;
    long pid = raw_fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        struct sock_filter allow[] = {
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = { .len = 1, .filter = allow };
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
            _exit(100 + (errno & 0x7f));
        unsigned long fl = SECCOMP_FILTER_FLAG_NEW_LISTENER;
        if (which == 1)
            fl |= SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
        long lfd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, fl, &prog);
        if (lfd < 0) {
            if (which == 1 && errno == EINVAL)
                _exit(1);
            _exit(100 + (errno & 0x7f));
        }
        if (which == 1)
            _exit(0);
        if (which == 2) {
            if (ioctl((int)lfd, SECCOMP_IOCTL_NOTIF_SET_FLAGS,
                      (unsigned long)SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP) == 0)
                _exit(0);
            _exit(errno == EINVAL ? 1 : 100 + (errno & 0x7f));
        }
        /* which == 3: a bogus id must fail with ENOENT if ADDFD exists */
        struct seccomp_notif_addfd a;
        memset(&a, 0, sizeof(a));
        a.id = ~0ULL;
        a.srcfd = (uint32_t)lfd;
        if (ioctl((int)lfd, SECCOMP_IOCTL_NOTIF_ADDFD, &a) >= 0 || errno == ENOENT)
            _exit(0);
        _exit(errno == EINVAL || errno == ENOTTY ? 1 : 100 + (errno & 0x7f));
    }
    int st = 0;
    pid_t w;
    do {
        w = waitpid((pid_t)pid, &st, 0);
    } while (w < 0 && errno == EINTR);
    if (w < 0)
        return -errno;
    if (!WIFEXITED(st))
        return -ECHILD;
    int code = WEXITSTATUS(st);
    if (code == 0)
        return 1;
    if (code == 1)
        return 0;
    if (code >= 100)
        return -(code - 100);
    return -EIO;
}

/* ------------------------------------------------------------------ */
/* Memory access.                                                       */

int64_t aarm_read_mem(int pid, uint64_t addr, void *buf, size_t len)
{
    if (len == 0)
        return 0;
    struct iovec local = { .iov_base = buf, .iov_len = len };
    struct iovec remote = { .iov_base = (void *)(uintptr_t)addr, .iov_len = len };
    ssize_t n = process_vm_readv((pid_t)pid, &local, 1, &remote, 1, 0);
    if (n < 0)
        return -errno;
    return (int64_t)n;
}

int64_t aarm_write_mem(int pid, uint64_t addr, const void *buf, size_t len)
{
    if (len == 0)
        return 0;
    struct iovec local = { .iov_base = (void *)buf, .iov_len = len };
    struct iovec remote = { .iov_base = (void *)(uintptr_t)addr, .iov_len = len };
    ssize_t n = process_vm_writev((pid_t)pid, &local, 1, &remote, 1, 0);
    if (n < 0)
        return -errno;
    return (int64_t)n;
}

int64_t aarm_read_cstr(int pid, uint64_t addr, char *buf, size_t maxlen)
{
    static size_t page;
    if (!page) {
        long ps = sysconf(_SC_PAGESIZE);
        page = ps > 0 ? (size_t)ps : 4096;
    }
    if (!buf || maxlen == 0)
        return -ENAMETOOLONG;
    size_t got = 0;
    while (got < maxlen) {
        uint64_t cur = addr + got;
        if (cur < addr)
            return -EFAULT; /* wrapped around */
        size_t chunk = page - (size_t)(cur % page);
        /* Most paths are short: the first read copies at most 256 bytes, not the
         * rest of the page (one syscall either way for them). */
        if (got == 0 && chunk > 256)
            chunk = 256;
        if (chunk > maxlen - got)
            chunk = maxlen - got;
        struct iovec local = { .iov_base = buf + got, .iov_len = chunk };
        struct iovec remote = { .iov_base = (void *)(uintptr_t)cur, .iov_len = chunk };
        ssize_t n = process_vm_readv((pid_t)pid, &local, 1, &remote, 1, 0);
        if (n < 0)
            return -errno;
        if (n == 0)
            return -EFAULT;
        char *nul = memchr(buf + got, '\0', (size_t)n);
        if (nul)
            return (int64_t)(nul - buf);
        got += (size_t)n;
    }
    return -ENAMETOOLONG;
}

/* ------------------------------------------------------------------ */
/* Syscall wrappers.                                                    */

int aarm_pidfd_open(int pid, unsigned int flags)
{
    long r = syscall(SYS_pidfd_open, pid, flags);
    return r < 0 ? -errno : (int)r;
}

int aarm_pidfd_getfd(int pidfd, int targetfd, unsigned int flags)
{
    long r = syscall(SYS_pidfd_getfd, pidfd, targetfd, flags);
    return r < 0 ? -errno : (int)r;
}

int aarm_pidfd_send_signal(int pidfd, int sig)
{
    long r = syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0U);
    return r < 0 ? -errno : 0;
}

int aarm_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode,
                 uint64_t resolve)
{
    struct open_how how;
    memset(&how, 0, sizeof(how));
    how.flags = flags;
    how.mode = mode;
    how.resolve = resolve;
    long r;
    do {
        r = syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
    } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : (int)r;
}

int aarm_renameat2(int olddirfd, const char *oldpath, int newdirfd,
                   const char *newpath, unsigned int flags)
{
    long r = syscall(SYS_renameat2, olddirfd, oldpath, newdirfd, newpath, flags);
    return r < 0 ? -errno : 0;
}

int aarm_linkat(int olddirfd, const char *oldpath, int newdirfd,
                const char *newpath, int flags)
{
    return linkat(olddirfd, oldpath, newdirfd, newpath, flags) < 0 ? -errno : 0;
}

int aarm_utimensat(int dirfd, const char *path, const int64_t *times4, int flags)
{
    struct timespec ts[2];
    struct timespec *tp = NULL;
    if (times4) {
        ts[0].tv_sec = (time_t)times4[0];
        ts[0].tv_nsec = (long)times4[1];
        ts[1].tv_sec = (time_t)times4[2];
        ts[1].tv_nsec = (long)times4[3];
        tp = ts;
    }
    /* raw syscall: glibc rejects path == NULL, the kernel accepts it */
    long r = syscall(SYS_utimensat, dirfd, path, tp, flags);
    return r < 0 ? -errno : 0;
}

int aarm_set_dumpable(int on)
{
    return prctl(PR_SET_DUMPABLE, on ? 1 : 0, 0, 0, 0) < 0 ? -errno : 0;
}

/* ------------------------------------------------------------------ */
/* Thin wrappers for the emulation path (compiled here so that Python  */
/* needs no runtime cdef parsing): each returns the result or -errno.  */

int aarm_unlinkat(int dirfd, const char *name, int flags)
{
    return unlinkat(dirfd, name, flags) < 0 ? -errno : 0;
}

#ifndef STATX_ATTR_MOUNT_ROOT
#define STATX_ATTR_MOUNT_ROOT 0x00002000
#endif

int aarm_is_mount_root(int dirfd, const char *name)
{
    struct statx stx;
    if (statx(dirfd, name, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, STATX_TYPE, &stx) < 0)
        return -errno;
    if (!(stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT))
        return -EOPNOTSUPP;
    return (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT) ? 1 : 0;
}

int aarm_fchownat(int dirfd, const char *name, unsigned int uid, unsigned int gid, int flags)
{
    return fchownat(dirfd, name, (uid_t)uid, (gid_t)gid, flags) < 0 ? -errno : 0;
}

int aarm_connect(int fd, const void *addr, unsigned int len)
{
    return connect(fd, (const struct sockaddr *)addr, (socklen_t)len) < 0 ? -errno : 0;
}

int aarm_bind(int fd, const void *addr, unsigned int len)
{
    return bind(fd, (const struct sockaddr *)addr, (socklen_t)len) < 0 ? -errno : 0;
}

int64_t aarm_sendto(int fd, const void *buf, size_t len, int flags, const void *addr,
                    unsigned int addrlen)
{
    ssize_t r = sendto(fd, buf, len, flags, addrlen ? (const struct sockaddr *)addr : NULL,
                       (socklen_t)addrlen);
    return r < 0 ? -errno : (int64_t)r;
}

int aarm_sockopt_int(int fd, int level, int opt)
{
    int v = 0;
    socklen_t l = sizeof(v);
    return getsockopt(fd, level, opt, &v, &l) < 0 ? -errno : v;
}
